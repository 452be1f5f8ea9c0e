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

/// The index is stored last, so a log missing beside its index was removed from the archive.
fn missing_log(log: &str) -> crate::Error {
    crate::Error::Archive(format!(
        "{log}: no such object in the archive, though its index is there"
    ))
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
    let Some(index_len) = archive.size(&index).await? else {
        return Ok(Vec::new());
    };
    let log_len = archive.size(&log).await?.ok_or_else(|| missing_log(&log))?;
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
        Ok(None) => {
            let _ = tx.send(Err(io::Error::other(missing_log(&log)))).await;
            return;
        }
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
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
    use tokio::io::AsyncReadExt;

    use super::{Archive, Range, Result};
    use crate::Error;

    /// Files up to this size are stored with one request; larger ones in parts, streamed.
    const SINGLE_PUT_BYTES: u64 = 8 * 1024 * 1024;

    /// An archive in any `object_store` backend (S3 and compatible with the `s3` feature; the
    /// in-memory one in tests), under a prefix.
    #[derive(Clone, Debug)]
    pub struct ObjectStoreArchive {
        store: Arc<dyn ObjectStore>,
        prefix: String,
        pub(super) location: String,
    }

    impl ObjectStoreArchive {
        pub fn new(store: Arc<dyn ObjectStore>, prefix: impl Into<String>) -> Self {
            let prefix = prefix.into().trim_matches('/').to_owned();
            let location = format!("{store}/{prefix}");
            Self {
                store,
                prefix,
                location,
            }
        }

        /// Where the archive is, for people: no credentials.
        pub fn location(&self) -> &str {
            &self.location
        }

        fn path(&self, name: &str) -> ObjectPath {
            if self.prefix.is_empty() {
                ObjectPath::from(name)
            } else {
                ObjectPath::from(format!("{}/{name}", self.prefix))
            }
        }
    }

    fn err(name: &str, e: object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { .. } => {
                Error::Archive(format!("{name}: no such object in the archive"))
            }
            e => Error::Archive(format!("{name}: {}", with_causes(&e))),
        }
    }

    /// The error and the causes its text leaves out ("error sending request" says nothing of
    /// the refused connection underneath).
    pub(super) fn with_causes(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(cause) = source {
            let more = cause.to_string();
            if !text.contains(&more) {
                text.push_str(": ");
                text.push_str(&more);
            }
            source = cause.source();
        }
        text
    }

    #[async_trait]
    impl Archive for ObjectStoreArchive {
        async fn put_file(&self, name: &str, path: &Path) -> Result<()> {
            let mut file = tokio::fs::File::open(path).await?;
            if file.metadata().await?.len() <= SINGLE_PUT_BYTES {
                let mut data = Vec::new();
                file.read_to_end(&mut data).await?;
                self.store
                    .put(&self.path(name), PutPayload::from(data))
                    .await
                    .map_err(|e| err(name, e))?;
                return Ok(());
            }
            let upload = self
                .store
                .put_multipart(&self.path(name))
                .await
                .map_err(|e| err(name, e))?;
            let mut writer = WriteMultipart::new(upload);
            let mut buf = vec![0u8; 1024 * 1024];
            loop {
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                writer
                    .wait_for_capacity(4)
                    .await
                    .map_err(|e| err(name, e))?;
                writer.write(&buf[..n]);
            }
            writer.finish().await.map_err(|e| err(name, e))?;
            Ok(())
        }

        async fn size(&self, name: &str) -> Result<Option<u64>> {
            match self.store.head(&self.path(name)).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(err(name, e)),
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
                .map_err(|e| err(name, e))?;
            Ok(bytes.to_vec())
        }
    }
}

