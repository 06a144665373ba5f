//! The contract between Barge's users, its operator and its runner pods.
//!
//! No IO lives here: the `BatchJob` resource (feature `crd`) and the JSON shapes operator and
//! runner agree on, so the operator can read what a runner reports without the runner's code.

#[cfg(feature = "crd")]
pub mod batchjob;
pub mod format;
pub mod progress;

pub use format::{Format, InputFormat};
pub use progress::{Counts, Outcome, Progress, ShardId, TerminationMessage};
