//! One log stream per step: opened when its container starts (follow, timestamps), resumed after
//! a break from the last timestamp seen, without losing or repeating a line.
//!
//! `sinceTime` has one-second precision, so a resumed stream starts somewhat before the last
//! line; lines are kept only when their (nanosecond) timestamp is after the last one seen, or
//! equal to it and beyond the count already seen at exactly that instant.
//!
//! A step re-attached after a restart of Gantry has part of its log stored already: the stream
//! is read from the container's first line and the lines stored are counted off (see [`Skip`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{AsyncBufReadExt, TryStreamExt};
use gantry_core::{
    EventSender, JobEvent, JobEventKind, JobId, LogLine, StoredLog, Stream, Timestamp,
};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::LogParams;
use tokio::sync::watch;

/// Where a step's log is, and what of it was delivered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub last: Option<Timestamp>,
    /// Lines delivered with exactly the timestamp `last`.
    pub at_last: usize,
    /// The last line number used.
    pub number: u64,
    /// Lines seen at `last` in the stream being read now.
    seen_at_last: usize,
    /// Lines stored before a restart, not to be sent again.
    pub skip: Skip,
}

impl Cursor {
    /// Starts reading a (re)opened stream.
    pub fn reopen(&mut self) {
        self.seen_at_last = 0;
    }

    /// Should a line with this timestamp be delivered? Updates the cursor when so.
    pub fn accept(&mut self, at: Timestamp) -> bool {
        match self.last {
            Some(last) if at < last => false,
            Some(last) if at == last => {
                self.seen_at_last += 1;
                if self.seen_at_last <= self.at_last {
                    return false;
                }
                self.at_last += 1;
                true
            }
            _ => {
                self.last = Some(at);
                self.at_last = 1;
                self.seen_at_last = 1;
                true
            }
        }
    }
}

/// The lines of a re-attached step's log that are stored already: the first `stored` lines of
/// the container's log, the last of them written at `until` (to the microsecond, as the log store
/// keeps times). The kubelet serves a container's log from its first line, the same lines at the
/// same times whenever it is read, so counting them off is exact.
///
/// Except when the kubelet has rotated the container's log file (`containerLogMaxSize`, 10 MiB
/// by default): `pods/log` then starts at a later line, and counting from there would drop lines
/// never stored. So no line later than `until` is skipped, and when the count and the times
/// disagree, a notice in the log says that lines written at about `until` may be missing or
/// repeated (the times alone cannot tell apart lines written within the same microsecond).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Skip {
    stored: u64,
    left: u64,
    until: Option<Timestamp>,
    mismatch: bool,
    told: bool,
}

impl Skip {
    pub fn new(stored: &StoredLog) -> Self {
        Self {
            stored: stored.output_lines,
            left: stored.output_lines,
            until: stored.last_output_at.map(to_micros),
            mismatch: false,
            told: false,
        }
    }

    /// Is the container's next line, written at `at`, one stored already?
    pub fn stored(&mut self, at: Timestamp) -> bool {
        if self.left == 0 {
            return false;
        }
        let at = to_micros(at);
        if self.until.is_some_and(|until| at > until) {
            // Newer than every stored line: the log starts later than what was stored.
            self.left = 0;
            self.mismatch = true;
            return false;
        }
        self.left -= 1;
        if self.left == 0 && self.until.is_some_and(|until| at != until) {
            self.mismatch = true;
        }
        true
    }

    /// The notice to write, once, when the log did not match what is stored.
    pub fn notice(&mut self) -> Option<String> {
        if !self.mismatch || std::mem::replace(&mut self.told, true) {
            return None;
        }
        let until = self
            .until
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .unwrap_or_default();
        Some(format!(
            "re-attached after a restart of Gantry: the container's log does not begin with the \
             {} lines stored before the restart (the kubelet may have rotated it); lines written \
             at about {until} may be missing or repeated",
            self.stored
        ))
    }
}

fn to_micros(t: Timestamp) -> Timestamp {
    chrono::DateTime::from_timestamp(t.timestamp(), t.timestamp_subsec_micros() * 1000).unwrap_or(t)
}

fn to_jiff(t: Timestamp) -> Option<k8s_openapi::jiff::Timestamp> {
    k8s_openapi::jiff::Timestamp::new(t.timestamp(), t.timestamp_subsec_nanos() as i32).ok()
}

