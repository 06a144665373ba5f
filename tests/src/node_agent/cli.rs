//! The node agent's command line.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::images::{ImageMapping, Images};
use super::node::NodeConfig;

/// Variables of the agent's own environment that every pod's process inherits. The rest of a
/// process's environment is the pod's, as in a container. `BARGE_TESTBED_OWNER` is how the
/// testbed recognises (and stops) everything it started, pods' processes included.
pub const INHERITED_ENV: [&str; 9] =
    ["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "RUST_BACKTRACE", "BARGE_TESTBED_OWNER"];

/// A small kubelet for Barge's test cluster: registers a Node and runs every pod the scheduler
/// binds to it as a local process (no containers), reporting status like a kubelet.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "barge-node-agent", version)]
pub struct Cli {
    /// Kubeconfig to use [default: $KUBECONFIG, then ~/.kube/config].
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Name of the Node to register.
    #[arg(long, default_value = "barge-node-0")]
    pub node_name: String,

    /// Where pods' folders (volumes, logs, termination messages) live
    /// [default: ~/.cache/barge/node-agent/NODE_NAME].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// An image this node can run, without its tag, and the binary that plays it
    /// (`ghcr.io/barge-dev/barge-runner=/path/to/barge-runner`). A name without a registry
    /// (`barge-runner=/path`) matches any image whose last path component it is. Repeatable.
    #[arg(long = "image", value_name = "IMAGE=PATH")]
    pub images: Vec<ImageMapping>,

    /// CPU capacity.
    #[arg(long, default_value = "16")]
    pub cpu: String,

    /// Memory capacity, as a Kubernetes quantity.
    #[arg(long, default_value = "64Gi")]
    pub memory: String,

    /// Number of `nvidia.com/gpu` the node offers.
    #[arg(long, default_value_t = 8)]
    pub gpus: u32,

    /// Value of the node's `nvidia.com/gpu.product` label.
    #[arg(long, default_value = "NVIDIA-H100-80GB-HBM3")]
    pub gpu_product: String,

    /// Extra node labels.
    #[arg(long, value_name = "K=V,...", value_parser = parse_labels)]
    pub labels: Option<Labels>,

    /// Leading octets of pod IPs: `127.1` gives 127.1.0.2, 127.1.0.3, … (must be in 127.0.0.0/8).
    #[arg(long, default_value = "127.1")]
    pub pod_ip_base: String,

    /// A further variable of the agent's environment that pods inherit (besides PATH, HOME,
    /// USER, LOGNAME, LANG, LC_ALL, TZ, RUST_BACKTRACE and BARGE_TESTBED_OWNER). Repeatable.
    #[arg(long = "pass-env", value_name = "NAME")]
    pub pass_env: Vec<String>,
}

/// Node labels from `--labels`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(pub BTreeMap<String, String>);

/// `k=v,k2=v2` as labels.
pub fn parse_labels(s: &str) -> Result<Labels, String> {
    let mut labels = BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => labels.insert(k.to_string(), v.to_string()),
            _ => return Err(format!("invalid label {pair:?}: expected KEY=VALUE")),
        };
    }
    Ok(Labels(labels))
}

/// Everything the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub kubeconfig: Option<PathBuf>,
    pub node: NodeConfig,
    pub state_dir: PathBuf,
    pub images: Images,
    pub pod_ip_base: String,
    /// Names of the agent's variables that pods inherit.
    pub inherited_env: Vec<String>,
}

impl Cli {
    /// The agent's config; `home` is where the default state folder goes.
    pub fn into_config(self, home: Option<PathBuf>) -> Config {
        let state_dir = self.state_dir.unwrap_or_else(|| {
            let base = home.unwrap_or_else(std::env::temp_dir);
            base.join(".cache/barge/node-agent").join(&self.node_name)
        });
        let mut inherited_env: Vec<String> = INHERITED_ENV.iter().map(|s| s.to_string()).collect();
        inherited_env.extend(self.pass_env);
        Config {
            kubeconfig: self.kubeconfig,
            node: NodeConfig {
                name: self.node_name,
                cpu: self.cpu,
                memory: self.memory,
                gpus: self.gpus,
                gpu_product: self.gpu_product,
                labels: self.labels.unwrap_or_default().0,
            },
            state_dir,
            images: Images::new(self.images),
            pod_ip_base: self.pod_ip_base,
            inherited_env,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn labels_parse_from_a_comma_separated_list() {
        let labels = parse_labels("pool=gpu, zone=a,").expect("valid labels");
        assert_eq!(
            labels.0.into_iter().collect::<Vec<_>>(),
            [("pool".into(), "gpu".into()), ("zone".into(), "a".into())]
        );
        assert!(parse_labels("novalue").is_err());
    }

    #[test]
    fn the_command_line_becomes_one_config() {
        let cli = Cli::try_parse_from([
            "barge-node-agent",
            "--node-name",
            "n1",
            "--image",
            "barge-runner=/bin/runner",
            "--image",
            "busybox=/bin/busybox",
            "--gpus",
            "2",
            "--labels",
            "pool=gpu",
            "--pass-env",
            "AWS_REGION",
        ])
        .expect("valid command line");
        let cfg = cli.into_config(Some("/home/u".into()));
        assert_eq!(cfg.state_dir, PathBuf::from("/home/u/.cache/barge/node-agent/n1"));
        assert_eq!(cfg.node.gpus, 2);
        assert_eq!(cfg.node.labels["pool"], "gpu");
        assert_eq!(cfg.images.binary_for("ghcr.io/x/busybox:1"), Some(std::path::Path::new("/bin/busybox")));
        assert!(cfg.inherited_env.contains(&"AWS_REGION".to_string()));
        assert!(cfg.inherited_env.contains(&"PATH".to_string()));
    }

    #[test]
    fn a_bad_image_mapping_is_refused() {
        assert!(Cli::try_parse_from(["barge-node-agent", "--image", "runner"]).is_err());
    }
}
