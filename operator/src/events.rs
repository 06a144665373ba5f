//! Which Events a status change deserves: one per transition, none on a steady state, so a
//! reconcile loop never floods `kubectl describe`.

use barge_api::batchjob::{BatchJobStatus, Phase};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

pub fn transitions(old: &BatchJobStatus, new: &BatchJobStatus, why: &str) -> Vec<Note> {
    let mut notes = Vec::new();
    let normal = |reason, message: String| Note { warning: false, reason, message };
    let warning = |reason, message: String| Note { warning: true, reason, message };
    for (o, n) in old.shards.iter().zip(&new.shards) {
        if n.restarts > o.restarts {
            notes.push(warning(
                "ShardRetried",
                format!(
                    "shard {} failed ({}); replacing its pod, attempt {}",
                    n.index,
                    n.message.clone().unwrap_or_default(),
                    n.restarts + 1
                ),
            ));
        }
    }
    if old.phase == new.phase {
        return notes;
    }
    notes.push(match new.phase {
        Phase::Pending => normal("Queued", why.to_string()),
        Phase::Running if old.phase == Phase::Suspended => {
            normal("Resumed", "resumed; shards continue from their checkpoints".into())
        }
        Phase::Running => normal("Started", format!("started {} runner pods", new.shards.len())),
        Phase::Finalizing => normal("Finalizing", "every shard is done; merging outputs".into()),
        Phase::Suspended => normal("Suspended", "pods stopped after checkpointing".into()),
        Phase::Succeeded => normal("Succeeded", why.to_string()),
        Phase::Cancelled => normal("Cancelled", why.to_string()),
        Phase::Expired => warning("Expired", why.to_string()),
        Phase::Failed => warning("Failed", why.to_string()),
    });
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use barge_api::batchjob::ShardStatus;

    #[test]
    fn one_event_per_transition_and_none_when_nothing_moved() {
        let running = BatchJobStatus { phase: Phase::Running, ..Default::default() };
        assert!(transitions(&running, &running, "").is_empty());
        let failed = BatchJobStatus { phase: Phase::Failed, ..Default::default() };
        let notes = transitions(&running, &failed, "spec.x: bad");
        assert_eq!(notes.len(), 1);
        assert!(notes[0].warning);
        assert_eq!(notes[0].message, "spec.x: bad");
    }

    #[test]
    fn a_shard_retry_is_a_warning() {
        let shard =
            |restarts| ShardStatus { restarts, message: Some("exit code 1".into()), ..Default::default() };
        let old = BatchJobStatus { phase: Phase::Running, shards: vec![shard(0)], ..Default::default() };
        let new = BatchJobStatus { phase: Phase::Running, shards: vec![shard(1)], ..Default::default() };
        let notes = transitions(&old, &new, "");
        assert_eq!(notes[0].reason, "ShardRetried");
        assert!(notes[0].message.contains("attempt 2"), "{}", notes[0].message);
    }
}
