//! What a run does with its requests, one file per kind of model: each supplies the prepare,
//! model and encode bodies that `stages.rs` runs.

pub mod embed;
pub mod generate;
