//! Barge's runner: a JSONL file of batch requests in, results out, with checkpoints so a killed
//! run loses nothing. The binary (`main.rs`) is a thin shell over [`run::run_shard`] and
//! [`output::finalize::finalize`]; `docs/architecture.md` draws the tree and its rule.

pub mod architectures;
pub mod backend;
pub mod batcher;
pub mod cli;
pub mod clock;
pub mod decoder;
pub mod device;
pub mod input;
pub mod location;
pub mod metrics;
pub mod model_source;
pub mod models;
pub mod output;
pub mod progress;
pub mod run;
pub mod shutdown;
pub mod stages;
pub mod storage;
pub mod tasks;
pub mod types;
