//! What a Gantry process that died left behind: each attempt keeps a record of its running
//! process groups beside its workspace, so the next backend on the same work root can stop
//! those processes and remove the workspace.
//!
//! The workspace `<work root>/gantry-job-XXXX` has the record `<work root>/gantry-job-XXXX.running`
//! for as long as its attempt runs, rewritten whole (by rename) whenever a process group starts
//! or ends:
//!
//! ```json
//! {"job_id": "…", "attempt": 1, "keep_workspace": false,
//!  "owner": {"pid": 4242, "start": 98765, "boot_id": "…", "pid_ns": "pid:[4026531836]", "hostname": "ci1"},
//!  "groups": [{"pgid": 5151, "start": 99000}]}
//! ```
//!
//! `start` is the process's start time (`/proc/<pid>/stat` field 22), so a recycled pid never
//! passes for the process that was recorded. A record is only acted on when its owner is gone:
//! written in this boot and pid namespace by a process that no longer runs, or on this machine
//! before it restarted (then its processes are gone too). Records of a live Gantry, of another
//! machine or namespace, or of another user are left alone.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use gantry_core::JobId;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::process::KILL_GRACE;
use crate::procfs::{self, Stat};

const SUFFIX: &str = ".running";
const WORKSPACE_PREFIX: &str = "gantry-job-";
/// After SIGKILL, how long processes get to disappear before their record is kept for next time.
const KILL_WAIT: Duration = Duration::from_secs(1);

/// A Gantry process, as its records name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    pub pid: i32,
    pub start: u64,
    pub boot_id: String,
    pub pid_ns: String,
    pub hostname: String,
}

impl Owner {
    /// This process, if `/proc` can say who it is (without it nothing is recorded or cleaned).
    pub(crate) fn current() -> Option<Self> {
        let pid = std::process::id() as i32;
        Some(Self {
            pid,
            start: procfs::stat(pid)?.start,
            boot_id: procfs::boot_id()?,
            pid_ns: procfs::pid_namespace()?,
            hostname: procfs::hostname().unwrap_or_default(),
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "pid": self.pid,
            "start": self.start,
            "boot_id": self.boot_id,
            "pid_ns": self.pid_ns,
            "hostname": self.hostname,
        })
    }

    fn from_json(v: &Value) -> Option<Self> {
        Some(Self {
            pid: i32::try_from(v["pid"].as_i64()?).ok()?,
            start: v["start"].as_u64()?,
            boot_id: v["boot_id"].as_str()?.to_owned(),
            pid_ns: v["pid_ns"].as_str()?.to_owned(),
            hostname: v["hostname"].as_str()?.to_owned(),
        })
    }

    /// Still running: the pid is there, started when recorded, and not a zombie.
    fn is_alive(&self) -> bool {
        procfs::stat(self.pid).is_some_and(|s| s.start == self.start && !s.is_zombie())
    }
}

/// A process group, by its leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Group {
    pub pgid: i32,
    pub start: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    job_id: String,
    attempt: u32,
    keep_workspace: bool,
    owner: Owner,
    groups: Vec<Group>,
}

impl Record {
    fn to_json(&self) -> String {
        let groups: Vec<Value> = self
            .groups
            .iter()
            .map(|g| json!({"pgid": g.pgid, "start": g.start}))
            .collect();
        let value = json!({
            "job_id": self.job_id,
            "attempt": self.attempt,
            "keep_workspace": self.keep_workspace,
            "owner": self.owner.to_json(),
            "groups": groups,
        });
        format!("{value}\n")
    }

