//! End-to-end tests of the `barge-runner` binary on the real MiniLM model, local files and a
//! real S3 server (MinIO) on loopback. One test binary, so the large link happens once.

mod common;

mod chat;
mod cuda_build;
mod embeddings;
mod fencing;
mod malformed;
mod resume;
mod s3;
mod shards;
