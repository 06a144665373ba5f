//! Barge's operator: reconciles `BatchJob` resources into runner pods and reports their
//! progress and cost. Decisions are pure (`plan`, `queue`, `runner_pod`, `cost`,
//! `conditions`, `validate`); `controller` does the IO.

pub mod conditions;
pub mod config;
pub mod controller;
pub mod cost;
pub mod crd;
pub mod error;
pub mod events;
#[cfg(test)]
pub mod fixtures;
pub mod http;
pub mod metrics;
pub mod output_owner;
pub mod plan;
pub mod pod_view;
pub mod progress_client;
pub mod queue;
pub mod runner_pod;
pub mod untrusted;
pub mod validate;
