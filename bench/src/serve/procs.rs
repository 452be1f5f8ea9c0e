//! The processes a load benchmark starts, all on loopback and all ended when dropped: `gantry
//! serve` (the release binary), the hello-world reference, and `git daemon`.

use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub const WEBHOOK_SECRET: &str = "bench-webhook-secret";

/// A free loopback port (a small race between finding and using it; fine here).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// An HTTP server on loopback that says where it listens on its first lines of output.
#[derive(Debug)]
pub struct Server {
    pub url: String,
    child: Child,
}

impl Server {
    /// `gantry serve` with SQLite and logs in `data_dir`, the local backend, pipelines read
    /// through git, no forge token (so no statuses), and `extra_env` on top.
    pub fn gantry(bin: &Path, data_dir: &Path, extra_env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("GANTRY_") {
                cmd.env_remove(key);
            }
        }
        let log = std::fs::File::create(data_dir.join("gantry.log"))?;
        cmd.arg("serve")
            .env("GANTRY_LISTEN", "127.0.0.1:0")
            .env("GANTRY_DATA_DIR", data_dir)
            .env("GANTRY_GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("GANTRY_GITHUB_READ_FILES", "git")
            .envs(extra_env.iter().copied())
            .stderr(log);
        Self::start(cmd, "Gantry is listening on ")
    }

    /// The hello-world reference (`bench/src/hello_world.rs`).
    pub fn hello(bin: &Path) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.arg("127.0.0.1:0").stderr(Stdio::null());
        Self::start(cmd, "listening on ")
    }

    fn start(mut cmd: Command, prefix: &'static str) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix(prefix) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let mut server = Server {
            url: String::new(),
            child,
        };
        server.url = rx
            .recv_timeout(Duration::from_secs(60))
            .with_context(|| format!("{cmd:?} did not say where it listens"))?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `VmRSS` and `VmHWM` (peak) of the server process, in KiB.
    pub fn memory_kib(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name} in /proc/{}/status", self.pid()))?;
            line.split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("cannot read {line:?}"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Job processes of the local backend first (they would outlive a SIGKILLed server).
        for pid in descendants(self.pid()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every process whose chain of parents leads to `root`, deepest first.
fn descendants(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid …": comm may hold spaces and parentheses.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in &parents {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found.reverse();
    found
}

/// `git daemon` serving bare repositories from a temporary directory over git://.
/// The `git-daemon` program itself: `git daemon` runs it as a child and a kill of `git` would
/// leave the daemon running (holding its port and every inherited file).
fn git_daemon_program() -> std::path::PathBuf {
    let out = Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("cannot run `git --exec-path` (Debian package git)");
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("git-daemon")
}

#[derive(Debug)]
pub struct GitDaemon {
    root: PathBuf,
    pub port: u16,
    child: Child,
}

impl GitDaemon {
    pub fn start(root: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)?;
        let port = free_port()?;
        let child = Command::new(git_daemon_program())
            .args([
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", root.display()),
                &root.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start `git daemon` (Debian package git)")?;
        let daemon = GitDaemon {
            root: root.to_owned(),
            port,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("git daemon did not start listening on {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(daemon)
    }

    /// A bare repository `name` whose `main` is `commits` commits long, each adding one file,
    /// all with `pipeline` as `.gantry.yaml`. Returns the clone URL and the commit ids, oldest
    /// first.
    pub fn repository(
        &self,
        name: &str,
        pipeline: &str,
        commits: usize,
    ) -> anyhow::Result<(String, Vec<String>)> {
        let bare = self.root.join(name);
        git(&self.root, &["init", "-q", "--bare", "-b", "main", name])?;
        // Gantry fetches commits by id, not only branch tips.
        git(&bare, &["config", "uploadpack.allowAnySHA1InWant", "true"])?;
        let mut stream = Vec::new();
        for i in 0..commits {
            let message = format!("change {i}\n");
            let file = format!("{i}\n");
            write!(
                stream,
                "commit refs/heads/main\ncommitter Bench <bench@localhost> {} +0000\n\
                 data {}\n{message}",
                1_700_000_000 + i,
                message.len()
            )?;
            if i == 0 {
                write!(
                    stream,
                    "M 100644 inline .gantry.yaml\ndata {}\n{pipeline}\n",
                    pipeline.len()
                )?;
            }
            write!(
                stream,
                "M 100644 inline changes/{i}.txt\ndata {}\n{file}\n",
                file.len()
            )?;
        }
        let mut import = Command::new("git")
            .args(["fast-import", "--quiet"])
            .current_dir(&bare)
            .stdin(Stdio::piped())
            .spawn()?;
        import.stdin.take().expect("piped").write_all(&stream)?;
        if !import.wait()?.success() {
            bail!("git fast-import failed in {}", bare.display());
        }
        let shas = git(&bare, &["rev-list", "--reverse", "main"])?;
        let shas: Vec<String> = shas.lines().map(str::to_owned).collect();
        if shas.len() != commits {
            bail!("expected {commits} commits in {name}, found {}", shas.len());
        }
        Ok((format!("git://127.0.0.1:{}/{name}", self.port), shas))
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git").args(args).current_dir(dir).output()?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
