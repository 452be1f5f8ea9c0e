//! What Linux's `/proc` says about processes: enough to tell one process from another that got
//! its pid later, and to find the processes of a group.

use std::path::Path;

/// A process's identity over time: its pid and when it started (`/proc/<pid>/stat` field 22,
/// clock ticks since boot). A pid that is recycled gets a later start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    pub pid: i32,
    /// Field 3: `R`, `S`, `Z`…
    pub state: char,
    /// Field 5: the process group.
    pub pgrp: i32,
    /// Field 22.
    pub start: u64,
}

impl Stat {
    pub(crate) fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// The process's stat line, if it exists (a zombie still has one).
pub(crate) fn stat(pid: i32) -> Option<Stat> {
    if pid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

/// Parses a stat line. The command name (field 2) is in parentheses and may hold anything,
/// spaces and `)` included, so the fields are counted from its last `)`.
fn parse_stat(pid: i32, text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3.
    Some(Stat {
        pid,
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Every process this process can see.
pub(crate) fn all() -> Vec<Stat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .collect()
}

/// Does the process's environment hold exactly `entry` (`NAME=value`)? False when it cannot be
/// read (gone, or another user's).
pub(crate) fn environ_has(pid: i32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == entry.as_bytes()))
}

/// This boot of the kernel: start times and pids mean nothing across boots.
pub(crate) fn boot_id() -> Option<String> {
    read_trimmed("/proc/sys/kernel/random/boot_id")
}

pub(crate) fn hostname() -> Option<String> {
    read_trimmed("/proc/sys/kernel/hostname")
}

/// This process's pid namespace (`pid:[4026531836]`): pids mean nothing outside it.
pub(crate) fn pid_namespace() -> Option<String> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(link.to_string_lossy().into_owned())
}

/// This process's effective user id (the second `Uid:` of `/proc/self/status`).
pub(crate) fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_after_the_command_name() {
        let line = "4242 (a (weird) name) S 1 4240 4240 0 -1 4194560 120 0 0 0 1 2 0 0 20 0 1 0 987654 1 2 3\n";
        let stat = parse_stat(4242, line).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.pgrp, 4240);
        assert_eq!(stat.start, 987654);
        assert!(parse_stat(1, "1 (init) S 0").is_none());
    }

    #[test]
    fn this_process_can_be_seen() {
        let me = stat(std::process::id() as i32).unwrap();
        assert!(!me.is_zombie());
        assert!(me.start > 0);
        assert!(all().iter().any(|s| s.pid == me.pid && s.start == me.start));
        assert!(boot_id().is_some());
        assert!(pid_namespace().unwrap().starts_with("pid:["));
        assert!(euid().is_some());
    }
}
