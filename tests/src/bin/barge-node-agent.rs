//! `barge-node-agent`: registers a Node and runs the pods bound to it as local processes.
//! See `barge_e2e::node_agent`.

use std::io::IsTerminal;

use anyhow::Context;
use barge_e2e::node_agent::{self, Cli};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    barge_e2e::install_crypto_provider();
    let cfg = cli.into_config(std::env::home_dir());
    for mapping in cfg.images.mappings() {
        if !mapping.binary.exists() {
            tracing::warn!(image = %mapping.image, binary = %mapping.binary.display(), "image binary does not exist");
        }
    }
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    };
    let node = cfg.node.name.clone();
    node_agent::run(cfg, shutdown).await.with_context(|| format!("node agent {node} failed"))
}