#[cfg(feature = "s3")]
mod s3 {
    use std::sync::Arc;
    use std::time::Duration;

    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStore, ObjectStoreExt, RetryConfig};

    use super::ObjectStoreArchive;
    use super::object::with_causes;
    use crate::{Error, Result};

    /// Written and read back at start-up; overwritten at each start.
    const CHECK_OBJECT: &str = ".gantry-archive-check";
    const CHECK_TEXT: &[u8] = b"written by gantry serve at start to check the log archive\n";
    /// Never written: reading it must say "absent", as reads of logs never archived do.
    const ABSENT_OBJECT: &str = ".gantry-archive-absent";

    impl ObjectStoreArchive {
        /// A bucket of S3 or of an S3-compatible server, from `s3://BUCKET[/PREFIX]`, checked
        /// once: a marker object is written to the prefix and read back, and an absent one
        /// must read as absent. Credentials, and whatever the arguments leave unset, come from
        /// the standard `AWS_*` environment (then the platform: web identity, ECS, EC2).
        /// `endpoint` is the server's URL (`None`: AWS); plain `http://` needs `allow_http`.
        pub async fn s3(
            url: &str,
            endpoint: Option<&str>,
            region: Option<&str>,
            allow_http: bool,
        ) -> Result<Self> {
            let mut builder = AmazonS3Builder::from_env();
            if let Some(endpoint) = endpoint {
                if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
                    return Err(Error::Archive(format!(
                        "the S3 endpoint {endpoint:?} is not an http:// or https:// URL"
                    )));
                }
                builder = builder.with_endpoint(endpoint.trim_end_matches('/'));
            }
            if let Some(region) = region {
                builder = builder.with_region(region);
            }
            if allow_http {
                builder = builder.with_allow_http(true);
            }
            Self::s3_with(builder, url).await
        }

        /// [`ObjectStoreArchive::s3`] with the caller's client settings (credentials not from
        /// the environment, in tests); the bucket comes from `url`.
        pub async fn s3_with(builder: AmazonS3Builder, url: &str) -> Result<Self> {
            let (bucket, prefix) = parse_url(url)?;
            // The rustls in reqwest has no crypto provider of its own here: ring, as in the
            // rest of Gantry. Fails harmlessly when one is installed already.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let builder = builder.with_bucket_name(bucket);
            let mut location = format!("s3://{bucket}");
            if !prefix.is_empty() {
                location.push_str(&format!("/{prefix}"));
            }
            if let Some(endpoint) = builder.get_config_value(&AmazonS3ConfigKey::Endpoint) {
                // Without any user:password@ part.
                let shown = match endpoint.split_once("://") {
                    Some((scheme, rest)) if rest.contains('@') => {
                        format!("{scheme}://{}", rest.rsplit_once('@').expect("checked").1)
                    }
                    _ => endpoint,
                };
                location.push_str(&format!(" at {shown}"));
            }
            if let Some(region) = builder.get_config_value(&AmazonS3ConfigKey::Region) {
                location.push_str(&format!(" (region {region})"));
            }
            let failed = |what: &str, e: object_store::Error| {
                Error::Archive(format!("{location}: {what}: {}", with_causes(&e)))
            };
            // The check gives up quickly: an unreachable server is a configuration error to
            // report at start, not something to retry for minutes.
            let quick = RetryConfig {
                max_retries: 1,
                retry_timeout: Duration::from_secs(10),
                ..RetryConfig::default()
            };
            let check_store = builder
                .clone()
                .with_retry(quick)
                .build()
                .map_err(|e| failed("cannot configure the S3 client", e))?;
            check(&check_store, &prefix)
                .await
                .map_err(|e| Error::Archive(format!("{location}: {e}")))?;
            let store = builder
                .build()
                .map_err(|e| failed("cannot configure the S3 client", e))?;
            let mut archive = Self::new(Arc::new(store), prefix);
            archive.location = location;
            Ok(archive)
        }
    }

    async fn check(store: &dyn ObjectStore, prefix: &str) -> std::result::Result<(), String> {
        let path = |name: &str| match prefix {
            "" => ObjectPath::from(name),
            _ => ObjectPath::from(format!("{prefix}/{name}")),
        };
        let marker = path(CHECK_OBJECT);
        store.put(&marker, CHECK_TEXT.into()).await.map_err(|e| {
            // S3 answers 404 to a write only when the bucket is not there.
            let hint = match e {
                object_store::Error::NotFound { .. } => {
                    "no such bucket (or not visible to these credentials): "
                }
                _ => "",
            };
            let e = with_causes(&e);
            format!("cannot write the check object {marker}: {hint}{e}")
        })?;
        let read = async { store.get(&marker).await?.bytes().await }
            .await
            .map_err(|e| {
                format!(
                    "cannot read back the check object {marker}: {}",
                    with_causes(&e)
                )
            })?;
        if read.as_ref() != CHECK_TEXT {
            return Err(format!(
                "the check object {marker} reads back different from what was written"
            ));
        }
        let absent = path(ABSENT_OBJECT);
        match store.head(&absent).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(format!(
                "an absent object ({absent}) does not read as absent: {} (the credentials \
                 need s3:ListBucket too, or logs never archived cannot be told from errors)",
                with_causes(&e)
            )),
        }
    }

    /// `s3://BUCKET[/PREFIX]` → (bucket, prefix without surrounding slashes).
    pub(super) fn parse_url(url: &str) -> Result<(&str, String)> {
        // Never echo a URL that may carry credentials.
        let shown = if url.contains('@') { "the URL" } else { url };
        let bad = |why: &str| {
            Error::Archive(format!("{shown} is not an s3://BUCKET[/PREFIX] URL: {why}"))
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("it does not start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket"));
        }
        if bucket.contains('@') || bucket.contains(':') {
            return Err(bad(
                "credentials and ports do not go in it (credentials: AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY; a server: the endpoint)",
            ));
        }
        if !bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(bad(
                "a bucket name has letters, digits, '.', '-' and '_' only",
            ));
        }
        if prefix.contains(['?', '#']) {
            return Err(bad("no query or fragment"));
        }
        Ok((bucket, prefix.trim_matches('/').to_owned()))
    }
}

#[cfg(all(test, feature = "s3"))]
mod tests {
    use super::s3::parse_url;

    #[test]
    fn s3_urls_give_a_bucket_and_a_prefix() {
        let ok = |url| parse_url(url).unwrap();
        assert_eq!(ok("s3://logs"), ("logs", String::new()));
        assert_eq!(ok("s3://logs/"), ("logs", String::new()));
        assert_eq!(ok("s3://logs/gantry/ci/"), ("logs", "gantry/ci".to_owned()));
    }

    #[test]
    fn malformed_s3_urls_say_why_and_never_echo_credentials() {
        let bad = |url| parse_url(url).unwrap_err().to_string();
        assert!(bad("https://logs/x").contains("does not start with s3://"));
        assert!(bad("s3:///prefix").contains("no bucket"));
        assert!(bad("s3://lo gs").contains("bucket name"));
        assert!(bad("s3://logs/x?versionId=1").contains("no query"));
        let creds = bad("s3://AKIA:secret@logs/x");
        assert!(creds.contains("credentials"), "{creds}");
        assert!(!creds.contains("secret@"), "{creds}");
    }
}
