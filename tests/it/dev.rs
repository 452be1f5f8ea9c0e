//! `./dev`, the newcomer's entry point, as a stock Debian machine runs it: with only the system
//! Python, Rust and git on PATH — no `just`, no pip of another Python.

use std::process::Command;

use crate::support::workspace;

/// `./dev` installs `just` itself with cargo (before: with `python3 -m pip`, which Debian's
/// Python refuses, PEP 668 "externally-managed-environment") and lists every recipe with one
/// clean line each (before: the last line of a wrapped comment, "127.0.0.1:8080) receives…", and
/// a `default` recipe).
#[test]
fn dev_bootstraps_without_pip_and_lists_each_recipe_in_one_clean_line() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cargo_dir = which(&cargo).parent().unwrap().to_owned();
    // Only what a stock Debian has, and Rust.
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", cargo_dir.display());
    let out = Command::new(workspace().join("dev"))
        .current_dir(workspace())
        .env("PATH", &path)
        .output()
        .expect("run ./dev");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "./dev failed:\n{stdout}\n{stderr}");
    assert!(!stderr.contains("pip"), "{stderr}");
    let recipes: Vec<&str> = stdout.lines().skip(1).collect();
    assert!(recipes.len() >= 10, "{stdout}");
    let names: Vec<&str> = recipes
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for wanted in ["demo", "test"] {
        assert!(names.contains(&wanted), "no {wanted} recipe: {stdout}");
    }
    assert!(!names.contains(&"default"), "{stdout}");
    for line in &recipes {
        let (_, doc) = line
            .split_once(" # ")
            .unwrap_or_else(|| panic!("a recipe without a description: {line:?}"));
        assert!(
            doc.starts_with(|c: char| c.is_ascii_uppercase()),
            "a description that is not a whole line: {line:?}"
        );
    }
}

fn which(program: &str) -> std::path::PathBuf {
    if program.contains('/') {
        return program.into();
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}

/// `./dev demo` as a newcomer meets it: the run finishes, the demo says where the run is in the
/// viewer and which token signs in (before: neither), its commit links point nowhere false, and
/// the push command it prints makes Gantry run the new commit (before: nothing to try next).
#[test]
fn the_demo_says_how_to_sign_in_and_runs_the_commit_its_printed_command_pushes() {
    use std::io::{BufRead, BufReader};
    crate::support::gantry_bin();
    let data = tempfile::tempdir().unwrap();
    let port = crate::server::free_port();
    let mut demo = Command::new(workspace().join("scripts/demo"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data.path())
        .env("PYTHONUNBUFFERED", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run scripts/demo");
    let stdout = demo.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut next = |until: &dyn Fn(&str) -> bool| -> String {
        loop {
            let line = rx
                .recv_timeout(std::time::Duration::from_secs(180))
                .unwrap_or_else(|_| panic!("the demo stopped saying things:\n{}", seen.join("\n")));
            seen.push(line.clone());
            if until(&line) {
                return line;
            }
        }
    };
    let finished = next(&|l| l.starts_with("run success") || l.starts_with("run failure"));
    assert!(finished.starts_with("run success"), "{finished}");
    let viewer = next(&|l| l.starts_with("The run in the viewer:"));
    let run_url = viewer.rsplit(' ').next().unwrap().to_owned();
    assert!(
        run_url.starts_with(&format!("http://127.0.0.1:{port}/runs/")),
        "{viewer}"
    );
    let token = next(&|l| l.starts_with("Sign in"));
    assert!(token.contains("demo-token"), "{token}");
    let command = next(&|l| l.trim_start().starts_with("cd ") && l.contains("git push"));
    // The run page links to no made-up forge host.
    let page = get_text(&run_url);
    assert!(!page.contains("github.example"), "{page}");
    let pushed = Command::new("bash")
        .args(["-c", command.trim()])
        .output()
        .unwrap();
    assert!(pushed.status.success(), "{command}: {pushed:?}");
    let second = next(&|l| l.starts_with("run:") && l.contains("/runs/"));
    let second_url = second.rsplit(' ').next().unwrap().to_owned();
    assert_ne!(second_url, run_url);
    let id = second_url.rsplit('/').next().unwrap();
    let api = format!("http://127.0.0.1:{port}/api/v1/runs/{id}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let run = loop {
        let run: serde_json::Value = serde_json::from_str(&get_text(&api)).unwrap();
        if run["status"] == "success" || std::time::Instant::now() > deadline {
            break run;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(run["message"], "Say more", "{run:#}");
    // Stopped with SIGTERM, the demo stops what it started: nothing listens on its port
    // afterwards (before: Gantry and git daemon were left running, holding it).
    let _ = Command::new("kill")
        .args(["-TERM", &demo.id().to_string()])
        .status();
    let _ = demo.wait();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "Gantry still listens on {port} after the demo was stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // git daemon serves from the demo's work directory, which names the app it cds into.
    let app = command
        .trim()
        .strip_prefix("cd ")
        .and_then(|c| c.split(" && ").next())
        .expect("the push command starts in the app");
    let work = std::path::Path::new(app).parent().unwrap();
    let leftover = Command::new("pgrep")
        .args(["-af", &work.display().to_string()])
        .output()
        .unwrap();
    assert!(
        leftover.stdout.is_empty(),
        "processes of the demo left running: {}",
        String::from_utf8_lossy(&leftover.stdout)
    );
    assert!(!work.exists(), "the demo's work directory {work:?} is left");
}

/// `GET url`'s body, from a test that is not async.
fn get_text(url: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = crate::server::client().get(url).send().await.unwrap();
        r.text().await.unwrap()
    })
}
