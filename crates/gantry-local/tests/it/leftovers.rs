//! A Gantry process that dies cannot stop its steps: the next backend on the same work root
//! stops what it left running, by the records beside the workspaces, and nothing else.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use gantry_core::JobId;
use gantry_local::{LocalBackend, LocalConfig};
use serde_json::{Value, json};

use crate::support::{
    any_repo, backend, entries, process_gone, read_pid, request, run, run_job, wait_gone,
};

/// Field 22 of `/proc/<pid>/stat`: when the process started.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

fn proc_text(path: &str) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

/// A Gantry process as records name it, on this machine and in this pid namespace.
fn owner(pid: u32, start: u64) -> Value {
    json!({
        "pid": pid,
        "start": start,
        "boot_id": proc_text("/proc/sys/kernel/random/boot_id"),
        "pid_ns": std::fs::read_link("/proc/self/ns/pid").unwrap().to_str().unwrap(),
        "hostname": proc_text("/proc/sys/kernel/hostname"),
    })
}

/// A Gantry process that has died: a process that ran and was reaped.
fn dead_owner() -> Value {
    let mut child = Command::new("true").spawn().unwrap();
    // Until it is waited for, the process (a zombie at worst) still has its stat.
    let start = start_time(child.id());
    child.wait().unwrap();
    owner(child.id(), start)
}

/// This test process: a Gantry that still runs.
fn live_owner() -> Value {
    owner(std::process::id(), start_time(std::process::id()))
}

/// A workspace with a file in it, as a job left it.
fn workspace(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("build.log"), "half done\n").unwrap();
    dir
}

/// A step as the backend starts it: `sh -e -c` in its own process group, in the workspace.
fn step(workspace: &Path, script: &str) -> Child {
    Command::new("/bin/sh")
        .args(["-e", "-c", script])
        .current_dir(workspace)
        .env("GANTRY_WORKSPACE", workspace)
        .process_group(0)
        .spawn()
        .unwrap()
}

/// Writes the record of the attempt using `workspace`, its process groups by leader and start.
fn write_record(workspace: &Path, owner: Value, groups: &[(u32, u64)]) -> PathBuf {
    let groups: Vec<Value> = groups
        .iter()
        .map(|(pgid, start)| json!({"pgid": pgid, "start": start}))
        .collect();
    let record = json!({
        "job_id": JobId::new().to_string(),
        "attempt": 1,
        "keep_workspace": false,
        "owner": owner,
        "groups": groups,
    });
    let path = PathBuf::from(format!("{}.running", workspace.display()));
    std::fs::write(&path, record.to_string()).unwrap();
    path
}

fn backend_on(root: &Path) -> LocalBackend {
    LocalBackend::new(LocalConfig {
        work_root: Some(root.to_path_buf()),
        ..LocalConfig::default()
    })
}

async fn cleaned(backend: &LocalBackend) {
    tokio::time::timeout(Duration::from_secs(15), backend.leftovers_cleaned())
        .await
        .expect("the clean-up ends");
}

#[tokio::test]
async fn a_dead_gantrys_step_processes_and_workspace_are_removed_by_the_next_backend() {
    let root = tempfile::tempdir().unwrap();
    let pids = tempfile::tempdir().unwrap();
    let pid_file = pids.path().join("pid");
    let ws = workspace(root.path(), "gantry-job-left");
    // One that ignores SIGTERM, so the SIGKILL after the grace is needed too.
    let mut leader = step(
        &ws,
        &format!(
            "sleep 100 & echo $! > {}; trap '' TERM; while :; do sleep 1; done",
            pid_file.display()
        ),
    );
    let grandchild = read_pid(&pid_file).await;
    write_record(&ws, dead_owner(), &[(leader.id(), start_time(leader.id()))]);
    // And the scratch clone of a gitops step that was running, beside the workspace.
    std::fs::create_dir_all(root.path().join("gantry-job-left.gitops-x1/config/.git")).unwrap();

    let backend = backend_on(root.path());
    cleaned(&backend).await;

    assert!(
        wait_gone(leader.id() as i32, Duration::from_secs(1)).await,
        "the step's shell survived"
    );
    assert!(
        wait_gone(grandchild, Duration::from_secs(1)).await,
        "its background process {grandchild} survived"
    );
    leader.wait().unwrap();
    assert!(
        entries(root.path()).is_empty(),
        "left: {:?}",
        entries(root.path())
    );
}

#[tokio::test]
async fn a_recorded_pid_that_now_names_another_process_is_not_killed() {
    let root = tempfile::tempdir().unwrap();
    let ws = workspace(root.path(), "gantry-job-recycled");
    let mut other = step(&ws, "sleep 100");
    // The recorded group's leader started at another time: this is someone else.
    let wrong_start = start_time(other.id()) + 1;
    write_record(&ws, dead_owner(), &[(other.id(), wrong_start)]);

    let backend = backend_on(root.path());
    cleaned(&backend).await;

    assert!(
        !process_gone(other.id() as i32),
        "a process that was not recorded was killed"
    );
    // The attempt's own processes are gone, and with them its claim to the workspace.
    assert!(entries(root.path()).is_empty());
    other.kill().unwrap();
    other.wait().unwrap();
}

#[tokio::test]
async fn the_records_of_a_gantry_that_still_runs_are_left_alone() {
    let root = tempfile::tempdir().unwrap();
    let ws = workspace(root.path(), "gantry-job-alive");
    let mut busy = step(&ws, "sleep 100");
    let record = write_record(&ws, live_owner(), &[(busy.id(), start_time(busy.id()))]);

    let backend = backend_on(root.path());
    cleaned(&backend).await;

    assert!(!process_gone(busy.id() as i32));
    assert!(ws.join("build.log").exists());
    assert!(record.exists());
    busy.kill().unwrap();
    busy.wait().unwrap();
}

#[tokio::test]
async fn a_running_step_is_recorded_beside_its_workspace_until_it_ends() {
    let (repo, sha) = any_repo();
    let (backend, root) = backend();
    let pids = tempfile::tempdir().unwrap();
    let pid_file = pids.path().join("pid");
    let script = format!("echo $$ > {}; sleep 2", pid_file.display());
    let job = request(&repo.url(), &sha, vec![run("slow", &script)]);
    let attempt = tokio::spawn({
        let backend = backend.clone();
        async move { run_job(&backend, job).await }
    });
    let shell = read_pid(&pid_file).await;

    let records: Vec<PathBuf> = entries(root.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "running"))
        .collect();
    assert_eq!(records.len(), 1, "{:?}", entries(root.path()));
    let workspace = records[0].with_extension("");
    assert!(
        workspace.is_dir(),
        "{} is not the workspace",
        workspace.display()
    );
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(&records[0]).unwrap()).unwrap();
    assert_eq!(record["owner"], live_owner());
    assert_eq!(
        record["groups"],
        json!([{"pgid": shell, "start": start_time(shell as u32)}])
    );

    attempt.await.unwrap();
    assert!(
        entries(root.path()).is_empty(),
        "{:?}",
        entries(root.path())
    );
}