    fn parse(text: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(text).ok()?;
        let groups = v["groups"]
            .as_array()?
            .iter()
            .map(|g| {
                Some(Group {
                    pgid: i32::try_from(g["pgid"].as_i64()?).ok()?,
                    start: g["start"].as_u64()?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            job_id: v["job_id"].as_str()?.to_owned(),
            attempt: u32::try_from(v["attempt"].as_u64()?).ok()?,
            keep_workspace: v["keep_workspace"].as_bool()?,
            owner: Owner::from_json(&v["owner"])?,
            groups,
        })
    }
}

/// The record of one running attempt. Dropped, it is removed: the attempt is over.
#[derive(Debug)]
pub(crate) struct AttemptRecord {
    path: PathBuf,
    record: Mutex<Record>,
}

impl AttemptRecord {
    /// Writes the record of the attempt whose workspace is `workspace`.
    pub(crate) fn create(
        owner: &Owner,
        workspace: &Path,
        job_id: JobId,
        attempt: u32,
        keep_workspace: bool,
    ) -> std::io::Result<Self> {
        let mut path = workspace.as_os_str().to_owned();
        path.push(SUFFIX);
        let record = Record {
            job_id: job_id.to_string(),
            attempt,
            keep_workspace,
            owner: owner.clone(),
            groups: Vec::new(),
        };
        write_whole(Path::new(&path), &record.to_json())?;
        Ok(Self {
            path: path.into(),
            record: Mutex::new(record),
        })
    }

    /// Adds the process group led by `leader` (just started, not yet waited for) to the record,
    /// until the returned guard is dropped.
    pub(crate) fn track(self: &Arc<Self>, leader: u32) -> Option<Tracked> {
        let pgid = leader as i32;
        let Some(stat) = procfs::stat(pgid) else {
            tracing::warn!(
                pgid,
                "cannot read the start time of a new process group; it is not recorded"
            );
            return None;
        };
        self.update(|groups| {
            groups.push(Group {
                pgid,
                start: stat.start,
            })
        });
        Some(Tracked {
            record: Arc::clone(self),
            pgid,
        })
    }

    fn update(&self, change: impl FnOnce(&mut Vec<Group>)) {
        let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut record.groups);
        if let Err(e) = write_whole(&self.path, &record.to_json()) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot update the record of running processes");
        }
    }
}

impl Drop for AttemptRecord {
    fn drop(&mut self) {
        remove_record(&self.path);
    }
}

/// A process group in its attempt's record; dropped once the group is stopped.
#[derive(Debug)]
pub(crate) struct Tracked {
    record: Arc<AttemptRecord>,
    pgid: i32,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let pgid = self.pgid;
        self.record
            .update(|groups| groups.retain(|g| g.pgid != pgid));
    }
}

/// Replaces `path` by `text` all at once: a crash leaves the old record or the new one.
fn write_whole(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // `create_new` never follows a link someone put in the way.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    drop(file);
    std::fs::rename(&tmp, path)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    tmp.into()
}

fn remove_record(path: &Path) {
    for path in [tmp_path(path), path.to_owned()] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the record of running processes")
            }
        }
    }
}

/// What to do with a record found in the work root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Its owner may still run it, or its processes cannot be checked from here.
    Leave,
    /// Its owner is gone: stop its process groups, then remove the workspace and the record.
    Clean,
    /// Written on this machine before it restarted: nothing of it runs any more.
    CleanAfterRestart,
}

fn verdict(owner: &Owner, me: &Owner, owner_alive: impl FnOnce() -> bool) -> Verdict {
    if owner.boot_id != me.boot_id {
        return if !me.hostname.is_empty() && owner.hostname == me.hostname {
            Verdict::CleanAfterRestart
        } else {
            Verdict::Leave
        };
    }
    if owner.pid_ns != me.pid_ns || owner == me || owner_alive() {
        return Verdict::Leave;
    }
    Verdict::Clean
}

/// A record whose owner is gone.
#[derive(Debug)]
struct Leftover {
    path: PathBuf,
    workspace: PathBuf,
    record: Record,
    restarted: bool,
}

impl Leftover {
    /// The workspace path as the steps saw it in `GANTRY_WORKSPACE`.
    fn workspace_env(&self) -> String {
        format!("GANTRY_WORKSPACE={}", self.workspace.to_string_lossy())
    }
}

/// Stops what Gantry processes that died left running in `root` (then calls `stopped`), and
/// removes their records and workspaces. Blocking: it waits for the processes to go.
pub(crate) fn clean_up(root: &Path, me: &Owner, stopped: impl FnOnce()) {
    let leftovers = find(root, me);
    if leftovers.is_empty() {
        stopped();
        return;
    }
    let targets = |leftovers: &[Leftover]| -> Vec<(usize, Group, Target)> {
        let all = procfs::all();
        leftovers
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.restarted)
            .flat_map(|(i, l)| {
                let env = l.workspace_env();
                let all = &all;
                l.record
                    .groups
                    .iter()
                    .map(move |g| (i, *g, target(*g, &env, all)))
            })
            .filter(|(_, _, t)| !t.is_empty())
            .collect()
    };

    let running = targets(&leftovers);
    for (i, group, target) in &running {
        let l = &leftovers[*i];
        tracing::warn!(
            job = %l.record.job_id,
            attempt = l.record.attempt,
            pgid = group.pgid,
            "stopping processes left running by a Gantry process that died"
        );
        target.signal(Signal::SIGTERM);
    }
    let mut still = running;
    let grace_end = Instant::now() + KILL_GRACE;
    while !still.is_empty() && Instant::now() < grace_end {
        std::thread::sleep(Duration::from_millis(50));
        still = targets(&leftovers);
    }
    for (_, _, target) in &still {
        target.signal(Signal::SIGKILL);
    }
    let kill_end = Instant::now() + KILL_WAIT;
    while !still.is_empty() && Instant::now() < kill_end {
        std::thread::sleep(Duration::from_millis(20));
        still = targets(&leftovers);
    }
    stopped();

    for (i, l) in leftovers.iter().enumerate() {
        if let Some((_, group, _)) = still.iter().find(|(j, _, _)| *j == i) {
            tracing::warn!(
                job = %l.record.job_id,
                attempt = l.record.attempt,
                pgid = group.pgid,
                workspace = %l.workspace.display(),
                "processes left by a Gantry process that died survived SIGKILL; their workspace is kept until the next start"
            );
            continue;
        }
        remove_workspace(l);
        remove_record(&l.path);
    }
}

