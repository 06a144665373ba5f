//! Where the model's files come from: a local folder used in place, or an S3 prefix copied
//! once into a local cache keyed by the objects' ETags (a changed file means a new copy).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::location::Location;
use crate::output::job::FileDigest;
use crate::storage::{self, LocalStore, ObjectStore, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the model location {uri} holds no files")]
    Empty { uri: String },
    #[error("the model location {uri} lists {key:?}, a name that would land outside the model's folder")]
    UnsafeKey { uri: String, key: String },
    #[error("cannot use the model cache {path}: {source}")]
    Cache {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A model folder on local disk with what identifies its content.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub dir: PathBuf,
    /// Changes when any file changes.
    pub etag: String,
    pub files: Vec<FileDigest>,
}

/// The default cache: `$XDG_CACHE_HOME/barge` or `~/.cache/barge`.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("barge")
}

/// Only these files make a model; anything else under the prefix (READMEs, ONNX copies,
/// optimizer state) is not downloaded.
/// Whether `key` stays inside the folder it is joined to: relative, with no `..`, `.` or empty
/// parts (S3 keys may be `/a.json` or `../a.json`; joined to a path, those escape it).
fn stays_inside(key: &str) -> bool {
    !key.is_empty() && key.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
}

fn is_model_file(key: &str) -> bool {
    let depth_ok = key.matches('/').count() <= 1;
    depth_ok && [".json", ".safetensors", ".gguf", ".txt", ".model"].iter().any(|ext| key.ends_with(ext))
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

async fn digest_files(dir: &Path, keys: Vec<(String, u64)>) -> Result<Vec<FileDigest>, FetchError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        keys.into_iter()
            .map(|(name, size)| {
                let path = dir.join(&name);
                let sha256 = sha256_file(&path)
                    .map_err(|source| FetchError::Cache { path: path.display().to_string(), source })?;
                Ok(FileDigest { name, size, sha256 })
            })
            .collect()
    })
    .await
    .expect("hashing does not panic")
}

