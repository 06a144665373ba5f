//! A shard's checkpoint: how far it got, written after each chunk.
//!
//! Guarantees: a checkpoint is replaced atomically and only after the chunk it counts is
//! stored, so after a crash at any moment the chunks `0..chunks` hold exactly the lines before
//! `next_offset`, each once.
//!
//! Fencing: every process that works on a shard takes it over with a new `epoch`, written into
//! the checkpoint by a conditional write on the version it read, and it writes its chunks under
//! keys that carry that epoch. Every later checkpoint is conditional on the version the process
//! itself wrote last. So a stale process (a pod left running by a force-delete or a network
//! partition) can neither roll the checkpoint back nor overwrite a chunk another process
//! counts: its next checkpoint write fails and it stops with [`CheckpointError::Fenced`].

use barge_api::{Counts, ShardId};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::chunk::checkpoint_key;
use crate::storage::{Condition, ObjectStore, StorageError};

/// 2: epochs and epoch-tagged chunk keys.
pub const FORMAT_VERSION: u32 = 2;

/// From chunk `first_chunk` on, chunks were written by the process of `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Segment {
    pub first_chunk: u64,
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub version: u32,
    /// [`super::job::JobSpec::fingerprint`] of the job that wrote it.
    pub job: String,
    pub shard: ShardId,
    /// Chunks `0..chunks` are complete.
    pub chunks: u64,
    /// Where the next line of the shard starts.
    pub next_offset: u64,
    pub counts: Counts,
    pub done: bool,
    /// When the shard first started, RFC 3339.
    pub started: String,
    pub updated: String,
    /// The epoch of the process that owns the shard now.
    pub epoch: u64,
    /// A random token of that process. Two processes that take over from the same version
    /// draw the same epoch; this keeps their checkpoints apart, so a writer that finds its own
    /// bytes stored (a retried write whose first answer was lost) knows they are its own.
    #[serde(default)]
    pub owner: String,
    /// Which epoch wrote which chunks, oldest first.
    pub segments: Vec<Segment>,
    /// The stored version this process read or last wrote: its next write is conditional on it.
    #[serde(skip)]
    pub version_tag: Option<String>,
}

impl Checkpoint {
    /// The epoch under whose key chunk `n` was written.
    pub fn epoch_of(&self, n: u64) -> u64 {
        self.segments.iter().rev().find(|s| s.first_chunk <= n).map_or(0, |s| s.epoch)
    }

    /// Takes the shard over for this process: a new epoch, from the next chunk on. The caller
    /// then saves, which fails if another process wrote in between.
    pub fn take_over(&mut self) {
        self.epoch += 1;
        self.owner = format!("{:016x}", rand::random::<u64>());
        self.segments.push(Segment { first_chunk: self.chunks, epoch: self.epoch });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the checkpoint {uri} is damaged ({detail}); delete it or rerun with --overwrite")]
    Damaged { uri: String, detail: String },
    #[error(
        "another runner took shard {shard} over ({uri} changed under this one); this runner stops and leaves the shard to it"
    )]
    Fenced { shard: ShardId, uri: String },
}

pub async fn load(store: &dyn ObjectStore, shard: ShardId) -> Result<Option<Checkpoint>, CheckpointError> {
    let key = checkpoint_key(shard);
    let Some(stored) = store.get_versioned(&key).await? else { return Ok(None) };
    let mut cp: Checkpoint = serde_json::from_slice(&stored.body)
        .map_err(|e| CheckpointError::Damaged { uri: store.uri(&key), detail: e.to_string() })?;
    if cp.version != FORMAT_VERSION || cp.shard != shard {
        return Err(CheckpointError::Damaged {
            uri: store.uri(&key),
            detail: format!("version {} for shard {}", cp.version, cp.shard),
        });
    }
    cp.version_tag = Some(stored.version);
    Ok(Some(cp))
}