/// The records in `root` whose owners are gone.
fn find(root: &Path, me: &Owner) -> Vec<Leftover> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let uid = procfs::euid();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(workspace_name) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .filter(|n| n.starts_with(WORKSPACE_PREFIX))
        else {
            continue;
        };
        let path = entry.path();
        // Another user's record is theirs to act on (the directory may be /tmp).
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() || Some(std::os::unix::fs::MetadataExt::uid(&meta)) != uid {
            continue;
        }
        let Some(record) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| Record::parse(&text))
        else {
            tracing::warn!(path = %path.display(), "cannot read a record of running processes; leaving it");
            continue;
        };
        let restarted = match verdict(&record.owner, me, || record.owner.is_alive()) {
            Verdict::Leave => continue,
            Verdict::Clean => false,
            Verdict::CleanAfterRestart => true,
        };
        found.push(Leftover {
            workspace: root.join(workspace_name),
            path,
            record,
            restarted,
        });
    }
    found
}

/// Between a workspace's name and a random suffix: a gitops step's scratch clone,
/// `<workspace>.gitops-XXXX`, beside the workspace.
pub(crate) const SCRATCH_INFIX: &str = ".gitops-";

/// Scratch directories of the attempt's steps, beside its workspace: always removed (they
/// hold nothing anyone keeps).
fn remove_scratch(l: &Leftover) {
    let (Some(parent), Some(name)) = (l.workspace.parent(), l.workspace.file_name()) else {
        return;
    };
    let prefix = format!("{}{SCRATCH_INFIX}", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix)
            && entry.file_type().is_ok_and(|t| t.is_dir())
        {
            let path = entry.path();
            match std::fs::remove_dir_all(&path) {
                Ok(()) => tracing::warn!(
                    job = %l.record.job_id,
                    scratch = %path.display(),
                    "removed a step's scratch directory left by a Gantry process that died"
                ),
                Err(e) => tracing::warn!(
                    scratch = %path.display(),
                    error = %e,
                    "cannot remove a step's scratch directory left by a Gantry process that died"
                ),
            }
        }
    }
}

fn remove_workspace(l: &Leftover) {
    remove_scratch(l);
    let path = &l.workspace;
    let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    if !is_dir {
        return;
    }
    if l.record.keep_workspace {
        tracing::warn!(job = %l.record.job_id, attempt = l.record.attempt, workspace = %path.display(), "keeping the workspace of a job whose Gantry process died");
        return;
    }
    match std::fs::remove_dir_all(path) {
        Ok(()) => tracing::warn!(
            job = %l.record.job_id,
            attempt = l.record.attempt,
            workspace = %path.display(),
            "removed the workspace of a job whose Gantry process died"
        ),
        Err(e) => tracing::warn!(
            workspace = %path.display(),
            error = %e,
            "cannot remove the workspace of a job whose Gantry process died"
        ),
    }
}

/// The processes of a recorded group that are provably still the recorded ones.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// The leader is the recorded process (perhaps a zombie), so the group is ours.
    Group(i32),
    /// The leader is gone; these members still run in the workspace.
    Members(Vec<i32>),
    Nothing,
}

impl Target {
    fn is_empty(&self) -> bool {
        match self {
            Target::Group(_) => false,
            Target::Members(pids) => pids.is_empty(),
            Target::Nothing => true,
        }
    }

