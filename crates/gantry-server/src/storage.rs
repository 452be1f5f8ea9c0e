//! Whether Gantry can write what it must keep: the data directory (the SQLite database and the
//! step logs live there on embedded defaults) and the database.
//!
//! Two sources: a probe that writes, syncs and removes a small file in the data directory (at
//! most once a second, whoever asks), and the failures the engine and the log store report as
//! they happen. A reported failure counts until a probe succeeds again, so space that returns is
//! noticed at once and no restart is needed. `/readyz` answers not ready while it fails, and the
//! webhook route refuses deliveries with 503 rather than accept what it may not be able to run.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How long a probe's answer (or a reported failure) stands before the next probe.
const FRESH: Duration = Duration::from_secs(1);

/// The probe writes this much: enough to need a free block, little enough to be cheap.
const PROBE_BYTES: usize = 4096;

/// The data directory's write health. Cheap to clone: clones share one state.
#[derive(Clone, Debug, Default)]
pub struct Storage(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    dir: OnceLock<PathBuf>,
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Storage {
    /// Probes `dir` from now on (the data directory). Without one only reported failures count.
    pub fn watch(&self, dir: impl Into<PathBuf>) {
        let _ = self.0.dir.set(dir.into());
    }

    /// A write failed elsewhere (the database, a step log): not writable until a probe says
    /// otherwise, at the earliest in a second.
    pub fn write_failed(&self, reason: impl Into<String>) {
        *self.0.last.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), Err(reason.into())));
    }

    /// `Ok` when the data directory can be written; else why not.
    pub async fn check(&self) -> Result<(), String> {
        if let Some((at, result)) = &*self.0.last.lock().unwrap_or_else(PoisonError::into_inner)
            && at.elapsed() < FRESH
        {
            return result.clone();
        }
        let result = match self.0.dir.get().cloned() {
            None => Ok(()),
            Some(dir) => tokio::task::spawn_blocking(move || probe(&dir))
                .await
                .unwrap_or_else(|e| Err(format!("the probe of the data directory failed: {e}"))),
        };
        *self.0.last.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), result.clone()));
        result
    }
}

fn probe(dir: &std::path::Path) -> Result<(), String> {
    let path = dir.join(".gantry-write-probe");
    let written = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&[0u8; PROBE_BYTES])?;
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    written.map_err(|e| {
        format!(
            "the data directory {} cannot be written: {e}",
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reported_failure_stands_until_a_probe_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::default();
        storage.watch(dir.path());
        assert_eq!(storage.check().await, Ok(()));
        storage.write_failed("database or disk is full");
        assert_eq!(
            storage.check().await,
            Err("database or disk is full".to_owned())
        );
        tokio::time::sleep(FRESH + Duration::from_millis(50)).await;
        assert_eq!(
            storage.check().await,
            Ok(()),
            "space came back: ready again"
        );
        assert!(
            !dir.path().join(".gantry-write-probe").exists(),
            "the probe cleans up"
        );
    }

    #[tokio::test]
    async fn a_directory_that_is_gone_is_not_writable_and_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::default();
        storage.watch(dir.path().join("missing"));
        let err = storage.check().await.unwrap_err();
        assert!(
            err.contains("missing") && err.contains("cannot be written"),
            "{err}"
        );
    }
}
