//! The operator's configuration: a YAML file (the Helm chart's ConfigMap) with defaults for
//! every field, so `barge-operator` with no arguments runs on a laptop's cluster.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Config {
    /// Image of the runner pods unless a job names its own.
    pub runner_image: String,
    pub runner_image_pull_policy: String,
    pub queue: QueueConfig,
    pub pricing: PriceTable,
    pub progress: ProgressConfig,
    /// How long a pod may fail to pull its image or find its Secret before its job fails:
    /// registries hiccup and Secrets are often created just after the job.
    pub start_grace_seconds: u64,
}

impl Config {
    pub fn start_grace(&self) -> Duration {
        Duration::from_secs(self.start_grace_seconds)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            runner_image: format!("ghcr.io/barge-dev/barge-runner:{}", env!("CARGO_PKG_VERSION")),
            runner_image_pull_policy: "IfNotPresent".into(),
            queue: QueueConfig::default(),
            pricing: PriceTable::default(),
            progress: ProgressConfig::default(),
            start_grace_seconds: 300,
        }
    }
}

/// Operator-wide limits; 0 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct QueueConfig {
    pub max_running_jobs: u32,
    pub max_running_pods: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PriceTable {
    pub currency: String,
    /// Price of one GPU-hour by `spec.resources.gpuType`.
    pub gpu_per_hour: BTreeMap<String, f64>,
    /// For a GPU type the table does not name.
    pub default_gpu_per_hour: f64,
    /// Price of one CPU-hour, for CPU-only jobs.
    pub cpu_per_hour: f64,
}

impl Default for PriceTable {
    fn default() -> Self {
        PriceTable {
            currency: "USD".into(),
            gpu_per_hour: BTreeMap::new(),
            default_gpu_per_hour: 2.0,
            cpu_per_hour: 0.04,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ProgressConfig {
    /// How often a running job's pods are asked for their progress.
    pub poll_interval_seconds: u64,
    /// How long one ask may take; a hung runner costs its own job this much, no more.
    pub timeout_milliseconds: u64,
    /// Port the runners serve `/progress` on.
    pub port: u16,
}

impl Default for ProgressConfig {
    fn default() -> Self {
        ProgressConfig { poll_interval_seconds: 10, timeout_milliseconds: 2000, port: 9090 }
    }
}

impl ProgressConfig {
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.poll_interval_seconds.max(1))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_milliseconds.max(50))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_yaml::Error,
    },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::parse(&text).map_err(|source| ConfigError::Parse { path: path.display().to_string(), source })
    }

    pub fn parse(text: &str) -> Result<Config, serde_yaml::Error> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_charts_config_shape_parses_and_missing_fields_take_defaults() {
        let cfg = Config::parse(
            "runnerImage: r:1\nqueue:\n  maxRunningJobs: 5\npricing:\n  gpuPerHour:\n    nvidia-h100: 2.49\n",
        )
        .expect("parses");
        assert_eq!(cfg.runner_image, "r:1");
        assert_eq!(cfg.queue.max_running_jobs, 5);
        assert_eq!(cfg.queue.max_running_pods, 0);
        assert_eq!(cfg.pricing.gpu_per_hour["nvidia-h100"], 2.49);
        assert_eq!(cfg.pricing.currency, "USD");
        assert_eq!(cfg.progress.port, 9090);
        assert_eq!(Config::parse("").expect("empty is fine"), Config::default());
    }

    #[test]
    fn a_misspelt_key_is_refused_by_name() {
        let err = Config::parse("queue:\n  maxRunningJob: 5\n").expect_err("unknown key");
        assert!(err.to_string().contains("maxRunningJob"), "{err}");
    }
}