/// Writes the checkpoint if it is still the version this process read or wrote last (or is
/// absent, for a process that found none); remembers the new version.
pub async fn save(store: &dyn ObjectStore, cp: &mut Checkpoint) -> Result<(), CheckpointError> {
    let body = serde_json::to_vec_pretty(cp).expect("serialising plain data cannot fail");
    let key = checkpoint_key(cp.shard);
    let condition = cp.version_tag.as_deref().map_or(Condition::Absent, Condition::Version);
    let body = Bytes::from(body);
    match store.put_if(&key, body.clone(), condition).await {
        Ok(version) => {
            cp.version_tag = Some(version);
            Ok(())
        }
        Err(StorageError::Conflict { uri }) => {
            // The SDK retries a write whose answer was lost on the way back; if the first attempt
            // landed, the retry's condition no longer holds. Our own bytes there mean this process
            // wrote them (a rival's checkpoint differs at least in its epoch): not fenced.
            match store.get_versioned(&key).await? {
                Some(stored) if stored.body == body => {
                    cp.version_tag = Some(stored.version);
                    Ok(())
                }
                _ => Err(CheckpointError::Fenced { shard: cp.shard, uri }),
            }
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStore;

    /// A shard's checkpoint before any work, as a first runner writes it.
    fn blank(shard: ShardId) -> Checkpoint {
        Checkpoint {
            version: FORMAT_VERSION,
            job: "j".into(),
            shard,
            chunks: 0,
            next_offset: 0,
            counts: Counts::default(),
            done: false,
            started: String::new(),
            updated: String::new(),
            epoch: 0,
            owner: String::new(),
            segments: Vec::new(),
            version_tag: None,
        }
    }

    #[tokio::test]
    async fn checkpoints_round_trip_and_damage_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path().to_path_buf());
        let shard = ShardId { index: 1, count: 2 };
        assert!(load(&store, shard).await.expect("load").is_none());
        let cp = Checkpoint {
            job: "abc".into(),
            chunks: 3,
            next_offset: 1234,
            counts: Counts { lines: 10, completed: 9, failed: 1, prompt_tokens: 99, completion_tokens: 0 },
            started: "2026-01-01T00:00:00Z".into(),
            updated: "2026-01-01T00:01:00Z".into(),
            ..blank(shard)
        };
        let mut cp = cp;
        cp.take_over();
        save(&store, &mut cp).await.expect("save");
        assert_eq!(load(&store, shard).await.expect("load"), Some(cp));
        store.put(&checkpoint_key(shard), Bytes::from_static(b"{oops")).await.expect("put");
        let err = load(&store, shard).await.expect_err("damaged");
        assert!(err.to_string().contains("damaged"), "{err}");
    }

    /// Two processes on one shard: the newer takes over, and the older can neither write a
    /// checkpoint again nor have written chunks under the newer one's keys.
    #[tokio::test]
    async fn a_newer_process_fences_the_older_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path().to_path_buf());
        let shard = ShardId { index: 0, count: 1 };
        let mut old = blank(shard);
        old.take_over();
        save(&store, &mut old).await.expect("first owner");
        old.chunks = 3;
        save(&store, &mut old).await.expect("the owner goes on");

        let mut new = load(&store, shard).await.expect("load").expect("exists");
        new.take_over();
        save(&store, &mut new).await.expect("the newer process takes over");
        assert_eq!((new.epoch, new.epoch_of(2), new.epoch_of(3)), (2, 1, 2));

        old.chunks = 5;
        old.done = true;
        let err = save(&store, &mut old).await.expect_err("the stale process is fenced");
        assert!(matches!(err, CheckpointError::Fenced { .. }), "{err}");
        assert_eq!(
            load(&store, shard).await.expect("load").expect("exists").chunks,
            3,
            "no roll forward or back"
        );
        // A second process racing to take over from the same version loses.
        let mut racer = old.clone();
        racer.version_tag = new.version_tag.clone();
        new.chunks = 4;
        save(&store, &mut new).await.expect("the owner goes on");
        racer.take_over();
        assert!(matches!(save(&store, &mut racer).await, Err(CheckpointError::Fenced { .. })));
    }

    /// S3 retries a write whose answer was lost; the retry finds its own first attempt stored.
    /// That is this process's write, not a rival's: it goes on. A rival that took over from the
    /// same version, with the same epoch, is still refused.
    #[tokio::test]
    async fn a_retried_write_that_had_landed_is_not_mistaken_for_a_rival() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path().to_path_buf());
        let shard = ShardId { index: 0, count: 2 };
        let mut cp = blank(shard);
        cp.take_over();
        save(&store, &mut cp).await.expect("first write");
        let read = cp.clone();

        cp.chunks = 1;
        save(&store, &mut cp).await.expect("the write lands");
        let mut retry = cp.clone();
        retry.version_tag = read.version_tag.clone(); // its answer was lost: the tag is the old one
        save(&store, &mut retry).await.expect("the retry recognises its own bytes");
        assert_eq!(retry.version_tag, cp.version_tag);

        let mut a = load(&store, shard).await.expect("load").expect("exists");
        let mut b = a.clone();
        a.take_over();
        b.take_over();
        assert_eq!(a.epoch, b.epoch);
        save(&store, &mut a).await.expect("one takes over");
        let err = save(&store, &mut b).await.expect_err("the other is refused");
        assert!(matches!(err, CheckpointError::Fenced { .. }), "{err}");
    }
}
