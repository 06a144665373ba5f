//! The contract between Barge's operator and its runner pods.
//!
//! No IO lives here: only the JSON shapes both sides agree on, so the operator can read what a
//! runner reports without depending on the runner's code.

pub mod progress;

pub use progress::{Counts, Outcome, Progress, ShardId, TerminationMessage};
