//! What a runner reports about its shard: live over HTTP (`GET /progress`) and, once it exits,
//! in the container's termination message.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Kubernetes truncates a termination message at 4096 bytes; ours must stay well below.
pub const TERMINATION_MESSAGE_LIMIT: usize = 4096;

/// Which part of the input a runner works on: shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShardId {
    pub index: u32,
    pub count: u32,
}

impl ShardId {
    /// The one shard of an unsharded run.
    pub const WHOLE: ShardId = ShardId { index: 0, count: 1 };
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Why a shard spec such as `2/4` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIdError(String);

impl fmt::Display for ShardIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ShardIdError {}

impl FromStr for ShardId {
    type Err = ShardIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| ShardIdError(format!("shard `{s}` {why} (expected I/N, e.g. 0/4)"));
        let (index, count) = s.split_once('/').ok_or_else(|| err("has no `/`"))?;
        let index: u32 = index.trim().parse().map_err(|_| err("has a bad index"))?;
        let count: u32 = count.trim().parse().map_err(|_| err("has a bad count"))?;
        if count == 0 {
            return Err(err("has a count of zero"));
        }
        if index >= count {
            return Err(err("has an index not below its count"));
        }
        Ok(ShardId { index, count })
    }
}

/// Cumulative counts of one shard (or, after finalize, of the whole job).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Input lines read (valid or not).
    pub lines: u64,
    /// Requests answered with a result.
    pub completed: u64,
    /// Requests answered with an error record.
    pub failed: u64,
    /// Tokens the model read, as its own tokenizer counts them.
    pub prompt_tokens: u64,
    /// Tokens the model generated (zero for embeddings).
    pub completion_tokens: u64,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.lines += other.lines;
        self.completed += other.completed;
        self.failed += other.failed;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
}

/// Live progress, served as JSON at `GET /progress` while the runner works.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub shard: ShardId,
    #[serde(flatten)]
    pub counts: Counts,
    /// Requests per second since this process started (resumed work excluded).
    pub requests_per_second: f64,
    /// Prompt plus completion tokens per second since this process started.
    pub tokens_per_second: f64,
    /// When this process started, RFC 3339.
    pub started: String,
    /// True once the shard's last checkpoint is written.
    pub done: bool,
    /// Input bytes of this shard's range processed and checkpointed so far, and the range's size:
    /// what the operator estimates the total request count and the ETA from.
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: u64,
}

/// How a runner process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Every line of the shard is processed and checkpointed (or finalize merged everything).
    Done,
    /// Stopped by a signal after checkpointing; a restart resumes.
    Interrupted,
    /// A fatal error; `message` says why.
    Failed,
}

/// Final counts written to the container's termination-message file when the runner exits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminationMessage {
    /// Absent for `finalize`, which covers every shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardId>,
    pub outcome: Outcome,
    #[serde(flatten)]
    pub counts: Counts,
    /// Requests left unread: only a partial finalize (after cancel or the completion window)
    /// counts them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unprocessed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl TerminationMessage {
    /// Compact JSON that always fits [`TERMINATION_MESSAGE_LIMIT`]: a long message is cut.
    pub fn to_json(&self) -> String {
        let mut msg = self.clone();
        loop {
            let json = serde_json::to_string(&msg).expect("serialising plain data cannot fail");
            if json.len() <= TERMINATION_MESSAGE_LIMIT / 2 {
                return json;
            }
            match &mut msg.message {
                Some(m) if !m.is_empty() => {
                    let keep = m.len() / 2;
                    let cut = (0..=keep).rev().find(|&i| m.is_char_boundary(i)).unwrap_or(0);
                    m.truncate(cut);
                    m.push('…');
                }
                _ => return json,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ids_parse_and_reject_nonsense() {
        assert_eq!("2/4".parse::<ShardId>(), Ok(ShardId { index: 2, count: 4 }));
        assert_eq!(" 0 / 1 ".parse::<ShardId>(), Ok(ShardId::WHOLE));
        for bad in ["4/4", "1/0", "x/2", "3", "-1/2"] {
            let err = bad.parse::<ShardId>().expect_err(bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn termination_message_stays_small_even_with_a_huge_error() {
        let msg = TerminationMessage {
            shard: Some(ShardId::WHOLE),
            outcome: Outcome::Failed,
            counts: Counts { lines: 3, ..Counts::default() },
            unprocessed: 0,
            message: Some("é".repeat(100_000)),
        };
        let json = msg.to_json();
        assert!(json.len() <= TERMINATION_MESSAGE_LIMIT / 2);
        let back: TerminationMessage = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(back.counts.lines, 3);
        assert!(back.message.expect("message kept").starts_with('é'));
    }

    #[test]
    fn progress_json_is_flat_camel_case() {
        let p = Progress {
            shard: ShardId { index: 1, count: 3 },
            counts: Counts { completed: 5, prompt_tokens: 40, ..Counts::default() },
            requests_per_second: 2.5,
            tokens_per_second: 20.0,
            started: "2026-01-01T00:00:00Z".into(),
            done: false,
            bytes_done: 10,
            bytes_total: 100,
        };
        let v = serde_json::to_value(&p).expect("serialises");
        assert_eq!(v["completed"], 5);
        assert_eq!(v["promptTokens"], 40);
        assert_eq!(v["shard"]["index"], 1);
        assert_eq!(v["bytesTotal"], 100);
        // An older runner without byte counts still parses.
        let old: Progress = serde_json::from_str(
            r#"{"shard":{"index":0,"count":1},"lines":1,"completed":1,"failed":0,"promptTokens":1,
                "completionTokens":0,"requestsPerSecond":1,"tokensPerSecond":1,"started":"x","done":true}"#,
        )
        .expect("parses");
        assert_eq!(old.bytes_total, 0);
    }
}
