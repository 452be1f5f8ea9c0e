//! Child processes: spawn one in its own process group, read its output line by line, stop the
//! whole group on a deadline or a cancel, and never wait forever for pipes.

use std::fmt;
use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gantry_core::{EventSender, Stream};
use gantry_logs::{LineSplitter, Masker};
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use crate::leftovers::{AttemptRecord, Tracked};

/// Longest line passed on whole; longer ones are split so a newline-free stream cannot grow
/// memory without bound.
pub(crate) const MAX_LINE: usize = 64 * 1024;
/// Between SIGTERM and SIGKILL.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(2);
/// After the process group is gone, how long to wait for output that is still arriving. A
/// process that escaped the group (`setsid`) may hold the pipes open for ever.
const DRAIN_IDLE: Duration = Duration::from_millis(500);
const DRAIN_MAX: Duration = Duration::from_secs(10);

/// Which deadline ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timeout {
    Step(Duration),
    Job(Duration),
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Timeout::Step(d) => write!(f, "timed out after {}", human(*d)),
            Timeout::Job(d) => write!(f, "job timed out after {}", human(*d)),
        }
    }
}

/// `5s`, `2m`, `1h`, `1500ms`: how a pipeline author would have written it.
pub(crate) fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    if s != 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s != 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// What stops a process early: a deadline, a cancel of the attempt, or nobody listening to the
/// attempt's events any more (then the work is pointless); and, should this Gantry process die
/// first, the record a later one stops the attempt's processes by.
#[derive(Clone, Debug)]
pub(crate) struct Stop {
    pub deadline: Option<(Instant, Timeout)>,
    pub cancel: watch::Receiver<bool>,
    pub events: EventSender,
    pub record: Option<Arc<AttemptRecord>>,
    /// The job's secret values: a run-on line is never cut inside one (the log masker only
    /// sees one piece at a time).
    pub secrets: Arc<Masker>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    Timeout(Timeout),
    Cancelled,
}

impl Stop {
    pub(crate) fn is_cancelled(&self) -> bool {
        *self.cancel.borrow() || self.events.is_closed()
    }

    /// This stop with an earlier deadline, if `step` ends before the current one.
    pub(crate) fn with_step_timeout(&self, step: Option<Duration>) -> Stop {
        let mut stop = self.clone();
        if let Some(limit) = step {
            let at = Instant::now() + limit;
            if stop.deadline.is_none_or(|(job_at, _)| at < job_at) {
                stop.deadline = Some((at, Timeout::Step(limit)));
            }
        }
        stop
    }

    /// The deadline, if it has already passed.
    pub(crate) fn expired(&self) -> Option<Timeout> {
        self.deadline
            .filter(|(at, _)| Instant::now() >= *at)
            .map(|(_, t)| t)
    }

    async fn until_stopped(&mut self) -> Why {
        let deadline = async {
            match self.deadline {
                Some((at, what)) => {
                    tokio::time::sleep_until(at).await;
                    what
                }
                None => std::future::pending().await,
            }
        };
        let cancel = async {
            // The sender lives as long as the attempt is registered; if it went, nobody can
            // cancel any more.
            if self.cancel.wait_for(|c| *c).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            what = deadline => Why::Timeout(what),
            () = cancel => Why::Cancelled,
            () = self.events.closed() => Why::Cancelled,
        }
    }
}

/// How a process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    Exited(i32),
    /// Killed by a signal it did not get from us (the name, `SIGSEGV`).
    Signalled(String),
    TimedOut(Timeout),
    Cancelled,
    /// It could not be started, or we lost track of it.
    Failed(String),
}

impl Ending {
    pub(crate) fn succeeded(&self) -> bool {
        *self == Ending::Exited(0)
    }
}

/// Where a process's output lines go.
pub(crate) trait Output: Send {
    fn line(&mut self, stream: Stream, text: String) -> impl Future<Output = ()> + Send;
}

/// Keeps the last lines of output, for an error message.
#[derive(Debug, Default)]
pub(crate) struct Capture {
    pub lines: Vec<(Stream, String)>,
}

impl Capture {
    const KEEP: usize = 200;

    /// The captured lines of one stream, joined.
    pub(crate) fn text(&self, stream: Stream) -> String {
        let lines: Vec<&str> = self
            .lines
            .iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, t)| t.as_str())
            .collect();
        lines.join("\n")
    }
}

impl Output for Capture {
    async fn line(&mut self, stream: Stream, text: String) {
        if self.lines.len() == Self::KEEP {
            self.lines.remove(0);
        }
        self.lines.push((stream, text));
    }
}