/// Digests recorded earlier, or `None` when absent or unreadable (then they are recomputed).
async fn read_digests(path: &Path) -> Option<Vec<FileDigest>> {
    let bytes = tokio::fs::read(path).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

async fn write_digests(path: &Path, files: &[FileDigest]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let body = serde_json::to_vec_pretty(files).expect("serialising plain data cannot fail");
    tokio::fs::write(path, body).await
}

fn combined_etag(uri: &str, objects: &[storage::ObjectMeta]) -> String {
    let mut text = uri.to_string();
    for o in objects {
        text.push_str(&format!("\n{} {} {}", o.key, o.size, o.etag));
    }
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
}

pub async fn resolve(
    location: &Location,
    s3: &Option<aws_sdk_s3::Client>,
    cache_dir: &Path,
) -> Result<ResolvedModel, FetchError> {
    match location {
        Location::Local(path) if path.is_file() => {
            // A single-file model (GGUF): identified by its size and modification time, and
            // digested once per version like a folder.
            let meta = std::fs::metadata(path).map_err(cache_error(path))?;
            let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let object = storage::ObjectMeta {
                key: name.clone(),
                size: meta.len(),
                etag: format!("{}", mtime.map_or(0, |d| d.as_nanos())),
            };
            let etag = combined_etag(&location.to_string(), std::slice::from_ref(&object));
            let record = cache_dir.join("digests").join(format!("{etag}.json"));
            if let Some(files) = read_digests(&record).await {
                return Ok(ResolvedModel { dir: path.clone(), etag, files });
            }
            let parent = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            let files = digest_files(&parent, vec![(name, meta.len())]).await?;
            if let Err(e) = write_digests(&record, &files).await {
                tracing::warn!(path = %record.display(), error = %e, "cannot record the model's digests");
            }
            Ok(ResolvedModel { dir: path.clone(), etag, files })
        }
        Location::Local(path) => {
            let store = LocalStore::new(path.clone());
            let objects: Vec<_> =
                store.list("").await?.into_iter().filter(|o| is_model_file(&o.key)).collect();
            let etag = combined_etag(&location.to_string(), &objects);
            // The etag covers every file's size and modification time, so hashes recorded
            // under it stay valid; without this every run and shard re-reads the whole model.
            let record = cache_dir.join("digests").join(format!("{etag}.json"));
            if let Some(files) = read_digests(&record).await {
                return Ok(ResolvedModel { dir: path.clone(), etag, files });
            }
            let files = digest_files(path, objects.into_iter().map(|o| (o.key, o.size)).collect()).await?;
            if let Err(e) = write_digests(&record, &files).await {
                tracing::warn!(path = %record.display(), error = %e, "cannot record the model's digests");
            }
            Ok(ResolvedModel { dir: path.clone(), etag, files })
        }
        Location::S3 { .. } => fetch_s3(location, s3, cache_dir).await,
    }
}

fn cache_error(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Cache { path: path.display().to_string(), source }
}

async fn fetch_s3(
    location: &Location,
    s3: &Option<aws_sdk_s3::Client>,
    cache_dir: &Path,
) -> Result<ResolvedModel, FetchError> {
    // A `.gguf` URI names one object; anything else is a folder of model files.
    let single = match location {
        Location::S3 { key, .. } if key.ends_with(".gguf") => location.split_file(),
        _ => None,
    };
    let (store, objects) = match &single {
        Some((folder, name)) => {
            let store = storage::open(folder, s3);
            let object =
                store.head(name).await?.ok_or_else(|| FetchError::Empty { uri: location.to_string() })?;
            (store, vec![object])
        }
        None => {
            let store = storage::open(location, s3);
            let objects = store.list("").await?.into_iter().filter(|o| is_model_file(&o.key)).collect();
            (store, objects)
        }
    };
    if objects.is_empty() {
        return Err(FetchError::Empty { uri: location.to_string() });
    }
    if let Some(bad) = objects.iter().find(|o| !stays_inside(&o.key)) {
        return Err(FetchError::UnsafeKey { uri: location.to_string(), key: bad.key.clone() });
    }
    let etag = combined_etag(&location.to_string(), &objects);
    let dir = cache_dir.join("models").join(&etag);
    let cache_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| FetchError::Cache { path, source }
    };
    let digests_path = dir.join(".barge-digests.json");
    let model_path = |dir: &Path| match &single {
        Some((_, name)) => dir.join(name),
        None => dir.to_path_buf(),
    };
    if let Some(files) = read_digests(&digests_path).await {
        tracing::info!(model = %location, cache = %dir.display(), "model found in the cache");
        return Ok(ResolvedModel { dir: model_path(&dir), etag, files });
    }
    tracing::info!(model = %location, files = objects.len(), cache = %dir.display(), "downloading the model");
    let parent = cache_dir.join("models");
    tokio::fs::create_dir_all(&parent).await.map_err(cache_err(&parent))?;
    // Download beside the final folder, then rename: a killed download never looks complete.
    let temp = parent.join(format!(".{etag}.partial-{}", std::process::id()));
    let _ = tokio::fs::remove_dir_all(&temp).await;
    for o in &objects {
        let dest = temp.join(&o.key);
        if let Some(p) = dest.parent() {
            tokio::fs::create_dir_all(p).await.map_err(cache_err(p))?;
        }
        store.download(o, &dest).await?;
    }
    let files = digest_files(&temp, objects.iter().map(|o| (o.key.clone(), o.size)).collect()).await?;
    write_digests(&temp.join(".barge-digests.json"), &files).await.map_err(cache_err(&temp))?;
    match tokio::fs::rename(&temp, &dir).await {
        Ok(()) => {}
        // Another runner on the same node finished first: its copy is as good as ours.
        Err(_) if digests_path.exists() => {
            let _ = tokio::fs::remove_dir_all(&temp).await;
        }
        Err(e) => return Err(cache_err(&dir)(e)),
    }
    Ok(ResolvedModel { dir: model_path(&dir), etag, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_would_escape_the_cache_folder_are_refused() {
        for good in ["config.json", "1_Pooling/config.json", "model.gguf"] {
            assert!(stays_inside(good), "{good}");
        }
        for bad in ["/a.json", "../a.json", "a/../../b.json", "./a.json", "a//b.json", ""] {
            assert!(!stays_inside(bad), "{bad}");
        }
    }

    #[test]
    fn only_model_files_are_fetched() {
        assert!(is_model_file("config.json"));
        assert!(is_model_file("1_Pooling/config.json"));
        assert!(is_model_file("model.safetensors"));
        assert!(!is_model_file("onnx/model.onnx"));
        assert!(!is_model_file("a/b/c.json"));
        assert!(!is_model_file("README.md"));
    }

    #[tokio::test]
    async fn local_models_are_used_in_place_with_digests() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.json"), "{}").expect("write");
        std::fs::write(dir.path().join("notes.md"), "x").expect("write");
        let m =
            resolve(&Location::Local(dir.path().to_path_buf()), &None, dir.path()).await.expect("resolves");
        assert_eq!(m.dir, dir.path());
        assert_eq!(m.files.len(), 1);
        assert_eq!(m.files[0].sha256, "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
    }

    #[tokio::test]
    async fn local_digests_are_computed_once_per_model_version() {
        let (model, cache) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let config = model.path().join("config.json");
        std::fs::write(&config, "{}").expect("write");
        let location = Location::Local(model.path().to_path_buf());
        let first = resolve(&location, &None, cache.path()).await.expect("resolves");
        let record = cache.path().join("digests").join(format!("{}.json", first.etag));
        // A planted record is what a second resolve returns: it did not hash again.
        let planted = vec![FileDigest { name: "config.json".into(), size: 2, sha256: "planted".into() }];
        write_digests(&record, &planted).await.expect("write");
        assert_eq!(resolve(&location, &None, cache.path()).await.expect("resolves").files, planted);
        // A changed file is another version: new etag, fresh hashes.
        std::fs::write(&config, "{ }").expect("write");
        let changed = resolve(&location, &None, cache.path()).await.expect("resolves");
        assert_ne!(changed.etag, first.etag);
        assert_ne!(changed.files[0].sha256, "planted");
    }
}
