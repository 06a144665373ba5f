//! Object storage behind one trait: a local folder or an S3 prefix, addressed by relative keys.
//!
//! Every store is rooted at a folder (a local directory or `s3://bucket/prefix/`), so the rest of
//! the runner reads and writes `_barge/shard-0000-of-0001/checkpoint.json` without caring where
//! that is.

mod local;
mod s3;

use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt};

pub use local::LocalStore;
pub use s3::{S3Options, S3Store, s3_client};

use crate::location::Location;

/// A stream of an object's bytes from some offset on.
pub type ByteReader = Pin<Box<dyn AsyncBufRead + Send>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Relative to the store's root, `/`-separated.
    pub key: String,
    pub size: u64,
    /// S3's ETag, or size and modification time for a local file: changes when the content does.
    pub etag: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{uri} does not exist")]
    NotFound { uri: String },
    #[error("cannot {op} {uri}: {source}")]
    Io {
        op: &'static str,
        uri: String,
        #[source]
        source: std::io::Error,
    },
    #[error("S3 refused to {op} {uri} ({code}): check the credentials and the bucket's policy")]
    Denied { op: &'static str, uri: String, code: String },
    #[error("the S3 bucket of {uri} does not exist")]
    NoSuchBucket { uri: String },
    #[error("cannot reach S3 to {op} {uri}: {detail}")]
    Unreachable { op: &'static str, uri: String, detail: String },
    #[error("S3 failed to {op} {uri}: {detail}")]
    S3 { op: &'static str, uri: String, detail: String },
    #[error(
        "{uri} changed while the job read it (its ETag is no longer the one the job started with); a job reads one version of its input: start a new job for the new one"
    )]
    Changed { uri: String },
    /// A conditional write lost: the object was created or changed by another writer.
    #[error("{uri} was written by another writer in the meantime")]
    Conflict { uri: String },
}

/// What a conditional write requires of the object it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition<'a> {
    /// It must not exist (S3 `If-None-Match: *`).
    Absent,
    /// It must still be the version with this tag (S3 `If-Match`).
    Version(&'a str),
}

/// An object's bytes and the version tag that [`ObjectStore::put_if`] compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub body: Bytes,
    pub version: String,
}

impl StorageError {
    /// Worth another try later: the store was unreachable or hiccupped, nothing was refused.
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::Unreachable { .. } | StorageError::S3 { .. } => true,
            StorageError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
            ),
            _ => false,
        }
    }
}

