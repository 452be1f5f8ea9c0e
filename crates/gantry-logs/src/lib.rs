//! Gantry's step logs. Every line a backend reports goes, in this order, through
//!
//! 1. the [`Masker`] of its job attempt (secret values, each line of multi-line values and
//!    their base64 forms become `***`),
//! 2. the [`LogStore`] (append-only file per step plus an index; the line is written before
//!    anyone can see it), and
//! 3. the live hub, which tells viewers that line `n` exists.
//!
//! Viewers [`Logs::follow`] a step from any line number: they read what is stored, then wait
//! for more. A viewer that falls behind reads from the store (in pages shared by the viewers
//! behind, so a crowd of them reads and encodes each line once), so it never slows ingestion or
//! the other viewers, and since every line has a number a resumed viewer gets no gap and no
//! duplicate. Memory per step is a bounded ring of recent lines, whatever the log's size.

mod archive;
mod hub;
mod mask;
mod pages;
mod split;
mod store;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::Stream;
use gantry_core::{JobId, LogLine, Secret, Stream as LineStream};

#[cfg(feature = "object-store")]
pub use archive::ObjectStoreArchive;
pub use archive::{Archive, DirArchive};
pub use hub::{Progress, SharedLine};
pub use mask::{MASK, MAX_PATTERN_LEN, MIN_SECRET_LEN, Masker};
pub use split::LineSplitter;
pub use store::{
    LogStore, MAX_LINE_BYTES, RawText, Retention, StepFiles, StepKey, StepWriter, StoredLine,
    SweepReport, split_text,
};