/// A Kubernetes time as Gantry's.
pub(crate) fn from_jiff(t: k8s_openapi::jiff::Timestamp) -> Timestamp {
    chrono::DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

/// `2026-01-01T00:00:00.123456789Z text` → (time, text).
pub(crate) fn split(line: &str) -> Option<(Timestamp, &str)> {
    let (ts, text) = line.split_once(' ').unwrap_or((line, ""));
    let at = chrono::DateTime::parse_from_rfc3339(ts).ok()?;
    Some((at.with_timezone(&chrono::Utc), text))
}

pub(crate) struct Follow {
    pub api: Api<Pod>,
    pub pod: String,
    pub container: String,
    pub step: usize,
    pub job_id: JobId,
    pub attempt: u32,
    pub events: EventSender,
    /// Becomes true when the watch says the container terminated.
    pub ended: watch::Receiver<bool>,
    /// How long to wait for the container's end after a stream ends before resuming.
    pub settle: Duration,
    /// First wait after a failed open; doubles up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// What of the log is stored already (a step re-attached after a restart).
    pub stored: StoredLog,
    /// Lines delivered so far: while it grows, the runner waits for the rest.
    pub delivered: Arc<AtomicU64>,
}

enum Read {
    /// The server ended the stream.
    Eof,
    /// The watch said the container ended while its log was followed: what is left is read
    /// without `follow`. (A kubelet ends a follow stream only when it next checks the container,
    /// about a second after its end: the step's end would be reported that much later.)
    Ended,
    /// The connection broke, or the stream could not be opened (yet).
    Broken,
    /// The pod or container is gone (404): there is nothing more to read.
    Gone,
}

impl Follow {
    async fn send(&self, cursor: &mut Cursor, at: Timestamp, stream: Stream, text: String) -> bool {
        cursor.number += 1;
        let line = LogLine {
            step: self.step,
            number: cursor.number,
            at,
            stream,
            text,
        };
        let event = JobEvent {
            job_id: self.job_id,
            attempt: self.attempt,
            at,
            kind: JobEventKind::Log(line),
        };
        let sent = self.events.send(event).await.is_ok();
        self.delivered.fetch_add(1, Ordering::Relaxed);
        sent
    }

    /// Follows the log until the container ended and everything it wrote was delivered.
    /// Returns the log requests made.
    pub async fn run(mut self) -> u32 {
        let mut cursor = Cursor {
            // Numbers go on after the lines stored; the store numbers lines itself anyway.
            number: self.stored.output_lines + self.stored.system_lines,
            skip: Skip::new(&self.stored),
            ..Cursor::default()
        };
        let mut requests = 0;
        let mut delay = self.backoff;
        loop {
            let ended_before = *self.ended.borrow();
            requests += 1;
            // The log of a container that ended is read to its end, not followed: the stream
            // then ends by itself once everything was read.
            let read = self.read(&mut cursor, !ended_before).await;
            if ended_before {
                // The container had ended before this stream opened: it held everything.
                return requests;
            }
            match read {
                Read::Gone => return requests,
                Read::Ended => delay = self.backoff,
                Read::Eof => {
                    delay = self.backoff;
                    // A follow stream ends when the container does; the watch will say so.
                    // If it does not within `settle`, the stream broke: resume.
                    let _ = tokio::time::timeout(self.settle, self.ended.wait_for(|e| *e)).await;
                    if *self.ended.borrow() {
                        return requests;
                    }
                }
                Read::Broken => {
                    // Back off, doubling: a container that has not started yet, or an API
                    // server in trouble, must not be asked again and again. The container's
                    // end cuts the wait short: then one last read collects what it wrote.
                    let _ = tokio::time::timeout(delay, self.ended.wait_for(|e| *e)).await;
                    delay = (delay * 2).min(self.max_backoff.max(self.backoff));
                }
            }
        }
    }

    async fn read(&self, cursor: &mut Cursor, follow: bool) -> Read {
        cursor.reopen();
        let params = LogParams {
            container: Some(self.container.clone()),
            follow,
            timestamps: true,
            since_time: cursor.last.and_then(to_jiff),
            ..LogParams::default()
        };
        let reader = match self.api.log_stream(&self.pod, &params).await {
            Ok(r) => r,
            Err(kube::Error::Api(e)) if e.code == 404 => {
                tracing::debug!(pod = %self.pod, container = %self.container, "log gone: the pod or container no longer exists");
                return Read::Gone;
            }
            Err(e) => {
                tracing::debug!(pod = %self.pod, container = %self.container, error = %e, "log stream did not open");
                return Read::Broken;
            }
        };
        let mut lines = reader.lines();
        let mut ended = self.ended.clone();
        loop {
            // Cancelling `try_next` loses nothing: the stream keeps what it has buffered, and
            // the rest is read again from the cursor.
            let next = tokio::select! {
                biased;
                next = lines.try_next() => next,
                _ = ended.wait_for(|e| *e), if follow => return Read::Ended,
            };
            match next {
                Ok(Some(line)) => {
                    let Some((at, text)) = split(&line) else {
                        continue;
                    };
                    if !cursor.accept(at) || cursor.skip.stored(at) {
                        continue;
                    }
                    if let Some(notice) = cursor.skip.notice()
                        && !self.send(cursor, at, Stream::System, notice).await
                    {
                        return Read::Eof;
                    }
                    if !self.send(cursor, at, Stream::Stdout, text.to_owned()).await {
                        return Read::Eof;
                    }
                }
                Ok(None) => return Read::Eof,
                Err(e) => {
                    tracing::debug!(pod = %self.pod, container = %self.container, error = %e, "log stream broke");
                    return Read::Broken;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        split(&format!("{s} x")).unwrap().0
    }

    #[test]
    fn lines_split_into_time_and_text() {
        let (t, text) = split("2026-01-01T00:00:00.123456789Z hello world").unwrap();
        assert_eq!(text, "hello world");
        assert_eq!(t.timestamp_subsec_nanos(), 123_456_789);
        assert_eq!(split("2026-01-01T00:00:01Z").unwrap().1, "");
        assert!(split("garbage").is_none());
    }

    #[test]
    fn a_resumed_stream_repeats_nothing_and_loses_nothing() {
        let mut c = Cursor::default();
        c.reopen();
        let t1 = at("2026-01-01T00:00:01.1Z");
        let t2 = at("2026-01-01T00:00:01.2Z");
        assert!(c.accept(t1));
        assert!(c.accept(t2));
        assert!(c.accept(t2)); // two lines at the same instant
        // The stream breaks; the server resends from the start of the second.
        c.reopen();
        assert!(!c.accept(t1));
        assert!(!c.accept(t2));
        assert!(!c.accept(t2));
        assert!(c.accept(t2)); // a third line at that instant is new
        assert!(c.accept(at("2026-01-01T00:00:02Z")));
    }

    fn stored(lines: u64, last: Option<&str>) -> Skip {
        Skip::new(&StoredLog {
            output_lines: lines,
            system_lines: 0,
            last_output_at: last.map(at),
        })
    }

    #[test]
    fn the_lines_stored_before_a_restart_are_counted_off_exactly() {
        // The store keeps microseconds; the kubelet gives nanoseconds.
        let mut s = stored(2, Some("2026-01-01T00:00:01.000002Z"));
        assert!(s.stored(at("2026-01-01T00:00:01.000001999Z")));
        assert!(s.stored(at("2026-01-01T00:00:01.000002999Z")));
        assert!(!s.stored(at("2026-01-01T00:00:01.000002999Z")));
        assert!(!s.stored(at("2026-01-01T00:00:03Z")));
        assert_eq!(s.notice(), None);
        // Nothing stored, or a sink that knows no times: the count alone.
        assert!(!stored(0, None).stored(at("2026-01-01T00:00:01Z")));
        let mut s = stored(1, None);
        assert!(s.stored(at("2026-01-01T00:00:09Z")));
        assert!(!s.stored(at("2026-01-01T00:00:01Z")));
        assert_eq!(s.notice(), None);
    }

    #[test]
    fn a_rotated_log_loses_no_line_newer_than_the_stored_ones_and_says_so() {
        // Five lines stored, the last at 00:05; the kubelet's log now starts at the fourth.
        let mut s = stored(5, Some("2026-01-01T00:00:05Z"));
        assert!(s.stored(at("2026-01-01T00:00:04Z")));
        assert!(s.stored(at("2026-01-01T00:00:05Z")));
        assert_eq!(s.notice(), None);
        assert!(!s.stored(at("2026-01-01T00:00:06Z")), "never stored");
        let notice = s.notice().unwrap();
        assert!(
            notice.contains("does not begin with the 5 lines stored")
                && notice.contains("2026-01-01T00:00:05.000000Z"),
            "{notice}"
        );
        assert_eq!(s.notice(), None, "said once");
        assert!(!s.stored(at("2026-01-01T00:00:07Z")));
    }
}
