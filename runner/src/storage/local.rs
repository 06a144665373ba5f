//! A local directory as an object store: writes go to a temporary file renamed into place.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::fs;
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufReader};

use super::{ByteReader, Condition, ObjectMeta, ObjectStore, ObjectWriter, StorageError, Versioned};

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> Self {
        LocalStore { root }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn io(&self, op: &'static str, key: &str, source: std::io::Error) -> StorageError {
        if source.kind() == std::io::ErrorKind::NotFound {
            StorageError::NotFound { uri: self.uri(key) }
        } else {
            StorageError::Io { op, uri: self.uri(key), source }
        }
    }
}

/// A sibling temporary name, unique per process and call, so concurrent writers never collide.
fn temp_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("object");
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// The version tag of local content: a hash of the bytes, so equal tags mean equal content.
fn version_of(body: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(body))
}

/// Compare-and-write under an exclusive lock on a sibling lock file: writers in other processes
/// (two runners on one folder) serialise on it.
fn put_if_locked(path: &Path, body: &[u8], condition: Condition<'_>) -> std::io::Result<Result<String, ()>> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("object");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.with_file_name(format!(".{name}.lock")))?;
    lock.lock()?;
    let current = match std::fs::read(path) {
        Ok(data) => Some(version_of(&data)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let holds = match condition {
        Condition::Absent => current.is_none(),
        Condition::Version(v) => current.as_deref() == Some(v),
    };
    if !holds {
        return Ok(Err(()));
    }
    let temp = temp_path(path);
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(body)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    Ok(Ok(version_of(body)))
}

fn meta_of(key: String, md: &std::fs::Metadata) -> ObjectMeta {
    let mtime =
        md.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    ObjectMeta { key, size: md.len(), etag: format!("{:x}-{mtime:x}", md.len()) }
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn uri(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        match fs::metadata(self.path(key)).await {
            Ok(md) if md.is_file() => Ok(Some(meta_of(key.to_string(), &md))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("inspect", key, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        match fs::read(self.path(key)).await {
            Ok(data) => Ok(Some(Bytes::from(data))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("read", key, e)),
        }
    }

    async fn read_from(&self, key: &str, offset: u64) -> Result<ByteReader, StorageError> {
        let mut file = fs::File::open(self.path(key)).await.map_err(|e| self.io("open", key, e))?;
        file.seek(SeekFrom::Start(offset)).await.map_err(|e| self.io("seek in", key, e))?;
        Ok(Box::pin(BufReader::with_capacity(256 * 1024, file)))
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StorageError> {
        let mut writer = self.create(key).await?;
        writer.write(body).await?;
        writer.finish().await
    }

    async fn get_versioned(&self, key: &str) -> Result<Option<Versioned>, StorageError> {
        Ok(self.get(key).await?.map(|body| Versioned { version: version_of(&body), body }))
    }

    async fn put_if(&self, key: &str, body: Bytes, condition: Condition<'_>) -> Result<String, StorageError> {
        let path = self.path(key);
        let owned = match condition {
            Condition::Absent => None,
            Condition::Version(v) => Some(v.to_string()),
        };
        let result = tokio::task::spawn_blocking(move || {
            let condition = owned.as_deref().map_or(Condition::Absent, Condition::Version);
            put_if_locked(&path, &body, condition)
        })
        .await
        .map_err(|e| self.io("write", key, std::io::Error::other(e.to_string())))?;
        match result {
            Ok(Ok(version)) => Ok(version),
            Ok(Err(())) => Err(StorageError::Conflict { uri: self.uri(key) }),
            Err(e) => Err(self.io("write", key, e)),
        }
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        let path = self.path(key);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).await.map_err(|e| self.io("create the folder of", key, e))?;
        }
        let temp = temp_path(&path);
        let file = fs::File::create(&temp).await.map_err(|e| self.io("create", key, e))?;
        Ok(Box::new(LocalWriter { file, temp, path, uri: self.uri(key) }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        // Walk only the folder the prefix names, not the whole root.
        let dir_part = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let mut out = Vec::new();
        let mut stack = vec![dir_part.to_string()];
        while let Some(rel) = stack.pop() {
            let mut entries = match fs::read_dir(self.path(&rel)).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io("list", &rel, e)),
            };
            while let Some(entry) = entries.next_entry().await.map_err(|e| self.io("list", &rel, e))? {
                let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
                if name.starts_with('.') {
                    continue; // temporary files of unfinished writes
                }
                let key = if rel.is_empty() { name } else { format!("{rel}/{name}") };
                let md = entry.metadata().await.map_err(|e| self.io("inspect", &key, e))?;
                if md.is_dir() {
                    stack.push(key);
                } else if key.starts_with(prefix) {
                    out.push(meta_of(key, &md));
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        for object in self.list(prefix).await? {
            self.delete(&object.key).await?;
        }
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match fs::remove_file(self.path(key)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.io("delete", key, e)),
            _ => Ok(()),
        }
    }
}

struct LocalWriter {
    file: fs::File,
    temp: PathBuf,
    path: PathBuf,
    uri: String,
}

impl LocalWriter {
    fn io(&self, op: &'static str, source: std::io::Error) -> StorageError {
        StorageError::Io { op, uri: self.uri.clone(), source }
    }
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, data: Bytes) -> Result<(), StorageError> {
        self.file.write_all(&data).await.map_err(|e| self.io("write", e))
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StorageError> {
        self.file.flush().await.map_err(|e| self.io("write", e))?;
        // Durable before it becomes visible: a checkpoint must never point at lost bytes.
        self.file.sync_all().await.map_err(|e| self.io("sync", e))?;
        fs::rename(&self.temp, &self.path).await.map_err(|e| self.io("rename into", e))
    }

    async fn abort(self: Box<Self>) {
        let _ = fs::remove_file(&self.temp).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn writes_are_atomic_and_listing_skips_unfinished_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path().to_path_buf());
        store.put("a/b/one.txt", Bytes::from_static(b"hello")).await.expect("put");
        let mut pending = store.create("a/b/two.txt").await.expect("create");
        pending.write(Bytes::from_static(b"half")).await.expect("write");
        let keys: Vec<_> = store.list("a/").await.expect("list").into_iter().map(|m| m.key).collect();
        assert_eq!(keys, ["a/b/one.txt"]);
        pending.finish().await.expect("finish");
        let keys: Vec<_> = store.list("a/b/").await.expect("list").into_iter().map(|m| m.key).collect();
        assert_eq!(keys, ["a/b/one.txt", "a/b/two.txt"]);
        assert_eq!(store.list("a/b/t").await.expect("list").len(), 1);
    }

    #[tokio::test]
    async fn conditional_writes_let_one_writer_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path().to_path_buf());
        let first = store.put_if("c", Bytes::from_static(b"one"), Condition::Absent).await.expect("created");
        let again = store.put_if("c", Bytes::from_static(b"two"), Condition::Absent).await;
        assert!(matches!(again, Err(StorageError::Conflict { .. })), "{again:?}");
        let got = store.get_versioned("c").await.expect("get").expect("exists");
        assert_eq!((got.body.as_ref(), got.version.as_str()), (&b"one"[..], first.as_str()));
        let second =
            store.put_if("c", Bytes::from_static(b"two"), Condition::Version(&first)).await.expect("swapped");
        let stale = store.put_if("c", Bytes::from_static(b"old"), Condition::Version(&first)).await;
        assert!(matches!(stale, Err(StorageError::Conflict { .. })), "{stale:?}");
        assert_eq!(store.get_versioned("c").await.expect("get").expect("exists").version, second);
        let keys: Vec<_> = store.list("").await.expect("list").into_iter().map(|m| m.key).collect();
        assert_eq!(keys, ["c"], "the lock file is not an object");
    }

    #[tokio::test]
    async fn reads_from_an_offset_and_reports_missing_objects() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path().to_path_buf());
        store.put("x", Bytes::from_static(b"0123456789")).await.expect("put");
        let mut s = String::new();
        store.read_from("x", 4).await.expect("open").read_to_string(&mut s).await.expect("read");
        assert_eq!(s, "456789");
        assert!(store.get("nope").await.expect("get").is_none());
        let err = store.read_from("nope", 0).await.err().expect("missing");
        assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
        store.delete_prefix("").await.expect("delete");
        assert!(store.head("x").await.expect("head").is_none());
    }
}
