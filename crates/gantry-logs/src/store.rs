//! The log store: one append-only file per step, an index beside it, and retention.
//!
//! Layout under the root (the data directory's `logs/`):
//!
//! ```text
//! <job id>/<attempt>/<step>.log   records: "<RFC 3339 time> <stdout|stderr|system> <text>\n"
//! <job id>/<attempt>/<step>.idx   the byte offset of every record, u64 little-endian
//! <job id>/<attempt>/<step>.end   present once the step has ended: empty, or "lost N\n" when N
//!                                 lines could not be stored (the log is incomplete)
//! ```
//!
//! Line `n` (1-based) starts at index entry `n - 1`, so any range is two positioned reads —
//! no scanning, whatever the log's size. A record is written to the log before its index entry;
//! after a crash, [`LogStore::repair`] indexes the complete records the index missed and drops
//! a torn tail, so the log holds every line whose append returned. An append that fails (a full
//! disk) takes back what it wrote of itself, so the lines after it are indexed right.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use gantry_core::{JobId, Stream, Timestamp};
use serde::Serialize;

/// Stored lines are at most this long (bytes of text); longer ones are split.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Identifies one step's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepKey {
    pub job: JobId,
    pub attempt: u32,
    pub step: usize,
}

impl StepKey {
    pub fn new(job: JobId, attempt: u32, step: usize) -> Self {
        Self { job, attempt, step }
    }
}

/// One stored line, numbered from 1 within its step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredLine {
    pub number: u64,
    pub at: Timestamp,
    pub stream: Stream,
    pub text: String,
}

fn stream_name(stream: Stream) -> &'static str {
    match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
        Stream::System => "system",
    }
}

fn parse_stream(name: &[u8]) -> Stream {
    match name {
        b"stderr" => Stream::Stderr,
        b"system" => Stream::System,
        _ => Stream::Stdout,
    }
}

/// Parses one record (without its `\n`). Bytes that are not UTF-8 (a file damaged on disk)
/// come back as U+FFFD rather than an error.
pub(crate) fn parse_record(number: u64, record: &[u8]) -> StoredLine {
    let mut parts = record.splitn(3, |b| *b == b' ');
    let at = parts
        .next()
        .and_then(|t| std::str::from_utf8(t).ok())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_default();
    let stream = parse_stream(parts.next().unwrap_or_default());
    let text = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    StoredLine {
        number,
        at,
        stream,
        text,
    }
}

/// The text of one record: everything after the second space.
pub(crate) fn record_text(record: &[u8]) -> &[u8] {
    let mut parts = record.splitn(3, |b| *b == b' ');
    parts.next();
    parts.next();
    parts.next().unwrap_or_default()
}

/// Splits `text` into pieces of at most [`MAX_LINE_BYTES`] at `char` boundaries, and at
/// embedded newlines (a backend should not send them, but a record must never hold one).
pub fn split_text(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').flat_map(|mut line| {
        let mut pieces = Vec::new();
        loop {
            if line.len() <= MAX_LINE_BYTES {
                pieces.push(line);
                break;
            }
            let mut cut = MAX_LINE_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            pieces.push(&line[..cut]);
            line = &line[cut..];
        }
        pieces
    })
}

/// Retention: what [`LogStore::sweep`] deletes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Attempts whose logs were last written longer ago than this.
    pub max_age: Option<Duration>,
    /// Then the oldest attempts until all logs together fit in this many bytes.
    pub max_bytes: Option<u64>,
}

/// What a sweep deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub attempts_deleted: usize,
    pub bytes_deleted: u64,
    pub bytes_kept: u64,
}

/// The files of one step's log.
#[derive(Clone, Debug)]
pub struct StepFiles {
    pub log: PathBuf,
    pub index: PathBuf,
    pub end: PathBuf,
    /// Present once the log is in the archive (when one is configured).
    pub archived: PathBuf,
}

/// Step logs under one directory. Cheap to clone; all methods are blocking file I/O.
#[derive(Clone, Debug)]
pub struct LogStore {
    root: PathBuf,
}

