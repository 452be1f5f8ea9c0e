//! Archive of finished step logs: a copy of each step's `.log` and `.idx` under
//! `<job>/<attempt>/<step>.{log,idx}`, read back by range when retention has deleted the
//! local files. [`DirArchive`] keeps it in a directory (another disk, a mounted share);
//! `ObjectStoreArchive` (feature `object-store`, S3 with feature `s3`) in object storage.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::store::{StepFiles, StoredLine};
use crate::{Result, StepKey};

/// Where finished step logs are copied.
#[async_trait]
pub trait Archive: Send + Sync + 'static {
    /// Stores the file at `path` as `name`, streaming it (a log can be larger than memory).
    async fn put_file(&self, name: &str, path: &Path) -> Result<()>;
    /// The size of `name`, `None` when absent.
    async fn size(&self, name: &str) -> Result<Option<u64>>;
    async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>>;
}

fn names(key: StepKey) -> (String, String) {
    let base = format!("{}/{}/{}", key.job, key.attempt, key.step);
    (format!("{base}.log"), format!("{base}.idx"))
}

pub(crate) async fn upload(archive: &dyn Archive, key: StepKey, files: &StepFiles) -> Result<()> {
    let (log, index) = names(key);
    archive.put_file(&log, &files.log).await?;
    // The index last: its presence means the log is there too.
    archive.put_file(&index, &files.index).await
}

pub(crate) async fn archived_lines(archive: &dyn Archive, key: StepKey) -> Result<Option<u64>> {
    let (_, index) = names(key);
    Ok(archive.size(&index).await?.map(|bytes| bytes / 8))
}

pub(crate) async fn read_archived(
    archive: &dyn Archive,
    key: StepKey,
    from: u64,
    limit: usize,
    max_bytes: u64,
) -> Result<Vec<StoredLine>> {
    let (log, index) = names(key);
    let (Some(index_len), Some(log_len)) = (archive.size(&index).await?, archive.size(&log).await?)
    else {
        return Ok(Vec::new());
    };
    let lines = index_len / 8;
    let from = from.max(1);
    if from > lines || limit == 0 {
        return Ok(Vec::new());
    }
    let count = (limit as u64).min(lines - from + 1);
    let end_entry = (from - 1 + count + 1).min(lines);
    let raw = archive
        .get_range(&index, (from - 1) * 8..end_entry * 8)
        .await?;
    let mut offsets: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    if offsets.len() as u64 == count {
        offsets.push(log_len);
    }
    let start = offsets[0];
    let mut end_i = offsets.len() - 1;
    while end_i > 1 && offsets[end_i] - start > max_bytes {
        end_i -= 1;
    }
    let data = archive.get_range(&log, start..offsets[end_i]).await?;
    Ok((0..end_i)
        .map(|i| {
            let a = (offsets[i] - start) as usize;
            let b = (offsets[i + 1] - start) as usize;
            let record = &data[a..b];
            crate::store::parse_record(
                from + i as u64,
                record.strip_suffix(b"\n").unwrap_or(record),
            )
        })
        .collect())
}

pub(crate) async fn raw_archived(
    archive: &dyn Archive,
    key: StepKey,
    tx: tokio::sync::mpsc::Sender<io::Result<Vec<u8>>>,
) {
    const CHUNK: u64 = 1024 * 1024;
    let (log, _) = names(key);
    let len = match archive.size(&log).await {
        Ok(Some(len)) => len,
        Ok(None) => return,
        Err(e) => {
            let _ = tx.send(Err(io::Error::other(e))).await;
            return;
        }
    };
    let mut carry = Vec::new();
    let mut at = 0;
    while at < len {
        let end = (at + CHUNK).min(len);
        let chunk = match archive.get_range(&log, at..end).await {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(io::Error::other(e))).await;
                return;
            }
        };
        at = end;
        carry.extend_from_slice(&chunk);
        let Some(last_nl) = carry.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        let mut out = Vec::with_capacity(last_nl);
        for record in carry[..last_nl].split(|b| *b == b'\n') {
            out.extend_from_slice(crate::store::record_text(record));
            out.push(b'\n');
        }
        carry.drain(..=last_nl);
        if tx.send(Ok(out)).await.is_err() {
            return;
        }
    }
}

/// An archive in a local directory.
#[derive(Clone, Debug)]
pub struct DirArchive {
    root: PathBuf,
}

impl DirArchive {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

#[async_trait]
impl Archive for DirArchive {
    async fn put_file(&self, name: &str, path: &Path) -> Result<()> {
        let dest = self.root.join(name);
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let partial = dest.with_extension("partial");
        tokio::fs::copy(path, &partial).await?;
        tokio::fs::rename(&partial, &dest).await?;
        Ok(())
    }

    async fn size(&self, name: &str) -> Result<Option<u64>> {
        match tokio::fs::metadata(self.root.join(name)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut file = tokio::fs::File::open(self.root.join(name)).await?;
        file.seek(io::SeekFrom::Start(range.start)).await?;
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        file.read_exact(&mut buf).await?;
        Ok(buf)
    }
}

#[cfg(feature = "object-store")]
pub use object::ObjectStoreArchive;

#[cfg(feature = "object-store")]
mod object {
    use std::path::Path;
    use std::sync::Arc;

    use async_trait::async_trait;
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
    use tokio::io::AsyncReadExt;

    use super::{Archive, Range, Result};
    use crate::Error;

    /// An archive in any `object_store` backend (S3 and compatible with the `s3` feature; the
    /// in-memory one in tests), under a prefix.
    #[derive(Clone, Debug)]
    pub struct ObjectStoreArchive {
        store: Arc<dyn ObjectStore>,
        prefix: String,
    }

    impl ObjectStoreArchive {
        pub fn new(store: Arc<dyn ObjectStore>, prefix: impl Into<String>) -> Self {
            Self {
                store,
                prefix: prefix.into(),
            }
        }

        /// An S3 (or S3-compatible) bucket configured from the standard `AWS_*` environment
        /// variables (`AWS_ENDPOINT` for MinIO and friends).
        #[cfg(feature = "s3")]
        pub fn s3_from_env(bucket: &str, prefix: impl Into<String>) -> Result<Self> {
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| Error::Archive(e.to_string()))?;
            Ok(Self::new(Arc::new(store), prefix))
        }

        fn path(&self, name: &str) -> ObjectPath {
            if self.prefix.is_empty() {
                ObjectPath::from(name)
            } else {
                ObjectPath::from(format!("{}/{name}", self.prefix.trim_end_matches('/')))
            }
        }
    }

    fn err(e: object_store::Error) -> Error {
        Error::Archive(e.to_string())
    }

    #[async_trait]
    impl Archive for ObjectStoreArchive {
        async fn put_file(&self, name: &str, path: &Path) -> Result<()> {
            let upload = self
                .store
                .put_multipart(&self.path(name))
                .await
                .map_err(err)?;
            let mut writer = WriteMultipart::new(upload);
            let mut file = tokio::fs::File::open(path).await?;
            let mut buf = vec![0u8; 1024 * 1024];
            loop {
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                writer.wait_for_capacity(4).await.map_err(err)?;
                writer.write(&buf[..n]);
            }
            writer.finish().await.map_err(err)?;
            Ok(())
        }

        async fn size(&self, name: &str) -> Result<Option<u64>> {
            match self.store.head(&self.path(name)).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(err(e)),
            }
        }

        async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>> {
            if range.is_empty() {
                return Ok(Vec::new());
            }
            let bytes = self
                .store
                .get_range(&self.path(name), range)
                .await
                .map_err(err)?;
            Ok(bytes.to_vec())
        }
    }
}
