//! docs/getting-started.md as a platform engineer follows it: every `helm` command in it renders
//! with the chart (whose values schema refuses unknown keys), and the check of step 4 — a signed
//! push webhook sent with openssl and curl, then the delivery and the run it became — runs as
//! written against `gantry serve`, with only its variables set to this test's.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use crate::server::{FakeGithub, Gantry, GitDaemon, WEBHOOK_SECRET, eventually, get_json};
use crate::support::{Repo, workspace};

fn guide() -> String {
    std::fs::read_to_string(workspace().join("docs/getting-started.md"))
        .expect("docs/getting-started.md")
}

/// The fenced `sh` blocks of the guide, in order.
fn shell_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// The steps in the order the issue asks for: what you need, the images, the install with TLS,
/// a check, the forge, upgrades.
#[test]
fn the_guide_goes_in_the_order_a_platform_engineer_works() {
    let text = guide();
    let steps = [
        "### 1. Prerequisites",
        "### 2. The images",
        "### 3. Install with TLS",
        "### 4. Check that it works",
        "### 5. Connect a forge",
        "### 6. Upgrade",
    ];
    let mut at = 0;
    for step in steps {
        let found = text[at..]
            .find(step)
            .unwrap_or_else(|| panic!("`{step}` missing, or out of order"));
        at += found + step.len();
    }
    let install = &text[text.find("### 3. Install with TLS").unwrap()..];
    let install = &install[..install.find("### 4.").unwrap()];
    assert!(
        install.contains("ingress.tls[0].secretName"),
        "the install serves TLS"
    );
}

/// Each `helm install`/`helm upgrade` of the guide, rendered with `helm template` (the chart's
/// schema refuses an unknown value, so a misspelt `--set` fails here), the variables it uses
/// set as the guide sets them.
#[test]
fn every_helm_command_in_the_guide_renders_with_the_chart() {
    let text = guide();
    let blocks = shell_blocks(&text);
    let images = blocks
        .iter()
        .find(|b| b.starts_with("IMAGES=("))
        .expect("the guide sets IMAGES for the install");
    let mut commands = Vec::new();
    for block in &blocks {
        let joined = block.replace("\\\n", " ");
        commands.extend(
            joined
                .lines()
                .filter(|l| l.starts_with("helm install") || l.starts_with("helm upgrade"))
                .map(str::to_owned),
        );
    }
    assert!(commands.len() >= 6, "{commands:#?}");
    let helm = workspace().join("tests/cluster/helm");
    let chart = workspace().join("charts/gantry");
    let digest = format!("sha256:{}", "0".repeat(64));
    for command in &commands {
        // `helm install|upgrade gantry charts/gantry …` → `helm template gantry CHART …`.
        let script = format!(
            "set -euo pipefail\nREGISTRY=registry.example.com/gantry-ci\n{images}\n\
             helm() {{ shift; local name=$1 args=(); shift 2; for a in \"$@\"; do \
             [[ $a == --reuse-values ]] || args+=(\"$a\"); done; \
             \"$HELM\" template \"$name\" \"$CHART\" \"${{args[@]}}\" > /dev/null; }}\n{command}\n"
        )
        .replace("sha256:…", &digest);
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env("HELM", &helm)
            .env("CHART", &chart)
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "the guide's `{command}` does not render with the chart:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Step 4's check, run as written: only `GANTRY`, `SECRET`, `REPO` and `CLONE` are this test's
/// (a local `gantry serve` reading the pipeline through a stand-in of GitHub's contents API,
/// and a git daemon for `git ls-remote` and the clone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_check_sends_a_signed_webhook_and_finds_the_run_it_became() {
    let daemon = GitDaemon::start();
    let repo = Repo::new();
    repo.write(
        ".gantry.yaml",
        "name: ci\njobs:\n  hello:\n    steps:\n      - run: echo checked\n",
    );
    let sha = repo.commit("pipeline");
    let clone = daemon.publish(&repo, "app.git");
    let github = FakeGithub::start_with_repos(HashMap::from([(
        "you/app".to_owned(),
        repo.path().to_owned(),
    )]))
    .await;
    let data = tempfile::tempdir().unwrap();
    let gantry = Gantry::start(
        data.path(),
        &github.url,
        &[("GANTRY_GITHUB_READ_FILES", "api")],
    );
    let text = guide();
    let check = shell_blocks(&text)
        .into_iter()
        .find(|b| b.contains("X-Hub-Signature-256"))
        .expect("step 4 has the signed webhook");
    let mut set = HashMap::from([
        ("GANTRY", gantry.url.clone()),
        ("SECRET", WEBHOOK_SECRET.to_owned()),
        ("REPO", "you/app".to_owned()),
        ("CLONE", clone.clone()),
    ]);
    let script: String = check
        .lines()
        .map(|line| {
            let name = line.split('=').next().unwrap_or("");
            match set.remove(name) {
                Some(value) => format!("{name}='{value}'\n"),
                None => format!("{line}\n"),
            }
        })
        .collect();
    assert!(set.is_empty(), "the check no longer sets {set:?}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .output()
            .expect("bash")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the check failed:\n{all}");
    assert!(stdout.contains(r#""status":"accepted""#), "{all}");
    assert!(stdout.contains(r#""state":"planned""#), "{all}");
    let run = stdout
        .lines()
        .find_map(|l| l.strip_prefix("the run: "))
        .and_then(|url| url.strip_prefix(&format!("{}/runs/", gantry.url)))
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| panic!("the check names no run: {all}"))
        .to_owned();
    let finished = eventually(Duration::from_secs(60), "the checked run to end", || {
        let url = format!("{}/api/v1/runs/{run}", gantry.url);
        async move {
            let run = get_json(&url).await;
            (run["status"] != "queued" && run["status"] != "running").then_some(run)
        }
    })
    .await;
    assert_eq!(finished["status"], "success", "{finished:#}");
    assert_eq!(finished["commit"], sha.as_str(), "{finished:#}");
}
