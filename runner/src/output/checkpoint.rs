//! A shard's checkpoint: how far it got, written after each chunk.
//!
//! Guarantees: a checkpoint is replaced atomically and only after the chunk it counts is
//! stored, so after a crash at any moment the chunks `0..chunks` hold exactly the lines before
//! `next_offset`, each once. A chunk written after the last checkpoint is simply overwritten by
//! the resumed run.

use barge_api::{Counts, ShardId};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::chunk::checkpoint_key;
use crate::storage::{ObjectStore, StorageError};

pub const FORMAT_VERSION: u32 = 1;

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
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the checkpoint {uri} is damaged ({detail}); delete it or rerun with --overwrite")]
    Damaged { uri: String, detail: String },
}

pub async fn load(store: &dyn ObjectStore, shard: ShardId) -> Result<Option<Checkpoint>, CheckpointError> {
    let key = checkpoint_key(shard);
    let Some(bytes) = store.get(&key).await? else { return Ok(None) };
    let cp: Checkpoint = serde_json::from_slice(&bytes)
        .map_err(|e| CheckpointError::Damaged { uri: store.uri(&key), detail: e.to_string() })?;
    if cp.version != FORMAT_VERSION || cp.shard != shard {
        return Err(CheckpointError::Damaged {
            uri: store.uri(&key),
            detail: format!("version {} for shard {}", cp.version, cp.shard),
        });
    }
    Ok(Some(cp))
}

pub async fn save(store: &dyn ObjectStore, cp: &Checkpoint) -> Result<(), StorageError> {
    let body = serde_json::to_vec_pretty(cp).expect("serialising plain data cannot fail");
    store.put(&checkpoint_key(cp.shard), Bytes::from(body)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStore;

    #[tokio::test]
    async fn checkpoints_round_trip_and_damage_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path().to_path_buf());
        let shard = ShardId { index: 1, count: 2 };
        assert!(load(&store, shard).await.expect("load").is_none());
        let cp = Checkpoint {
            version: FORMAT_VERSION,
            job: "abc".into(),
            shard,
            chunks: 3,
            next_offset: 1234,
            counts: Counts { lines: 10, completed: 9, failed: 1, prompt_tokens: 99, completion_tokens: 0 },
            done: false,
            started: "2026-01-01T00:00:00Z".into(),
            updated: "2026-01-01T00:01:00Z".into(),
        };
        save(&store, &cp).await.expect("save");
        assert_eq!(load(&store, shard).await.expect("load"), Some(cp));
        store.put(&checkpoint_key(shard), Bytes::from_static(b"{oops")).await.expect("put");
        let err = load(&store, shard).await.expect_err("damaged");
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}