impl LogStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn attempt_dir(&self, job: JobId, attempt: u32) -> PathBuf {
        self.root.join(job.to_string()).join(attempt.to_string())
    }

    /// The file that holds a step's records.
    pub fn path(&self, job: JobId, attempt: u32, step: usize) -> PathBuf {
        self.files(StepKey::new(job, attempt, step)).log
    }

    pub fn files(&self, key: StepKey) -> StepFiles {
        let dir = self.attempt_dir(key.job, key.attempt);
        StepFiles {
            log: dir.join(format!("{}.log", key.step)),
            index: dir.join(format!("{}.idx", key.step)),
            end: dir.join(format!("{}.end", key.step)),
            archived: dir.join(format!("{}.archived", key.step)),
        }
    }

    /// Deletes every attempt's log of `job` (its run was deleted). Nothing there is no error.
    pub fn remove_job(&self, job: JobId) -> io::Result<()> {
        match fs::remove_dir_all(self.root.join(job.to_string())) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Steps that ended but are not marked as archived.
    pub fn unarchived(&self) -> io::Result<Vec<StepKey>> {
        let mut keys = Vec::new();
        for (job, attempt, dir) in self.attempt_dirs()? {
            for file in fs::read_dir(dir)?.flatten() {
                let name = file.file_name();
                let Some(step) = name
                    .to_string_lossy()
                    .strip_suffix(".end")
                    .and_then(|s| s.parse::<usize>().ok())
                else {
                    continue;
                };
                let key = StepKey::new(job, attempt, step);
                let files = self.files(key);
                if files.log.exists() && !files.archived.exists() {
                    keys.push(key);
                }
            }
        }
        Ok(keys)
    }

    /// Every attempt's directory, `root/JOB/ATTEMPT`, with its job and attempt; other entries
    /// are ignored, a missing root holds none.
    fn attempt_dirs(&self) -> io::Result<Vec<(JobId, u32, PathBuf)>> {
        let jobs = match fs::read_dir(&self.root) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut dirs = Vec::new();
        for job in jobs.flatten() {
            let Ok(job_id) = job.file_name().to_string_lossy().parse::<JobId>() else {
                continue;
            };
            let Ok(attempts) = fs::read_dir(job.path()) else {
                continue;
            };
            for attempt in attempts.flatten() {
                if let Ok(n) = attempt.file_name().to_string_lossy().parse::<u32>() {
                    dirs.push((job_id, n, attempt.path()));
                }
            }
        }
        Ok(dirs)
    }

    /// Opens a step's log for appending, repairing it first (a crash may have left it).
    pub fn open_writer(&self, key: StepKey) -> io::Result<StepWriter> {
        let files = self.files(key);
        if let Some(dir) = files.log.parent() {
            fs::create_dir_all(dir)?;
        }
        let lines = self.repair(key)?;
        // Append mode: every write lands at the file's end, also after a failed append has cut
        // the file back (`StepWriter::take_back`).
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&files.log)?;
        let index = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&files.index)?;
        let log_len = log.metadata()?.len();
        Ok(StepWriter {
            log,
            index,
            log_len,
            lines,
            record: Vec::with_capacity(256),
            entries: Vec::with_capacity(64),
            torn: false,
        })
    }

    /// The number of complete lines of a step, changing nothing: for a step another process
    /// may be writing (a replica that does not run the engine, on a shared volume), where
    /// [`LogStore::repair`] could cut the record being written. Index entries past the log's
    /// end and a torn last record are not counted.
    pub fn count_lines(&self, key: StepKey) -> io::Result<u64> {
        let files = self.files(key);
        let (log, index) = match (File::open(&files.log), File::open(&files.index)) {
            (Ok(log), Ok(index)) => (log, index),
            (Err(e), _) | (_, Err(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        let log_len = log.metadata()?.len();
        Ok(indexed_records(&log, &index, log_len)?.0)
    }

    /// Makes the index match the log: entries past the log's end go, complete records the
    /// index lacks are indexed, and a torn last record (no `\n`) is cut off. Returns the
    /// number of lines. Call only while no writer has the step open.
    pub fn repair(&self, key: StepKey) -> io::Result<u64> {
        let files = self.files(key);
        let log = match OpenOptions::new().read(true).write(true).open(&files.log) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let log_len = log.metadata()?.len();
        let index = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&files.index)?;
        let (mut entries, mut next) = indexed_records(&log, &index, log_len)?;
        let mut added = Vec::new();
        while next < log_len {
            match find_newline(&log, next, log_len)? {
                Some(nl) => {
                    added.extend_from_slice(&next.to_le_bytes());
                    entries += 1;
                    next = nl + 1;
                }
                None => break,
            }
        }
        if next < log_len {
            log.set_len(next)?;
        }
        index.set_len(entries * 8 - added.len() as u64)?;
        if !added.is_empty() {
            index.write_all_at(&added, entries * 8 - added.len() as u64)?;
        }
        Ok(entries)
    }

    /// The number of indexed lines.
    pub fn len(&self, key: StepKey) -> io::Result<u64> {
        match fs::metadata(self.files(key).index) {
            Ok(m) => Ok(m.len() / 8),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Has the step ended (its line count is final)?
    pub fn is_complete(&self, key: StepKey) -> bool {
        self.files(key).end.exists()
    }

    /// Marks the step as ended, with the number of its lines that could not be stored. Nothing
    /// lost is an empty marker (as stores written before the count existed have); a count is
    /// written to a temporary file renamed into place, so a marker that could not be written
    /// whole (a full disk) is not there at all rather than empty, which would say nothing was
    /// lost.
    pub fn mark_ended(&self, key: StepKey, lost_lines: u64) -> io::Result<()> {
        let files = self.files(key);
        if lost_lines == 0 {
            return File::create(&files.end).map(drop);
        }
        let tmp = files.end.with_extension("end.tmp");
        let written = fs::write(&tmp, format!("lost {lost_lines}\n"))
            .and_then(|()| fs::rename(&tmp, &files.end));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    /// The number of lines of an ended step that could not be stored, from its `.end` marker:
    /// 0 when the marker is empty or missing (the step has not ended, or nothing was lost).
    pub fn lost_lines(&self, key: StepKey) -> io::Result<u64> {
        let marker = match fs::read(self.files(key).end) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        Ok(std::str::from_utf8(&marker)
            .ok()
            .and_then(|m| m.trim_end().strip_prefix("lost "))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    /// Does any file of this step exist?
    pub fn exists(&self, key: StepKey) -> bool {
        self.files(key).log.exists()
    }

    /// Lines `from..` (1-based), at most `limit` of them and, past the first, at most
    /// `max_bytes` of records. Empty past the end.
    pub fn read(
        &self,
        key: StepKey,
        from: u64,
        limit: usize,
        max_bytes: u64,
    ) -> io::Result<Vec<StoredLine>> {
        let files = self.files(key);
        let (log, index) = match (File::open(&files.log), File::open(&files.index)) {
            (Ok(l), Ok(i)) => (l, i),
            (Err(e), _) | (_, Err(e)) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Vec::new());
            }
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        read_range(&log, &index, from.max(1), limit, max_bytes)
    }

    /// The log as plain text (no times or streams), in chunks of about `chunk` bytes. Memory is
    /// bounded by the chunk size, whatever the log's size.
    pub fn raw(&self, key: StepKey, chunk: usize) -> io::Result<RawText> {
        let file = File::open(self.files(key).log)?;
        Ok(RawText {
            reader: BufReader::with_capacity(256 * 1024, file),
            chunk,
            record: Vec::new(),
        })
    }

    /// Lines whose text contains `needle` (ASCII case-insensitive), at most `limit`, scanning
    /// from line `from`.
    pub fn search(
        &self,
        key: StepKey,
        needle: &str,
        from: u64,
        limit: usize,
    ) -> io::Result<Vec<StoredLine>> {
        let files = self.files(key);
        let file = match File::open(&files.log) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        if from > 1 {
            let index = File::open(&files.index)?;
            if (from - 1) * 8 >= index.metadata()?.len() {
                return Ok(Vec::new());
            }
            reader.seek(SeekFrom::Start(read_entry(&index, from - 1)?))?;
        }
        let needle = needle.to_ascii_lowercase().into_bytes();
        let mut found = Vec::new();
        let mut record = Vec::new();
        let mut number = from.max(1) - 1;
        loop {
            record.clear();
            if reader.read_until(b'\n', &mut record)? == 0 || record.last() != Some(&b'\n') {
                break;
            }
            number += 1;
            let body = &record[..record.len() - 1];
            let text = record_text(body);
            if needle.is_empty()
                || text
                    .windows(needle.len())
                    .any(|w| w.eq_ignore_ascii_case(&needle))
            {
                found.push(parse_record(number, body));
                if found.len() >= limit {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// Deletes the logs of whole attempts by age, then oldest first by size, never touching
    /// the attempts in `live`.
    pub fn sweep(
        &self,
        retention: &Retention,
        now: SystemTime,
        live: &HashSet<(JobId, u32)>,
    ) -> io::Result<SweepReport> {
        struct Attempt {
            dir: PathBuf,
            bytes: u64,
            modified: SystemTime,
            live: bool,
        }
        let mut attempts = Vec::new();
        for (job_id, n, dir) in self.attempt_dirs()? {
            let mut bytes = 0;
            let mut modified = SystemTime::UNIX_EPOCH;
            for file in fs::read_dir(&dir)?.flatten() {
                if let Ok(meta) = file.metadata() {
                    bytes += meta.len();
                    modified = modified.max(meta.modified().unwrap_or(modified));
                }
            }
            attempts.push(Attempt {
                dir,
                bytes,
                modified,
                live: live.contains(&(job_id, n)),
            });
        }
        attempts.sort_by_key(|a| a.modified);
        let mut report = SweepReport {
            bytes_kept: attempts.iter().map(|a| a.bytes).sum(),
            ..SweepReport::default()
        };
        for a in &attempts {
            if a.live {
                continue;
            }
            let too_old = retention
                .max_age
                .is_some_and(|age| now.duration_since(a.modified).unwrap_or_default() > age);
            let too_big = retention
                .max_bytes
                .is_some_and(|max| report.bytes_kept > max);
            if too_old || too_big {
                fs::remove_dir_all(&a.dir)?;
                report.attempts_deleted += 1;
                report.bytes_deleted += a.bytes;
                report.bytes_kept -= a.bytes;
                if let Some(job_dir) = a.dir.parent() {
                    // Only succeeds once the job has no attempt left.
                    let _ = fs::remove_dir(job_dir);
                }
            }
        }
        Ok(report)
    }
}

/// The index entries that point at complete records of a log `log_len` long, and where the
/// first record past them starts: entries at or past the log's end do not count, nor does a torn
/// last record (no `\n`; it starts where the next record would). Reads only.
fn indexed_records(log: &File, index: &File, log_len: u64) -> io::Result<(u64, u64)> {
    let mut entries = index.metadata()?.len() / 8;
    while entries > 0 && read_entry(index, entries - 1)? >= log_len {
        entries -= 1;
    }
    if entries == 0 {
        return Ok((0, 0));
    }
    let last = read_entry(index, entries - 1)?;
    Ok(match find_newline(log, last, log_len)? {
        Some(nl) => (entries, nl + 1),
        None => (entries - 1, last),
    })
}

fn read_entry(index: &File, n: u64) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    index.read_exact_at(&mut buf, n * 8)?;
    Ok(u64::from_le_bytes(buf))
}

/// The offset of the first `\n` at or after `from`, before `end`.
fn find_newline(file: &File, mut from: u64, end: u64) -> io::Result<Option<u64>> {
    let mut buf = vec![0u8; 64 * 1024];
    while from < end {
        let want = buf.len().min((end - from) as usize);
        let n = file.read_at(&mut buf[..want], from)?;
        if n == 0 {
            break;
        }
        if let Some(i) = buf[..n].iter().position(|b| *b == b'\n') {
            return Ok(Some(from + i as u64));
        }
        from += n as u64;
    }
    Ok(None)
}

pub(crate) fn read_range(
    log: &File,
    index: &File,
    from: u64,
    limit: usize,
    max_bytes: u64,
) -> io::Result<Vec<StoredLine>> {
    let lines = index.metadata()?.len() / 8;
    if from > lines || limit == 0 {
        return Ok(Vec::new());
    }
    let count = (limit as u64).min(lines - from + 1);
    // Entries for lines from..from+count, and the start of the line after (or the log's end).
    let mut raw = vec![0u8; (count as usize + 1) * 8];
    let have_next = from + count <= lines;
    let want = if have_next { raw.len() } else { raw.len() - 8 };
    index.read_exact_at(&mut raw[..want], (from - 1) * 8)?;
    let mut offsets: Vec<u64> = raw[..want]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    if !have_next {
        offsets.push(log.metadata()?.len());
    }
    let start = offsets[0];
    // Keep whole lines within the byte budget, at least one.
    let mut end_i = offsets.len() - 1;
    while end_i > 1 && offsets[end_i] - start > max_bytes {
        end_i -= 1;
    }
    let end = offsets[end_i];
    let mut buf = vec![0u8; (end - start) as usize];
    log.read_exact_at(&mut buf, start)?;
    let mut out = Vec::with_capacity(end_i);
    for i in 0..end_i {
        let a = (offsets[i] - start) as usize;
        let b = (offsets[i + 1] - start) as usize;
        let record = &buf[a..b];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        out.push(parse_record(from + i as u64, record));
    }
    Ok(out)
}

/// Appends one step's lines. Every append is written to the files before it returns (a crash
/// of the process loses nothing appended); [`StepWriter::sync`] also survives power loss.
#[derive(Debug)]
pub struct StepWriter {
    log: File,
    index: File,
    log_len: u64,
    lines: u64,
    record: Vec<u8>,
    entries: Vec<u8>,
    /// A failed append may have left part of itself in the files, and cutting it off failed
    /// too: the next append tries again first.
    torn: bool,
}

impl StepWriter {
    /// The number of lines written.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Appends `text` as one or more lines (split at newlines and at [`MAX_LINE_BYTES`]) and
    /// returns them as stored. On an error (a full disk) nothing of `text` is kept: both files
    /// are cut back to where they were, so a later append is indexed right.
    pub fn append(
        &mut self,
        at: Timestamp,
        stream: Stream,
        text: &str,
    ) -> io::Result<Vec<StoredLine>> {
        self.record.clear();
        self.entries.clear();
        let stamp = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut stored = Vec::new();
        let mut offset = self.log_len;
        for piece in split_text(text) {
            let start = self.record.len();
            self.record.extend_from_slice(stamp.as_bytes());
            self.record.push(b' ');
            self.record
                .extend_from_slice(stream_name(stream).as_bytes());
            self.record.push(b' ');
            self.record.extend_from_slice(piece.as_bytes());
            self.record.push(b'\n');
            self.entries.extend_from_slice(&offset.to_le_bytes());
            offset += (self.record.len() - start) as u64;
            stored.push(StoredLine {
                number: self.lines + stored.len() as u64 + 1,
                at,
                stream,
                text: piece.to_owned(),
            });
        }
        if self.torn {
            self.take_back()?;
        }
        // The record first: an index entry must never point past the log.
        let written = match gantry_core::inject::fault("logs.append") {
            // A write that stopped half way, as on a full disk or a failing device.
            Some(fault) => {
                let half = &self.record[..self.record.len() / 2];
                let kind = *fault.choose(&[io::ErrorKind::StorageFull, io::ErrorKind::Other]);
                self.log
                    .write_all(half)
                    .and_then(|()| Err(io::Error::new(kind, fault.describe("write failed"))))
            }
            None => self
                .log
                .write_all(&self.record)
                .and_then(|()| self.index.write_all(&self.entries)),
        };
        if let Err(err) = written {
            // Part of the record or of its entries may be in the files: without cutting it off,
            // the next entries would point into it. When this fails too, the next append
            // tries again before writing.
            self.torn = true;
            let _ = self.take_back();
            return Err(err);
        }
        self.log_len = offset;
        self.lines += stored.len() as u64;
        Ok(stored)
    }

    /// Cuts both files back to the lines appended so far. The files are in append mode, so the
    /// next write lands at the new end.
    fn take_back(&mut self) -> io::Result<()> {
        self.log.set_len(self.log_len)?;
        self.index.set_len(self.lines * 8)?;
        self.torn = false;
        Ok(())
    }

    pub fn sync(&mut self) -> io::Result<()> {
        if let Some(fault) = gantry_core::inject::fault("logs.sync") {
            return Err(io::Error::other(fault.describe("fsync failed")));
        }
        self.log.sync_data()?;
        self.index.sync_data()
    }
}

/// Plain text of a log, chunk by chunk: see [`LogStore::raw`].
#[derive(Debug)]
pub struct RawText {
    reader: BufReader<File>,
    chunk: usize,
    record: Vec<u8>,
}

impl Iterator for RawText {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut out = Vec::with_capacity(self.chunk + MAX_LINE_BYTES);
        while out.len() < self.chunk {
            self.record.clear();
            match self.reader.read_until(b'\n', &mut self.record) {
                Ok(0) => break,
                Ok(_) if self.record.last() != Some(&b'\n') => break,
                Ok(_) => {
                    out.extend_from_slice(record_text(&self.record[..self.record.len() - 1]));
                    out.push(b'\n');
                }
                Err(e) => return Some(Err(e)),
            }
        }
        (!out.is_empty()).then_some(Ok(out))
    }
}

/// A small tmpfs mounted for a test, to fill it up for real: `ENOSPC` from the kernel, not a
/// mock. Mounting needs root (the tests run as root in CI); without it the test fails saying so.
#[cfg(test)]
pub(crate) mod tmpfs {
    use std::fs::{self, File};
    use std::io::{self, Write};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    pub(crate) struct Tmpfs {
        dir: tempfile::TempDir,
    }

    impl Tmpfs {
        /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) on a new temporary directory.
        pub(crate) fn mount(size: &str) -> Self {
            let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
            let euid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1))
                .unwrap_or("unknown");
            assert!(
                euid == "0",
                "this test needs root to mount a tmpfs (mount -t tmpfs) and fill it up; it runs \
                 as uid {euid}: run it as root (CI does)"
            );
            let dir = tempfile::tempdir().expect("a temporary directory");
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .output()
                .expect("mount(8) runs");
            assert!(
                out.status.success(),
                "this test needs root to mount a tmpfs, and `mount -t tmpfs` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Self { dir }
        }

        pub(crate) fn path(&self) -> &Path {
            self.dir.path()
        }

        /// Writes a file until the tmpfs is full; returns its path (delete it to free the space).
        pub(crate) fn fill(&self, name: &str) -> PathBuf {
            let path = self.path().join(name);
            let mut file = File::create(&path).expect("a filler file");
            let chunk = vec![b'x'; 4096];
            loop {
                match file.write_all(&chunk) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(28) => break,
                    Err(e) => panic!("filling the tmpfs: {e}"),
                }
            }
            path
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }

    /// Is this the error of a full disk?
    pub(crate) fn is_enospc(e: &io::Error) -> bool {
        e.raw_os_error() == Some(28)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::tmpfs::{Tmpfs, is_enospc};
    use super::*;

    fn lens(store: &LogStore, key: StepKey) -> (u64, u64) {
        let files = store.files(key);
        (
            fs::metadata(files.log).unwrap().len(),
            fs::metadata(files.index).unwrap().len(),
        )
    }

    /// Every index entry points at the start of its record, and the records are the texts.
    fn assert_consistent(store: &LogStore, key: StepKey, texts: &[String]) {
        let lines = store.read(key, 1, usize::MAX, u64::MAX).unwrap();
        let got: Vec<(u64, &str)> = lines.iter().map(|l| (l.number, l.text.as_str())).collect();
        let want: Vec<(u64, &str)> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u64 + 1, t.as_str()))
            .collect();
        assert_eq!(got, want, "the log read back is not the lines appended");
        assert!(lines.iter().all(|l| l.stream == Stream::Stdout));
        assert_eq!(store.len(key).unwrap(), texts.len() as u64);
    }

    #[test]
    fn a_failed_append_on_a_full_disk_leaves_nothing_of_itself_and_later_appends_index_right() {
        let fs = Tmpfs::mount("512k");
        let store = LogStore::new(fs.path().join("logs"));
        let key = StepKey::new(JobId::new(), 1, 0);
        let mut writer = store.open_writer(key).unwrap();
        let mut appended: Vec<String> = Vec::new();
        let append = |writer: &mut StepWriter, appended: &mut Vec<String>, text: String| {
            let stored = writer.append(gantry_core::now(), Stream::Stdout, &text)?;
            assert_eq!(stored.len(), 1);
            assert_eq!(stored[0].number, appended.len() as u64 + 1);
            appended.push(text);
            io::Result::Ok(())
        };
        // Fill exactly one page of the index (a record of an empty text is 36 bytes, so the log
        // is 4.5 pages long, its last page half empty).
        let page = fs::metadata(store.files(key).index).unwrap().blksize();
        for _ in 0..page / 8 {
            append(&mut writer, &mut appended, String::new()).unwrap();
        }
        let filler = fs.fill("filler");

        // 1. The record fits in the log's last page, its index entry needs a new page: the log
        //    had the record, and must not keep it.
        let before = lens(&store, key);
        let err = append(
            &mut writer,
            &mut appended,
            "fits in the log, not in the index".into(),
        )
        .unwrap_err();
        assert!(is_enospc(&err), "{err}");
        assert_eq!(
            lens(&store, key),
            before,
            "the failed append left bytes behind"
        );

        // 2. A record longer than the room left in the log's last page: part of it is written.
        let err = append(&mut writer, &mut appended, "y".repeat(3 * page as usize)).unwrap_err();
        assert!(is_enospc(&err), "{err}");
        assert_eq!(lens(&store, key), before, "the torn record was left behind");

        // 3. Appends until the disk refuses, of sizes that end at various places in a page.
        fs::remove_file(&filler).unwrap();
        let filler = fs.fill("filler");
        let mut failed = 0;
        for i in 0..2000 {
            let text = format!("line {i} {}", "z".repeat(i * 37 % 900));
            match append(&mut writer, &mut appended, text) {
                Ok(()) => {}
                Err(e) if is_enospc(&e) => failed += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(failed > 0, "the disk never filled up");

        // 4. Space comes back: the next lines are stored, and indexed right.
        fs::remove_file(&filler).unwrap();
        for i in 0..100 {
            append(&mut writer, &mut appended, format!("after {i}")).unwrap();
        }
        drop(writer);
        assert_consistent(&store, key, &appended);

        // The log needs no repair: nothing changes.
        let files = store.files(key);
        let (log, index) = (
            fs::read(&files.log).unwrap(),
            fs::read(&files.index).unwrap(),
        );
        assert_eq!(store.repair(key).unwrap(), appended.len() as u64);
        assert_eq!(fs::read(&files.log).unwrap(), log);
        assert_eq!(fs::read(&files.index).unwrap(), index);
        // And a writer opened again appends after the last line.
        let mut writer = store.open_writer(key).unwrap();
        append(&mut writer, &mut appended, "reopened".into()).unwrap();
        drop(writer);
        assert_consistent(&store, key, &appended);
    }

    #[test]
    fn the_end_marker_is_empty_without_losses_and_carries_the_count_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::new(dir.path());
        let key = StepKey::new(JobId::new(), 1, 0);
        fs::create_dir_all(store.attempt_dir(key.job, key.attempt)).unwrap();
        assert_eq!(store.lost_lines(key).unwrap(), 0);
        assert!(!store.is_complete(key));

        store.mark_ended(key, 0).unwrap();
        assert!(store.is_complete(key));
        assert_eq!(fs::read(store.files(key).end).unwrap(), b"");
        assert_eq!(store.lost_lines(key).unwrap(), 0);

        store.mark_ended(key, 145_037).unwrap();
        assert_eq!(fs::read(store.files(key).end).unwrap(), b"lost 145037\n");
        assert_eq!(store.lost_lines(key).unwrap(), 145_037);
        assert!(!store.files(key).end.with_extension("end.tmp").exists());
        // Steps that ended are still found for the archive (the temporary name is not one).
        fs::write(store.files(key).log, b"").unwrap();
        assert_eq!(store.unarchived().unwrap(), vec![key]);
    }

    #[test]
    fn a_count_that_cannot_be_written_leaves_no_marker() {
        let fs = Tmpfs::mount("64k");
        let store = LogStore::new(fs.path().join("logs"));
        let key = StepKey::new(JobId::new(), 1, 0);
        fs::create_dir_all(store.attempt_dir(key.job, key.attempt)).unwrap();
        let filler = fs.fill("filler");
        let err = store.mark_ended(key, 3).unwrap_err();
        assert!(is_enospc(&err), "{err}");
        // Not an empty marker, which would say nothing was lost.
        assert!(!store.is_complete(key));
        assert!(!store.files(key).end.with_extension("end.tmp").exists());
        fs::remove_file(filler).unwrap();
        store.mark_ended(key, 3).unwrap();
        assert_eq!(store.lost_lines(key).unwrap(), 3);
    }
}
