//! What a run writes: result and error records ([`record`]), the shard's chunks and
//! checkpoints under `_barge/` ([`chunk`], [`checkpoint`]), and the merge of every shard into
//! `results.jsonl`, `errors.jsonl` and `manifest.json` ([`finalize`]).

pub mod checkpoint;
pub mod chunk;
pub mod finalize;
pub mod generation_record;
pub mod job;
pub mod manifest;
pub mod record;

pub const RESULTS: &str = "results.jsonl";
pub const ERRORS: &str = "errors.jsonl";
pub const MANIFEST: &str = "manifest.json";
/// The job's working objects; everything under it may be deleted once the job is finalized.
pub const WORK_DIR: &str = "_barge/";
