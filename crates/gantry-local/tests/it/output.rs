//! Output that is not neat text: bad bytes, endless lines, a process that keeps the pipe open.

use std::time::{Duration, Instant};

use gantry_core::{State, Stream};

use crate::support::{any_repo, backend, read_pid, request, run, run_job, wait_gone};

#[tokio::test]
async fn invalid_utf8_is_replaced_and_a_1mib_line_is_split_not_lost() {
    let (repo, sha) = any_repo();
    let (backend, _root) = backend();
    let script = r"printf 'ok \377\376 end\n'; head -c 1048576 /dev/zero | tr '\0' x";
    let events = run_job(
        &backend,
        request(&repo.url(), &sha, vec![run("bytes", script)]),
    )
    .await;

    assert_eq!(events.finished(), (State::Success, None));
    let out = events.texts(0, Stream::Stdout);
    assert_eq!(out[0], "ok \u{fffd}\u{fffd} end");
    let long = &out[1..];
    assert_eq!(long.len(), 16, "1 MiB in 64 KiB pieces");
    assert!(
        long.iter()
            .all(|l| l.len() == 64 * 1024 && l.bytes().all(|b| b == b'x'))
    );
}

#[tokio::test]
async fn a_detached_process_holding_the_pipes_does_not_hold_up_the_step() {
    let (repo, sha) = any_repo();
    let (backend, _root) = backend();
    let pids = tempfile::tempdir().unwrap();
    let pid_file = pids.path().join("pid");
    let script = format!(
        "setsid sleep 30 & echo $! > {}; echo done",
        pid_file.display()
    );
    let begun = Instant::now();
    let events = run_job(
        &backend,
        request(&repo.url(), &sha, vec![run("detach", &script)]),
    )
    .await;
    let took = begun.elapsed();
    let pid = read_pid(&pid_file).await;
    // It escaped the process group on purpose; tidy up after it.
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    assert!(wait_gone(pid, Duration::from_secs(2)).await);

    assert_eq!(events.finished(), (State::Success, None));
    assert_eq!(events.texts(0, Stream::Stdout), ["done"]);
    assert!(took < Duration::from_secs(5), "took {took:?}");
}
