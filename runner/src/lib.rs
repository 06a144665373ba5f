//! Barge's runner: a JSONL file of batch requests in, results out, with checkpoints so a killed
//! run loses nothing. The binary (`main.rs`) is a thin shell over [`pipeline::run`] and
//! [`output::finalize::finalize`].

pub mod backend;
pub mod batcher;
pub mod cli;
pub mod clock;
pub mod decoder;
pub mod device;
pub mod generation;
pub mod input;
pub mod location;
pub mod metrics;
pub mod model_source;
pub mod models;
pub mod output;
pub mod pipeline;
pub mod progress;
pub mod shutdown;
pub mod storage;