    fn signal(&self, signal: Signal) {
        let report = |sent: nix::Result<()>, pid: i32| match sent {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => {
                tracing::warn!(pid, %signal, error = %e, "cannot signal leftover processes")
            }
        };
        match self {
            Target::Group(pgid) => report(killpg(Pid::from_raw(*pgid), signal), *pgid),
            Target::Members(pids) => {
                for pid in pids {
                    report(kill(Pid::from_raw(*pid), signal), *pid);
                }
            }
            Target::Nothing => {}
        }
    }
}

/// Which processes of `group` may be signalled, given every process now (`all`). A pid that
/// names a group cannot be given to a new process while the group has members, so a leader with
/// the recorded start time means the group is the recorded one. Without its leader, a member
/// must show it belongs: started no earlier than the leader, with the workspace in its
/// environment.
fn target(group: Group, workspace_env: &str, all: &[Stat]) -> Target {
    let live_members = || {
        all.iter()
            .filter(move |s| s.pgrp == group.pgid && !s.is_zombie())
    };
    match all.iter().find(|s| s.pid == group.pgid) {
        Some(leader) if leader.start == group.start => {
            if live_members().next().is_some() {
                Target::Group(group.pgid)
            } else {
                Target::Nothing
            }
        }
        // The pid is another process's now, so the recorded group is gone.
        Some(_) => Target::Nothing,
        None => Target::Members(
            live_members()
                .filter(|s| s.start >= group.start && procfs::environ_has(s.pid, workspace_env))
                .map(|s| s.pid)
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner {
            pid: 100,
            start: 5000,
            boot_id: "boot-a".into(),
            pid_ns: "pid:[1]".into(),
            hostname: "ci1".into(),
        }
    }

    fn stat(pid: i32, pgrp: i32, start: u64, state: char) -> Stat {
        Stat {
            pid,
            state,
            pgrp,
            start,
        }
    }

    #[test]
    fn records_read_back_as_written() {
        let record = Record {
            job_id: JobId::new().to_string(),
            attempt: 3,
            keep_workspace: true,
            owner: owner(),
            groups: vec![Group {
                pgid: 77,
                start: 123,
            }],
        };
        assert_eq!(Record::parse(&record.to_json()), Some(record));
        assert_eq!(Record::parse("{\"job_id\": 1}"), None);
        assert_eq!(Record::parse("not json"), None);
    }

    #[test]
    fn only_records_whose_owner_is_gone_are_cleaned() {
        let me = Owner {
            pid: 200,
            start: 9000,
            ..owner()
        };
        assert_eq!(verdict(&owner(), &me, || false), Verdict::Clean);
        assert_eq!(verdict(&owner(), &me, || true), Verdict::Leave);
        assert_eq!(verdict(&me, &me, || false), Verdict::Leave, "our own");
        let other_ns = Owner {
            pid_ns: "pid:[2]".into(),
            ..owner()
        };
        assert_eq!(verdict(&other_ns, &me, || false), Verdict::Leave);
        let before_restart = Owner {
            boot_id: "boot-0".into(),
            ..owner()
        };
        assert_eq!(
            verdict(&before_restart, &me, || true),
            Verdict::CleanAfterRestart
        );
        let other_machine = Owner {
            hostname: "ci2".into(),
            ..before_restart
        };
        assert_eq!(verdict(&other_machine, &me, || false), Verdict::Leave);
    }

    #[test]
    fn a_group_is_signalled_only_while_its_leader_is_the_recorded_one() {
        let group = Group {
            pgid: 50,
            start: 1000,
        };
        let env = "GANTRY_WORKSPACE=/nowhere/gantry-job-x";
        let ours = [stat(50, 50, 1000, 'S'), stat(51, 50, 1001, 'S')];
        assert_eq!(target(group, env, &ours), Target::Group(50));
        let zombie_leader = [stat(50, 50, 1000, 'Z'), stat(51, 50, 1001, 'S')];
        assert_eq!(target(group, env, &zombie_leader), Target::Group(50));
        let all_zombies = [stat(50, 50, 1000, 'Z')];
        assert_eq!(target(group, env, &all_zombies), Target::Nothing);
        let recycled = [stat(50, 50, 2000, 'S'), stat(51, 50, 2001, 'S')];
        assert_eq!(target(group, env, &recycled), Target::Nothing);
        // Without the leader, members must show the workspace in their environment, which
        // these (not real processes) cannot.
        let leaderless = [stat(51, 50, 1001, 'S')];
        assert_eq!(target(group, env, &leaderless), Target::Members(vec![]));
        assert!(target(group, env, &leaderless).is_empty());
    }
}