/// Runs `command` to its end in a new process group, passing its output to `out` line by line
/// in arrival order. stdin is `/dev/null`.
pub(crate) async fn run<O: Output>(mut command: Command, out: &mut O, stop: &Stop) -> Ending {
    command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let program = command
                .as_std()
                .get_program()
                .to_string_lossy()
                .into_owned();
            return Ending::Failed(format!("cannot start {program}: {e}"));
        }
    };
    let Some(pid) = child.id() else {
        return Ending::Failed("the process vanished as it started".into());
    };
    // Recorded before anything can wait for (and so reap) the leader.
    let tracked = stop.record.as_ref().and_then(|record| record.track(pid));
    let group = ProcessGroup::new(pid, tracked);

    let (tx, mut lines) = mpsc::channel(256);
    let readers: Vec<JoinHandle<()>> = [
        child.stdout.take().map(|r| {
            tokio::spawn(read_lines(
                r,
                Stream::Stdout,
                stop.secrets.clone(),
                tx.clone(),
            ))
        }),
        child.stderr.take().map(|r| {
            tokio::spawn(read_lines(
                r,
                Stream::Stderr,
                stop.secrets.clone(),
                tx.clone(),
            ))
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    drop(tx);

    // Supervised in its own task, so a slow consumer of output never delays a kill.
    let mut supervisor = tokio::spawn(supervise(child, group, stop.clone()));
    // If this future is dropped half-way, the supervisor goes too, and with it the child and its
    // process group (both kill on drop).
    let _tasks = AbortOnDrop(
        readers
            .iter()
            .map(JoinHandle::abort_handle)
            .chain([supervisor.abort_handle()])
            .collect(),
    );
    let mut ending = None;
    let mut open = true;
    while ending.is_none() {
        tokio::select! {
            line = lines.recv(), if open => match line {
                Some((stream, text)) => out.line(stream, text).await,
                None => open = false,
            },
            done = &mut supervisor => ending = Some(done.unwrap_or_else(|e| {
                Ending::Failed(format!("lost track of the process: {e}"))
            })),
        }
    }
    let drain_end = Instant::now() + DRAIN_MAX;
    while open {
        let idle = DRAIN_IDLE.min(drain_end.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(idle, lines.recv()).await {
            Ok(Some((stream, text))) => out.line(stream, text).await,
            Ok(None) | Err(_) => open = false,
        }
    }
    ending.unwrap_or_else(|| Ending::Failed("no ending".into()))
}

struct AbortOnDrop(Vec<AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

async fn supervise(mut child: Child, mut group: ProcessGroup, mut stop: Stop) -> Ending {
    let why = tokio::select! {
        status = child.wait() => {
            // Like a container whose main process exits: whatever it left running goes too.
            group.signal(Signal::SIGKILL);
            group.disarm();
            return match status {
                Ok(status) => ending_of(status),
                Err(e) => Ending::Failed(format!("waiting for the process: {e}")),
            };
        }
        why = stop.until_stopped() => why,
    };
    group.signal(Signal::SIGTERM);
    let grace_end = Instant::now() + KILL_GRACE;
    let mut leader_gone = false;
    while Instant::now() < grace_end {
        if !leader_gone {
            leader_gone = matches!(child.try_wait(), Ok(Some(_)));
        }
        if leader_gone && group.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    group.signal(Signal::SIGKILL);
    let _ = child.wait().await;
    group.disarm();
    match why {
        Why::Timeout(t) => Ending::TimedOut(t),
        Why::Cancelled => Ending::Cancelled,
    }
}

fn ending_of(status: ExitStatus) -> Ending {
    match (status.code(), status.signal()) {
        (Some(code), _) => Ending::Exited(code),
        (None, Some(signal)) => Ending::Signalled(signal_name(signal)),
        (None, None) => Ending::Failed(format!("unknown exit status {status}")),
    }
}

fn signal_name(signal: i32) -> String {
    Signal::try_from(signal)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| format!("signal {signal}"))
}

/// A process group we started. Dropped while armed (a task aborted mid-step), it kills the
/// group, so nothing outlives the attempt; then it leaves the attempt's record.
#[derive(Debug)]
struct ProcessGroup {
    pgid: Pid,
    armed: bool,
    _tracked: Option<Tracked>,
}

impl ProcessGroup {
    fn new(leader: u32, tracked: Option<Tracked>) -> Self {
        Self {
            pgid: Pid::from_raw(leader as i32),
            armed: true,
            _tracked: tracked,
        }
    }

    fn signal(&self, signal: Signal) {
        match killpg(self.pgid, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => {
                tracing::warn!(pgid = %self.pgid, %signal, error = %e, "cannot signal process group")
            }
        }
    }

    fn is_empty(&self) -> bool {
        killpg(self.pgid, None) == Err(Errno::ESRCH)
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if self.armed {
            self.signal(Signal::SIGKILL);
        }
    }
}

async fn read_lines<R: AsyncRead + Unpin>(
    mut reader: R,
    stream: Stream,
    secrets: Arc<Masker>,
    tx: mpsc::Sender<(Stream, String)>,
) {
    let mut splitter = LineSplitter::new(MAX_LINE);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut lines = Vec::new();
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        splitter.push(&chunk[..n], &secrets, &mut |line| lines.push(line));
        for line in lines.drain(..) {
            if tx.send((stream, line)).await.is_err() {
                return;
            }
        }
    }
    splitter.finish(&mut |line| lines.push(line));
    for line in lines {
        let _ = tx.send((stream, line)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_written() {
        assert_eq!(human(Duration::from_secs(5)), "5s");
        assert_eq!(human(Duration::from_secs(120)), "2m");
        assert_eq!(human(Duration::from_secs(3600)), "1h");
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
        assert_eq!(
            Timeout::Step(Duration::from_secs(5)).to_string(),
            "timed out after 5s"
        );
    }
}
