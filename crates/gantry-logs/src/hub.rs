//! The live hub: per step, the number of lines stored so far (a `watch`, so ingestion never
//! waits for a viewer) and a ring of the most recent lines (so viewers that keep up never touch
//! the disk). A viewer that falls behind the ring reads from the store instead; line numbers
//! make a gap or a duplicate impossible.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio::sync::watch;

use crate::{StepKey, StoredLine};

/// Lines kept in a step's ring, and their bytes at most.
const RING_LINES: usize = 4096;
const RING_BYTES: usize = 4 * 1024 * 1024;

/// A stored line shared by every viewer, with its JSON made once for all of them.
#[derive(Debug)]
pub struct SharedLine {
    pub line: StoredLine,
    json: OnceLock<String>,
}

impl SharedLine {
    pub fn new(line: StoredLine) -> Arc<Self> {
        Arc::new(Self {
            line,
            json: OnceLock::new(),
        })
    }

    /// `{"number":…,"at":…,"stream":…,"text":…}`
    pub fn json(&self) -> &str {
        self.json.get_or_init(|| {
            serde_json::to_string(&self.line).expect("a stored line always serialises")
        })
    }
}

/// How far a step's log has got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Lines stored (the number of the last one).
    pub lines: u64,
    /// The step ended: no line will follow.
    pub closed: bool,
    /// Lines that could not be stored (the data directory was full or failing): above 0 the
    /// log is incomplete. While the step is being written, the count so far; once it has
    /// ended, what its end marker says (0 for a step only in the archive: the marker is not
    /// archived, the notice line at the end of the log is).
    pub lost_lines: u64,
}

#[derive(Debug)]
pub(crate) struct Live {
    pub progress: watch::Sender<Progress>,
    ring: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<Arc<SharedLine>>,
    bytes: usize,
}

impl Live {
    pub fn new(lines: u64) -> Arc<Self> {
        Arc::new(Self {
            progress: watch::Sender::new(Progress {
                lines,
                closed: false,
                // Not kept here: `Logs` counts lost lines and `Logs::progress` fills them in.
                lost_lines: 0,
            }),
            ring: Mutex::new(Ring::default()),
        })
    }

    /// Makes stored lines visible to viewers. Call in line order.
    pub fn publish(&self, lines: Vec<Arc<SharedLine>>) {
        let Some(last) = lines.last().map(|l| l.line.number) else {
            return;
        };
        {
            let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
            for line in lines {
                ring.bytes += line.line.text.len();
                ring.lines.push_back(line);
            }
            while ring.lines.len() > RING_LINES || ring.bytes > RING_BYTES {
                if let Some(old) = ring.lines.pop_front() {
                    ring.bytes -= old.line.text.len();
                }
            }
        }
        self.progress.send_modify(|p| p.lines = last);
    }

    pub fn close(&self) {
        self.progress.send_modify(|p| p.closed = true);
    }

    /// Up to `max` lines from `from` when the ring still has `from`.
    pub fn recent(&self, from: u64, max: usize) -> Option<Vec<Arc<SharedLine>>> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let first = ring.lines.front()?.line.number;
        if from < first {
            return None;
        }
        let skip = usize::try_from(from - first).ok()?;
        if skip >= ring.lines.len() {
            return None;
        }
        Some(ring.lines.iter().skip(skip).take(max).cloned().collect())
    }
}

/// Every step being written in this process.
#[derive(Debug)]
pub(crate) struct Hub {
    steps: Mutex<HashMap<StepKey, Arc<Live>>>,
    /// Bumped whenever a step opens, for viewers waiting for a step that has not started.
    pub opened: watch::Sender<u64>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            steps: Mutex::default(),
            opened: watch::Sender::new(0),
        }
    }
}

impl Hub {
    pub fn get(&self, key: StepKey) -> Option<Arc<Live>> {
        self.steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned()
    }

    pub fn insert(&self, key: StepKey, live: Arc<Live>) {
        self.steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, live);
        self.opened.send_modify(|n| *n += 1);
    }

    pub fn remove(&self, key: StepKey) -> Option<Arc<Live>> {
        self.steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key)
    }
}