use hub::{Hub, Live};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("log store: {0}")]
    Io(#[from] io::Error),
    #[error("log archive: {0}")]
    Archive(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Lines handed to a viewer at once, at most.
pub const FOLLOW_BATCH: usize = 1000;
/// Bytes read from the store for one page, at most (past the first line).
pub const PAGE_BYTES: u64 = 4 * 1024 * 1024;

/// A page of a step's log.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LogPage {
    pub lines: Vec<StoredLine>,
    /// Lines stored so far.
    pub total: u64,
    /// The step has ended: `total` is final.
    pub complete: bool,
}

struct OpenStep {
    writer: Mutex<StepWriter>,
    live: Arc<Live>,
}

struct Inner {
    store: LogStore,
    hub: Hub,
    open: Mutex<HashMap<StepKey, Arc<OpenStep>>>,
    maskers: Mutex<HashMap<(JobId, u32), Arc<Masker>>>,
    archive: Option<Arc<dyn Archive>>,
    /// This process writes the store: it may repair steps after a crash and apply retention.
    /// Off on a replica that does not run the engine (see [`Logs::set_writer`]).
    writer: std::sync::atomic::AtomicBool,
    /// What viewers behind the ring read from the store, shared between them.
    pages: pages::SharedPages,
}

/// The log service: masking, storing, fan-out and reading. Cheap to clone.
#[derive(Clone)]
pub struct Logs(Arc<Inner>);

impl std::fmt::Debug for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logs")
            .field("root", &self.0.store.root())
            .field("archive", &self.0.archive.is_some())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Logs {
    /// Logs kept under `root` (created when missing).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(Self(Arc::new(Inner {
            store: LogStore::new(root),
            hub: Hub::default(),
            open: Mutex::default(),
            maskers: Mutex::default(),
            archive: None,
            writer: std::sync::atomic::AtomicBool::new(true),
            pages: pages::SharedPages::default(),
        })))
    }

    /// Copies every finished step's log to `archive`, and reads from it what retention has
    /// deleted locally. Call before sharing.
    pub fn with_archive(self, archive: Arc<dyn Archive>) -> Self {
        let mut inner = Arc::try_unwrap(self.0)
            .unwrap_or_else(|_| panic!("with_archive must be called before Logs is shared"));
        inner.archive = Some(archive);
        Self(Arc::new(inner))
    }

    pub fn store(&self) -> &LogStore {
        &self.0.store
    }

    /// The secrets a job attempt can see: from now on its lines are masked with them.
    pub fn set_secrets<'a>(
        &self,
        job: JobId,
        attempt: u32,
        secrets: impl IntoIterator<Item = &'a Secret>,
    ) {
        let masker = Masker::new(secrets);
        let mut maskers = lock(&self.0.maskers);
        if masker.is_empty() {
            maskers.remove(&(job, attempt));
        } else {
            maskers.insert((job, attempt), Arc::new(masker));
        }
    }

    /// The masker of a job attempt (empty when it has no secrets).
    pub fn masker(&self, job: JobId, attempt: u32) -> Arc<Masker> {
        lock(&self.0.maskers)
            .get(&(job, attempt))
            .cloned()
            .unwrap_or_default()
    }

    fn open_step(&self, key: StepKey) -> io::Result<Arc<OpenStep>> {
        let mut open = lock(&self.0.open);
        if let Some(step) = open.get(&key) {
            return Ok(step.clone());
        }
        let writer = self.0.store.open_writer(key)?;
        let live = Live::new(writer.lines());
        let step = Arc::new(OpenStep {
            writer: Mutex::new(writer),
            live: live.clone(),
        });
        open.insert(key, step.clone());
        self.0.hub.insert(key, live);
        Ok(step)
    }

    /// Masks, stores and publishes one line of a job attempt. The line's own number is
    /// ignored: the store numbers lines (a long line becomes several). Returns what was
    /// stored, once it is on disk.
    pub fn append(&self, job: JobId, attempt: u32, line: &LogLine) -> Result<Vec<StoredLine>> {
        let key = StepKey::new(job, attempt, line.step);
        self.append_text(key, line.at, line.stream, &line.text)
    }

    /// [`Logs::append`] for text that is not a [`LogLine`] yet.
    pub fn append_text(
        &self,
        key: StepKey,
        at: gantry_core::Timestamp,
        stream: LineStream,
        text: &str,
    ) -> Result<Vec<StoredLine>> {
        let masker = self.masker(key.job, key.attempt);
        let text = masker.mask(text);
        let step = self.open_step(key)?;
        // Held while publishing, so that lines reach viewers in the order they were stored.
        let mut writer = lock(&step.writer);
        let stored = writer.append(at, stream, &text)?;
        step.live
            .publish(stored.iter().cloned().map(SharedLine::new).collect());
        Ok(stored)
    }

    /// The step has ended: its log is made durable, marked complete, archived (in the
    /// background) and its viewers are told.
    pub fn close_step(&self, key: StepKey) -> Result<()> {
        let step = lock(&self.0.open).remove(&key);
        let result = match &step {
            Some(step) => lock(&step.writer).sync(),
            None => Ok(()),
        };
        let files = self.0.store.files(key);
        let marked = if files.log.exists() || step.is_some() {
            std::fs::File::create(&files.end).map(drop)
        } else {
            Ok(())
        };
        if let Some(live) = self.0.hub.remove(key) {
            live.close();
        }
        result?;
        marked?;
        if let Some(archive) = self.0.archive.clone()
            && files.log.exists()
        {
            tokio::spawn(async move { archive_step(&*archive, key, &files).await });
        }
        Ok(())
    }

    /// The attempt has ended: every step still open is closed and its masker is dropped.
    pub fn close_attempt(&self, job: JobId, attempt: u32) -> Result<()> {
        let keys: Vec<StepKey> = lock(&self.0.open)
            .keys()
            .filter(|k| k.job == job && k.attempt == attempt)
            .copied()
            .collect();
        let mut result = Ok(());
        for key in keys {
            if let Err(e) = self.close_step(key) {
                result = Err(e);
            }
        }
        lock(&self.0.maskers).remove(&(job, attempt));
        result
    }

    /// Is the step being written by this process?
    pub fn is_live(&self, key: StepKey) -> bool {
        self.0.hub.get(key).is_some()
    }

    /// Where a step's log stands.
    pub async fn progress(&self, key: StepKey) -> Result<Progress> {
        if let Some(live) = self.0.hub.get(key) {
            return Ok(*live.progress.borrow());
        }
        let this = self.clone();
        let local = tokio::task::spawn_blocking(move || -> io::Result<Option<Progress>> {
            if !this.0.store.exists(key) {
                return Ok(None);
            }
            let lines = this.repair_idle(key)?;
            Ok(Some(Progress {
                lines,
                closed: this.0.store.is_complete(key),
            }))
        })
        .await
        .map_err(|e| Error::Io(io::Error::other(e)))??;
        if let Some(p) = local {
            return Ok(p);
        }
        if let Some(archive) = &self.0.archive
            && let Some(lines) = archive::archived_lines(&**archive, key).await?
        {
            return Ok(Progress {
                lines,
                closed: true,
            });
        }
        Ok(Progress::default())
    }

    /// Whether this process writes the store (the default). With several replicas on one
    /// shared data directory, only the one that runs the engine writes step logs: the others
    /// read them, and must neither repair a step (the leader may be in the middle of writing
    /// one of its records) nor apply retention. Set off on a replica that does not lead, on
    /// again when it starts leading.
    pub fn set_writer(&self, writer: bool) {
        self.0
            .writer
            .store(writer, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_writer(&self) -> bool {
        self.0.writer.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Repairs a step that no writer holds (a crash may have left its index short); returns
    /// its line count. A reader only counts the complete lines.
    fn repair_idle(&self, key: StepKey) -> io::Result<u64> {
        let open = lock(&self.0.open);
        if let Some(step) = open.get(&key) {
            return Ok(lock(&step.writer).lines());
        }
        if !self.is_writer() {
            return self.0.store.count_lines(key);
        }
        self.0.store.repair(key)
    }

    /// Lines `from..` of a step, at most `limit`.
    pub async fn read(&self, key: StepKey, from: u64, limit: usize) -> Result<LogPage> {
        let progress = self.progress(key).await?;
        let lines = self.read_lines(key, from, limit).await?;
        Ok(LogPage {
            lines,
            total: progress.lines,
            complete: progress.closed,
        })
    }

    /// Lines `from..` of a step, at most `limit` (and [`PAGE_BYTES`]), from the local store or
    /// the archive.
    async fn read_lines(&self, key: StepKey, from: u64, limit: usize) -> Result<Vec<StoredLine>> {
        if self.0.store.exists(key) || self.0.archive.is_none() {
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.0.store.read(key, from, limit, PAGE_BYTES))
                .await
                .map_err(|e| Error::Io(io::Error::other(e)))?
                .map_err(Error::Io)
        } else {
            let archive = self.0.archive.clone().expect("checked above");
            archive::read_archived(&*archive, key, from, limit, PAGE_BYTES).await
        }
    }

    /// Lines matching `needle` (ASCII case-insensitive) from line `from`, at most `limit`.
    pub async fn search(
        &self,
        key: StepKey,
        needle: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredLine>> {
        let this = self.clone();
        let needle = needle.to_owned();
        Ok(
            tokio::task::spawn_blocking(move || this.0.store.search(key, &needle, from, limit))
                .await
                .map_err(|e| Error::Io(io::Error::other(e)))??,
        )
    }

    /// The log as plain text, chunk by chunk, from the local store or the archive. `None`
    /// when there is no such log.
    pub async fn raw(
        &self,
        key: StepKey,
    ) -> Result<Option<impl Stream<Item = io::Result<Vec<u8>>> + Send + 'static + use<>>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Vec<u8>>>(4);
        if self.0.store.exists(key) {
            let this = self.clone();
            tokio::task::spawn_blocking(move || {
                let chunks = match this.0.store.raw(key, 256 * 1024) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                };
                for chunk in chunks {
                    if tx.blocking_send(chunk).is_err() {
                        return;
                    }
                }
            });
        } else if let Some(archive) = self.0.archive.clone()
            && archive::archived_lines(&*archive, key).await?.is_some()
        {
            tokio::spawn(async move { archive::raw_archived(&*archive, key, tx).await });
        } else {
            return Ok(None);
        }
        Ok(Some(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })))
    }

    /// Lines of a step from `from` on, in batches, as they are stored. Ends when the step
    /// closes; when `until_idle`, also once everything stored is sent and no one is writing
    /// the step (the caller knows it has ended, e.g. from the run's state).
    pub fn follow(
        &self,
        key: StepKey,
        from: u64,
        until_idle: bool,
    ) -> impl Stream<Item = Result<Vec<Arc<SharedLine>>>> + Send + 'static + use<> {
        struct State {
            logs: Logs,
            key: StepKey,
            next: u64,
            until_idle: bool,
            done: bool,
            /// The step's log is complete with this many lines: no need to look again.
            complete: Option<u64>,
        }
        let state = State {
            logs: self.clone(),
            key,
            next: from.max(1),
            until_idle,
            done: false,
            complete: None,
        };
        futures::stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            loop {
                let live = st.logs.0.hub.get(st.key);
                let mut opened = st.logs.0.hub.opened.subscribe();
                let (progress, rx) = match &live {
                    Some(live) => {
                        let mut rx = live.progress.subscribe();
                        let p = *rx.borrow_and_update();
                        (p, Some(rx))
                    }
                    None => match st.complete {
                        Some(lines) => (
                            Progress {
                                lines,
                                closed: true,
                            },
                            None,
                        ),
                        None => match st.logs.progress(st.key).await {
                            Ok(mut p) => {
                                if p.closed {
                                    st.complete = Some(p.lines);
                                }
                                p.closed |= st.until_idle;
                                (p, None)
                            }
                            Err(e) => {
                                st.done = true;
                                return Some((Err(e), st));
                            }
                        },
                    },
                };
                if st.next <= progress.lines {
                    let ring = live.as_ref().and_then(|l| l.recent(st.next, FOLLOW_BATCH));
                    let batch = match ring {
                        Some(batch) => batch,
                        None => match st.logs.0.pages.lines_from(&st.logs, st.key, st.next).await {
                            Ok(lines) => lines,
                            Err(e) => {
                                st.done = true;
                                return Some((Err(e), st));
                            }
                        },
                    };
                    if batch.is_empty() {
                        // The store has fewer lines than announced (deleted underneath): stop
                        // rather than spin.
                        return None;
                    }
                    st.next += batch.len() as u64;
                    return Some((Ok(batch), st));
                }
                if progress.closed {
                    return None;
                }
                match rx {
                    Some(mut rx) => {
                        // An error means the writer is gone: look again.
                        let _ = rx.changed().await;
                    }
                    None => {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), opened.changed()).await;
                    }
                }
            }
        })
    }

    /// Applies retention to every attempt that is not being written. With an archive, steps
    /// that ended but are not in it yet (an upload failed, or they ended before the archive
    /// was configured) are uploaded first, and an attempt is kept while one of its steps
    /// cannot be: retention never deletes the only copy of a log.
    pub async fn sweep(&self, retention: Retention) -> Result<SweepReport> {
        let mut keep: HashSet<(JobId, u32)> = HashSet::new();
        if let Some(archive) = self.0.archive.clone() {
            let store = self.0.store.clone();
            let pending = tokio::task::spawn_blocking(move || store.unarchived())
                .await
                .map_err(|e| Error::Io(io::Error::other(e)))??;
            for key in pending {
                if !archive_step(&*archive, key, &self.0.store.files(key)).await {
                    keep.insert((key.job, key.attempt));
                }
            }
        }
        let this = self.clone();
        Ok(tokio::task::spawn_blocking(move || {
            keep.extend(lock(&this.0.open).keys().map(|k| (k.job, k.attempt)));
            this.0.store.sweep(&retention, SystemTime::now(), &keep)
        })
        .await
        .map_err(|e| Error::Io(io::Error::other(e)))??)
    }

    /// Sweeps every `every` until `stop` is cancelled.
    pub async fn retain(
        &self,
        retention: Retention,
        every: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            // Only the writer applies retention (see `set_writer`).
            if self.is_writer() {
                match self.sweep(retention.clone()).await {
                    Ok(r) if r.attempts_deleted > 0 => tracing::info!(
                        attempts = r.attempts_deleted,
                        bytes = r.bytes_deleted,
                        kept = r.bytes_kept,
                        "deleted old step logs"
                    ),
                    Ok(_) => {}
                    Err(err) => tracing::warn!(%err, "log retention sweep failed"),
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// Copies a finished step's log to the archive and marks it archived; `false` (logged) when it
/// could not be.
async fn archive_step(archive: &dyn Archive, key: StepKey, files: &StepFiles) -> bool {
    let done = match archive::upload(archive, key, files).await {
        Ok(()) => std::fs::File::create(&files.archived)
            .map(drop)
            .map_err(Error::Io),
        Err(err) => Err(err),
    };
    match done {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(job = %key.job, step = key.step, %err, "cannot archive a step log; it is kept until it can be");
            false
        }
    }
}