/// A folder of objects. Writes of whole objects are atomic: a reader sees the old object or the
/// new one, never half of one (the checkpoint protocol relies on it).
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// The full URI of `key`, for messages.
    fn uri(&self, key: &str) -> String;

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError>;

    /// The whole object, for small objects (checkpoints, configs).
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError>;

    /// Streams the object from `offset` to its end without loading it.
    async fn read_from(&self, key: &str, offset: u64) -> Result<ByteReader, StorageError>;

    /// Like `read_from`, but only while the object is still the version tagged `etag` (as
    /// `head` reports it); [`StorageError::Changed`] otherwise. A job pins its input this way,
    /// so a file replaced mid-run is never read as a mix of two versions.
    async fn read_version_from(
        &self,
        key: &str,
        offset: u64,
        etag: &str,
    ) -> Result<ByteReader, StorageError> {
        match self.head(key).await? {
            Some(meta) if meta.etag == etag => self.read_from(key, offset).await,
            Some(_) => Err(StorageError::Changed { uri: self.uri(key) }),
            None => Err(StorageError::NotFound { uri: self.uri(key) }),
        }
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StorageError>;

    /// The whole object with its version tag.
    async fn get_versioned(&self, key: &str) -> Result<Option<Versioned>, StorageError>;

    /// Writes the object only if `condition` holds, atomically with the check; returns the new
    /// version tag, or [`StorageError::Conflict`] when another writer got there first. This is
    /// what fences writers: an output's claim and each shard's checkpoint are written this way.
    async fn put_if(&self, key: &str, body: Bytes, condition: Condition<'_>) -> Result<String, StorageError>;

    /// Starts a streamed upload; the object appears only when the writer finishes.
    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError>;

    /// Objects whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError>;

    /// Deletes every object under `prefix`; a missing prefix is not an error.
    async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError>;

    async fn delete(&self, key: &str) -> Result<(), StorageError>;

    /// Copies the object `meta` describes (as `list` or `head` gave it) into a local file. A
    /// stream that breaks is resumed where it stopped, pinned to that version, so a flaky
    /// network costs a reconnect, not the whole download; the file must end up its size.
    async fn download(&self, meta: &ObjectMeta, dest: &Path) -> Result<(), StorageError> {
        const ATTEMPTS: u32 = 6;
        let key = meta.key.as_str();
        let io_err = |op, source| StorageError::Io { op, uri: dest.display().to_string(), source };
        let mut file = tokio::fs::File::create(dest).await.map_err(|e| io_err("create", e))?;
        let mut written = 0u64;
        let mut attempt = 0;
        while written < meta.size {
            let before = written;
            // (error, whether the stream broke: any such break is worth resuming, whatever its kind)
            let copied = async {
                let mut reader =
                    self.read_version_from(key, written, &meta.etag).await.map_err(|e| (e, false))?;
                loop {
                    let buf = reader.fill_buf().await.map_err(|source| {
                        (StorageError::Io { op: "download", uri: self.uri(key), source }, true)
                    })?;
                    if buf.is_empty() {
                        return Ok(());
                    }
                    let n = buf.len();
                    file.write_all(buf).await.map_err(|e| (io_err("write", e), false))?;
                    written += n as u64;
                    reader.consume(n);
                }
            }
            .await;
            match copied {
                Ok(()) if written < meta.size => {
                    return Err(StorageError::Io {
                        op: "download",
                        uri: self.uri(key),
                        source: std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("the object ended after {written} of its {} bytes", meta.size),
                        ),
                    });
                }
                Ok(()) => {}
                Err((e, broke))
                    if (broke || e.is_transient()) && (written > before || attempt < ATTEMPTS) =>
                {
                    // Only breaks without progress count against the limit: a long download over
                    // a flaky link may need many resumes.
                    attempt = if written > before { 1 } else { attempt + 1 };
                    tracing::warn!(uri = %self.uri(key), offset = written, attempt, error = %e, "download broke; resuming");
                    tokio::time::sleep(std::time::Duration::from_millis((100 << attempt).min(2000))).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
        file.flush().await.map_err(|e| io_err("write", e))?;
        Ok(())
    }
}

/// A streamed upload (multipart on S3, a temporary file renamed into place locally).
#[async_trait]
pub trait ObjectWriter: Send {
    async fn write(&mut self, data: Bytes) -> Result<(), StorageError>;
    async fn finish(self: Box<Self>) -> Result<(), StorageError>;
    /// Drops what was written; the object does not appear.
    async fn abort(self: Box<Self>);
}

/// Opens `location` as a folder. S3 stores share one client, built once by the caller.
pub fn open(location: &Location, s3: &Option<aws_sdk_s3::Client>) -> Arc<dyn ObjectStore> {
    match location {
        Location::Local(path) => Arc::new(LocalStore::new(path.clone())),
        Location::S3 { bucket, key } => {
            let client =
                s3.clone().expect("an S3 client is built whenever a location is s3:// — this is a bug");
            Arc::new(S3Store::new(client, bucket.clone(), key.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A local folder whose read streams break after `cut` bytes, like a connection reset mid-body.
    #[derive(Debug)]
    struct Breaking {
        inner: LocalStore,
        cut: usize,
        opens: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl ObjectStore for Breaking {
        fn uri(&self, key: &str) -> String {
            self.inner.uri(key)
        }
        async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
            self.inner.head(key).await
        }
        async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
            self.inner.get(key).await
        }
        async fn read_from(&self, key: &str, offset: u64) -> Result<ByteReader, StorageError> {
            use tokio::io::AsyncReadExt;
            self.opens.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let head = self.inner.read_from(key, offset).await?.take(self.cut as u64);
            let broken = tokio_util::io::StreamReader::new(futures::stream::iter([Err::<Bytes, _>(
                std::io::Error::other("connection reset"),
            )]));
            Ok(Box::pin(tokio::io::BufReader::new(head.chain(broken))))
        }
        async fn put(&self, key: &str, body: Bytes) -> Result<(), StorageError> {
            self.inner.put(key, body).await
        }
        async fn get_versioned(&self, key: &str) -> Result<Option<Versioned>, StorageError> {
            self.inner.get_versioned(key).await
        }
        async fn put_if(&self, key: &str, body: Bytes, c: Condition<'_>) -> Result<String, StorageError> {
            self.inner.put_if(key, body, c).await
        }
        async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
            self.inner.create(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
            self.inner.list(prefix).await
        }
        async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
            self.inner.delete_prefix(prefix).await
        }
        async fn delete(&self, key: &str) -> Result<(), StorageError> {
            self.inner.delete(key).await
        }
    }

    #[tokio::test]
    async fn a_download_whose_stream_breaks_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("w.bin"), &data).expect("write");
        let dest: PathBuf = dir.path().join("copy.bin");

        let store =
            Breaking { inner: LocalStore::new(dir.path().to_path_buf()), cut: 100_000, opens: 0.into() };
        let meta = store.head("w.bin").await.expect("head").expect("exists");
        store.download(&meta, &dest).await.expect("resumed to the end");
        assert_eq!(std::fs::read(&dest).expect("read"), data);
        assert_eq!(store.opens.into_inner(), 3, "one open per 100 kB piece");

        // A stream that breaks at once every time is given up on, with the error.
        let store = Breaking { inner: LocalStore::new(dir.path().to_path_buf()), cut: 0, opens: 0.into() };
        let err = store.download(&meta, &dest).await.expect_err("no progress, ever");
        assert!(err.to_string().contains("connection reset"), "{err}");
    }
}
