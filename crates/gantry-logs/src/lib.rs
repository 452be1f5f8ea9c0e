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
//!
//! A line that cannot be stored (the data directory is full or failing) is counted, not kept:
//! the first loss of a step is logged, and when the step ends its log gets a notice line saying
//! how many lines are missing, and its end marker the count ([`Progress::lost_lines`]).

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
    /// Lines that could not be stored: above 0 the log is incomplete (see
    /// [`Progress::lost_lines`]).
    pub lost_lines: u64,
}

/// Lines of a step that could not be stored.
#[derive(Clone, Debug)]
struct Lost {
    lines: u64,
    /// Why the first of them could not be.
    first_error: String,
    /// The notice line is in the log (a later close must not append it again).
    noticed: bool,
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
    /// Steps that lost lines, until their end marker counts them.
    lost: Mutex<HashMap<StepKey, Lost>>,
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
            lost: Mutex::default(),
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

    /// [`Logs::append`] for text that is not a [`LogLine`] yet. A line that cannot be stored
    /// is counted as lost (see [`Progress::lost_lines`]), and the error returned.
    pub fn append_text(
        &self,
        key: StepKey,
        at: gantry_core::Timestamp,
        stream: LineStream,
        text: &str,
    ) -> Result<Vec<StoredLine>> {
        let masker = self.masker(key.job, key.attempt);
        let text = masker.mask(text);
        let step = match self.open_step(key) {
            Ok(step) => step,
            Err(err) => {
                self.count_lost(key, &err);
                return Err(err.into());
            }
        };
        // Held while publishing, so that lines reach viewers in the order they were stored.
        let mut writer = lock(&step.writer);
        let stored = match writer.append(at, stream, &text) {
            Ok(stored) => stored,
            Err(err) => {
                self.count_lost(key, &err);
                return Err(err.into());
            }
        };
        step.live
            .publish(stored.iter().cloned().map(SharedLine::new).collect());
        Ok(stored)
    }

    /// A line of a step could not be stored: counted, and logged when it is the step's first.
    fn count_lost(&self, key: StepKey, err: &io::Error) {
        let first = {
            let mut lost = lock(&self.0.lost);
            match lost.get_mut(&key) {
                Some(lost) => {
                    lost.lines += 1;
                    false
                }
                None => {
                    lost.insert(
                        key,
                        Lost {
                            lines: 1,
                            first_error: err.to_string(),
                            noticed: false,
                        },
                    );
                    true
                }
            }
        };
        if first {
            tracing::warn!(
                job = %key.job,
                attempt = key.attempt,
                step = key.step,
                %err,
                "cannot store a line of a step's log; further lines lost in this step are counted, not logged"
            );
        }
    }

    /// Lines of a step lost so far and not counted by its end marker yet.
    fn lost_so_far(&self, key: StepKey) -> u64 {
        lock(&self.0.lost).get(&key).map_or(0, |l| l.lines)
    }

    /// Appends to a step's log, as its last line, how many lines of it are missing.
    fn append_notice(&self, key: StepKey, step: Option<&OpenStep>, lost: &Lost) -> io::Result<()> {
        let text = format!(
            "{} {} of this step's output could not be stored ({}): this log is incomplete",
            lost.lines,
            if lost.lines == 1 { "line" } else { "lines" },
            lost.first_error
        );
        let at = gantry_core::now();
        match step {
            Some(step) => {
                let mut writer = lock(&step.writer);
                let stored = writer.append(at, LineStream::System, &text)?;
                step.live
                    .publish(stored.into_iter().map(SharedLine::new).collect());
            }
            // The step never opened (its files could not be created): maybe they can now.
            None => {
                self.0
                    .store
                    .open_writer(key)?
                    .append(at, LineStream::System, &text)?;
            }
        }
        Ok(())
    }

