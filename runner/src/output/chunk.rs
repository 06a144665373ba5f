//! The shard's working files under `_barge/`: chunks of finished records and where they live.
//!
//! A chunk line is `R|E <TAB> line <TAB> custom_id-as-JSON <TAB> payload`. Result payloads are
//! the final output line, copied byte for byte by finalize; error payloads hold the code and
//! message, so finalize can write them with the line number in the whole input.

use barge_api::ShardId;
use serde::{Deserialize, Serialize};

use crate::input::LineError;

/// The job description shared by every shard.
pub const JOB_KEY: &str = "_barge/job.json";

/// The output's claim: the spec of the one job that may write there (see `claim_output`).
pub const CLAIM_KEY: &str = "_barge/claim.json";

pub fn shard_dir(shard: ShardId) -> String {
    format!("_barge/shard-{:05}-of-{:05}/", shard.index, shard.count)
}

pub fn checkpoint_key(shard: ShardId) -> String {
    format!("{}checkpoint.json", shard_dir(shard))
}

/// Chunk `n` as the process of `epoch` wrote it: processes never share a chunk key, so a stale
/// one cannot overwrite what a newer one counts (see `checkpoint.rs`).
pub fn chunk_key(shard: ShardId, n: u64, epoch: u64) -> String {
    format!("{}chunk-{n:08}-e{epoch:06}.tsv", shard_dir(shard))
}

/// Starts a result entry; the caller appends the record line (ending in a newline).
pub fn begin_result(out: &mut Vec<u8>, line: u64, custom_id: &str) {
    begin(out, b'R', line, custom_id);
}

/// Starts a result entry that reports a failed request (Anthropic's `errored` results live in
/// the results file): merged like a result, counted as a failure.
pub fn begin_failed_result(out: &mut Vec<u8>, line: u64, custom_id: &str) {
    begin(out, b'F', line, custom_id);
}

fn begin(out: &mut Vec<u8>, kind: u8, line: u64, custom_id: &str) {
    out.push(kind);
    out.extend_from_slice(format!("\t{line}\t").as_bytes());
    serde_json::to_writer(&mut *out, custom_id).expect("writing JSON into a Vec cannot fail");
    out.push(b'\t');
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorPayload {
    pub code: String,
    pub message: String,
}

pub fn push_error(out: &mut Vec<u8>, line: u64, error: &LineError) {
    out.extend_from_slice(format!("E\t{line}\t").as_bytes());
    serde_json::to_writer(&mut *out, &error.custom_id).expect("writing JSON into a Vec cannot fail");
    out.push(b'\t');
    let payload = ErrorPayload { code: error.code.as_str().to_string(), message: error.message.clone() };
    serde_json::to_writer(&mut *out, &payload).expect("writing JSON into a Vec cannot fail");
    out.push(b'\n');
}

#[derive(Debug, PartialEq, Eq)]
pub enum Entry<'a> {
    /// `record` is the output line without its newline; `failed` marks an errored result.
    Result {
        line: u64,
        custom_id: String,
        record: &'a [u8],
        failed: bool,
    },
    Error {
        line: u64,
        custom_id: Option<String>,
        error: ErrorPayload,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("chunk line is damaged: {0}")]
pub struct DamagedChunk(String);

/// Parses one chunk line (without its newline).
pub fn parse(line: &[u8]) -> Result<Entry<'_>, DamagedChunk> {
    let mut parts = line.splitn(4, |&b| b == b'\t');
    let (Some(kind), Some(num), Some(id), Some(payload)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(DamagedChunk("fewer than four fields".into()));
    };
    let line_no: u64 = std::str::from_utf8(num)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| DamagedChunk("bad line number".into()))?;
    let custom_id: Option<String> =
        serde_json::from_slice(id).map_err(|e| DamagedChunk(format!("bad custom_id: {e}")))?;
    match kind {
        b"R" | b"F" => Ok(Entry::Result {
            line: line_no,
            custom_id: custom_id.ok_or_else(|| DamagedChunk("a result without custom_id".into()))?,
            record: payload,
            failed: kind == b"F",
        }),
        b"E" => Ok(Entry::Error {
            line: line_no,
            custom_id,
            error: serde_json::from_slice(payload).map_err(|e| DamagedChunk(format!("bad error: {e}")))?,
        }),
        _ => Err(DamagedChunk("unknown kind".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::ErrorCode;

    #[test]
    fn entries_round_trip_even_with_tabs_and_newlines_in_ids() {
        let mut out = Vec::new();
        begin_result(&mut out, 3, "a\tb\nc");
        out.extend_from_slice(b"{\"id\":1}\n");
        let err = LineError::new(ErrorCode::InvalidJson, "bad\tthing").with_custom_id(None);
        push_error(&mut out, 9, &err);
        let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            parse(lines[0]).expect("result"),
            Entry::Result { line: 3, custom_id: "a\tb\nc".into(), record: b"{\"id\":1}", failed: false }
        );
        assert_eq!(
            parse(lines[1]).expect("error"),
            Entry::Error {
                line: 9,
                custom_id: None,
                error: ErrorPayload { code: "invalid_json".into(), message: "bad\tthing".into() }
            }
        );
        assert!(parse(b"R\t1\tnull").is_err());
    }

    #[test]
    fn shard_keys_sort_in_shard_and_chunk_order() {
        let s = ShardId { index: 2, count: 10 };
        assert_eq!(checkpoint_key(s), "_barge/shard-00002-of-00010/checkpoint.json");
        assert!(chunk_key(s, 9, 7) < chunk_key(s, 10, 1));
    }
}