    /// The step has ended: its log is made durable, marked ended, archived (in the
    /// background) and its viewers are told. When lines of it could not be stored, a notice
    /// saying how many is appended as its last line (when it can be) and the end marker counts
    /// them.
    pub fn close_step(&self, key: StepKey) -> Result<()> {
        let step = lock(&self.0.open).remove(&key);
        let lost = lock(&self.0.lost).get(&key).cloned();
        if let Some(lost) = &lost
            && !lost.noticed
        {
            match self.append_notice(key, step.as_deref(), lost) {
                Ok(()) => {
                    if let Some(entry) = lock(&self.0.lost).get_mut(&key) {
                        entry.noticed = true;
                    }
                }
                Err(err) => tracing::warn!(
                    job = %key.job,
                    attempt = key.attempt,
                    step = key.step,
                    %err,
                    "cannot append the notice of lost lines to a step's log yet; closing the attempt again (once the store can be written) retries it"
                ),
            }
        }
        let result = match &step {
            Some(step) => lock(&step.writer).sync(),
            None => Ok(()),
        };
        let files = self.0.store.files(key);
        let lost_lines = lost.as_ref().map_or(0, |l| l.lines);
        let marked = if files.log.exists() || step.is_some() {
            self.0.store.mark_ended(key, lost_lines).map(|()| true)
        } else {
            Ok(false)
        };
        if let Some(lost) = &lost {
            tracing::warn!(
                job = %key.job,
                attempt = key.attempt,
                step = key.step,
                lost = lost.lines,
                first_error = %lost.first_error,
                "a step ended with lines of its log lost: the log is incomplete"
            );
        }
        if let Some(live) = self.0.hub.remove(key) {
            live.close();
        }
        // After the hub: a reader that finds the step live still finds the count here. Kept
        // when the marker could not count them, so that readers of this process still see it.
        if lost.is_some() && matches!(marked, Ok(true)) {
            lock(&self.0.lost).remove(&key);
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

    /// The attempt has ended: every step still open is closed and its masker is dropped. Called
    /// again later, it finishes what a full disk left undone (a step's notice of lost lines,
    /// its end marker).
    pub fn close_attempt(&self, job: JobId, attempt: u32) -> Result<()> {
        // Open steps, and steps whose notice or end marker a full disk kept out before.
        let mut keys: Vec<StepKey> = lock(&self.0.open)
            .keys()
            .filter(|k| k.job == job && k.attempt == attempt)
            .copied()
            .collect();
        keys.extend(
            lock(&self.0.lost)
                .keys()
                .filter(|k| k.job == job && k.attempt == attempt && !keys.contains(k))
                .copied()
                .collect::<Vec<_>>(),
        );
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
        // Before looking at the hub: `close_step` forgets the count only once the step has left
        // the hub with its end marker counting the lines.
        let lost = self.lost_so_far(key);
        let mut progress = self.stored_progress(key).await?;
        progress.lost_lines = progress.lost_lines.max(lost);
        Ok(progress)
    }

    /// [`Logs::progress`] without the lines lost of a live step.
    async fn stored_progress(&self, key: StepKey) -> Result<Progress> {
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
                lost_lines: this.0.store.lost_lines(key)?,
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
            // The end marker is not archived: 0 for a step whose local copy retention deleted
            // (its notice line, archived with the log, still says what was lost).
            return Ok(Progress {
                lines,
                closed: true,
                lost_lines: 0,
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
            lost_lines: progress.lost_lines,
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
                                lost_lines: 0,
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicU64, Ordering};

    use futures::StreamExt;

    use super::*;
    use crate::store::tmpfs::{Tmpfs, is_enospc};

    /// The WARN events of this thread, by message.
    #[derive(Clone, Default)]
    struct Warnings(Arc<Mutex<Vec<String>>>);

    impl Warnings {
        fn capture(&self) -> tracing::subscriber::DefaultGuard {
            // tracing caches each callsite's interest for the whole process, decided by the
            // first thread to reach it: a test running in parallel without a subscriber would
            // cache "never", and this capture then misses the warning (seen in CI: 0 of 1).
            // A process-wide subscriber interested in everything keeps every interest "always";
            // what it receives is dropped with it at exit.
            static GLOBAL: std::sync::Once = std::sync::Once::new();
            GLOBAL.call_once(|| {
                let _ = tracing::subscriber::set_global_default(Warnings::default());
            });
            tracing::subscriber::set_default(self.clone())
        }

        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *lock(&self.0))
        }
    }

    impl tracing::Subscriber for Warnings {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            static NEXT: AtomicU64 = AtomicU64::new(1);
            tracing::span::Id::from_u64(NEXT.fetch_add(1, Ordering::Relaxed))
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            struct Message(String);
            impl tracing::field::Visit for Message {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    if f.name() == "message" {
                        self.0 = format!("{v:?}");
                    }
                }
            }
            if *event.metadata().level() == tracing::Level::WARN {
                let mut message = Message(String::new());
                event.record(&mut message);
                lock(&self.0).push(message.0);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    fn append(logs: &Logs, key: StepKey, text: &str) -> Result<Vec<StoredLine>> {
        logs.append_text(key, gantry_core::now(), LineStream::Stdout, text)
    }

    fn notice(lost: u64) -> String {
        format!(
            "{lost} lines of this step's output could not be stored (No space left on device \
             (os error 28)): this log is incomplete"
        )
    }

    #[tokio::test]
    async fn a_step_that_lost_lines_ends_with_a_notice_and_its_end_marker_counts_them() {
        let fs = Tmpfs::mount("512k");
        let logs = Logs::open(fs.path().join("logs")).unwrap();
        let key = StepKey::new(JobId::new(), 1, 0);
        let warnings = Warnings::default();
        let _capture = warnings.capture();
        let mut stored = Vec::new();
        for i in 0..10 {
            stored.push(format!("before {i}"));
            append(&logs, key, &stored[i]).unwrap();
        }
        let filler = fs.fill("filler");
        let mut lost = 0;
        for i in 0..300 {
            let text = format!("full {i} {}", "x".repeat(1000));
            match append(&logs, key, &text) {
                Ok(_) => stored.push(text),
                Err(Error::Io(e)) if is_enospc(&e) => lost += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(lost > 250, "only {lost} lines lost: the disk was not full");
        // One warning for the step, not one a line.
        let warned = warnings.take();
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(
            warned[0].contains("further lines lost in this step are counted, not logged"),
            "{warned:?}"
        );
        // While the step runs, the count so far.
        let progress = logs.progress(key).await.unwrap();
        assert_eq!(
            (progress.lines, progress.closed),
            (stored.len() as u64, false)
        );
        assert_eq!(progress.lost_lines, lost);
        assert_eq!(logs.read(key, 1, 1).await.unwrap().lost_lines, lost);

        fs::remove_file(filler).unwrap();
        let mut follower = Box::pin(logs.follow(key, 1, false));
        logs.close_step(key).unwrap();
        let warned = warnings.take();
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(warned[0].contains("lines of its log lost"), "{warned:?}");

        let page = logs.read(key, 1, 5000).await.unwrap();
        assert!(page.complete);
        assert_eq!(page.lost_lines, lost);
        assert_eq!(page.total, stored.len() as u64 + 1);
        let (last, before) = page.lines.split_last().unwrap();
        assert_eq!(
            before.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            stored
        );
        assert_eq!(last.number, page.total);
        assert_eq!(last.stream, LineStream::System);
        assert_eq!(last.text, notice(lost));
        let end = fs::read_to_string(logs.store().files(key).end).unwrap();
        assert_eq!(end, format!("lost {lost}\n"));
        assert!(lock(&logs.0.lost).is_empty(), "the count is not forgotten");
        // Viewers following the step got the notice too.
        let mut followed = Vec::new();
        while let Some(batch) = follower.next().await {
            followed.extend(batch.unwrap().iter().map(|l| l.line.text.clone()));
        }
        assert_eq!(followed.last(), Some(&notice(lost)));
        assert_eq!(followed.len() as u64, page.total);

        // Another process (a restart) reads the count from the marker.
        let reopened = Logs::open(fs.path().join("logs")).unwrap();
        let progress = reopened.progress(key).await.unwrap();
        assert_eq!((progress.lines, progress.closed), (page.total, true));
        assert_eq!(progress.lost_lines, lost);
    }

    #[tokio::test]
    async fn a_step_without_losses_says_zero_and_its_end_marker_stays_empty() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::open(dir.path().join("logs")).unwrap();
        let key = StepKey::new(JobId::new(), 1, 0);
        let warnings = Warnings::default();
        let _capture = warnings.capture();
        for i in 0..5 {
            append(&logs, key, &format!("line {i}")).unwrap();
        }
        assert_eq!(logs.progress(key).await.unwrap().lost_lines, 0);
        logs.close_step(key).unwrap();
        let page = logs.read(key, 1, 100).await.unwrap();
        assert_eq!((page.total, page.complete, page.lost_lines), (5, true, 0));
        assert!(page.lines.iter().all(|l| l.stream == LineStream::Stdout));
        assert_eq!(fs::read(logs.store().files(key).end).unwrap(), b"");
        assert_eq!(warnings.take(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn when_the_notice_cannot_be_stored_the_end_marker_still_counts_the_lost_lines() {
        let fs = Tmpfs::mount("512k");
        let logs = Logs::open(fs.path().join("logs")).unwrap();
        let key = StepKey::new(JobId::new(), 1, 0);
        append(&logs, key, "").unwrap();
        // A full page of index entries, and a log 50 bytes short of a page boundary (a record
        // is 36 bytes and its text): any line then needs a new index page, and the notice a new
        // log page as well.
        let page = fs::metadata(logs.store().files(key).index)
            .unwrap()
            .blksize();
        for _ in 1..page / 8 - 1 {
            append(&logs, key, "").unwrap();
        }
        append(&logs, key, &"y".repeat(page as usize / 2 - 50)).unwrap();
        let files = logs.store().files(key);
        assert_eq!(fs::metadata(&files.index).unwrap().len(), page);
        assert_eq!(fs::metadata(&files.log).unwrap().len(), 5 * page - 50);

        let filler = fs.fill("filler");
        for _ in 0..3 {
            let err = append(&logs, key, "lost").unwrap_err();
            assert!(matches!(&err, Error::Io(e) if is_enospc(e)), "{err}");
        }
        // One page free: the notice's record takes it, its index entry finds none, and the record
        // is taken back; the marker then gets the page.
        let len = fs::metadata(&filler).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .unwrap()
            .set_len(len - page)
            .unwrap();
        let warnings = Warnings::default();
        let _capture = warnings.capture();
        logs.close_step(key).unwrap();
        let warned = warnings.take();
        assert!(
            warned
                .iter()
                .any(|w| w.contains("cannot append the notice")),
            "{warned:?}"
        );
        assert_eq!(fs::read_to_string(&files.end).unwrap(), "lost 3\n");
        let read = logs.read(key, page / 8 - 1, 10).await.unwrap();
        assert_eq!(
            (read.total, read.complete, read.lost_lines),
            (page / 8, true, 3)
        );
        assert_eq!(read.lines.len(), 2);
        assert_eq!(
            read.lines[1].stream,
            LineStream::Stdout,
            "a notice was stored"
        );
        assert_eq!(logs.store().repair(key).unwrap(), page / 8);
    }

    #[tokio::test]
    async fn a_full_disk_at_the_end_leaves_no_marker_and_the_count_in_memory() {
        let fs = Tmpfs::mount("512k");
        let logs = Logs::open(fs.path().join("logs")).unwrap();
        let key = StepKey::new(JobId::new(), 1, 0);
        append(&logs, key, "kept").unwrap();
        let _filler = fs.fill("filler");
        let mut lost = 0;
        for _ in 0..10 {
            if append(&logs, key, &"x".repeat(3000)).is_err() {
                lost += 1;
            }
        }
        assert!(lost >= 8, "only {lost} lines lost: the disk was not full");
        let err = logs.close_step(key).unwrap_err();
        assert!(matches!(&err, Error::Io(e) if is_enospc(e)), "{err}");
        // Not an empty marker, which would say nothing was lost.
        assert!(!logs.store().files(key).end.exists());
        let progress = logs.progress(key).await.unwrap();
        assert_eq!((progress.closed, progress.lost_lines), (false, lost));
    }
}
