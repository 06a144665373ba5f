//! `barge-operator`: with no arguments, runs the controller on the current kubeconfig (or the
//! in-cluster config); `barge-operator crd` prints the CRD.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use barge_operator::config::Config;
use barge_operator::metrics::Metrics;
use barge_operator::{controller, crd, http};
use clap::{Parser, Subcommand};
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;

#[derive(Parser)]
#[command(name = "barge-operator", version, about = "Reconciles BatchJob resources into runner pods")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print the BatchJob CustomResourceDefinition as YAML.
    Crd,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Operator config (YAML); built-in defaults when absent.
    #[arg(long, env = "BARGE_OPERATOR_CONFIG")]
    config: Option<PathBuf>,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080", env = "BARGE_OPERATOR_LISTEN")]
    listen: SocketAddr,
    /// Run only while holding a coordination.k8s.io Lease, so several replicas are safe.
    #[arg(long)]
    leader_election: bool,
    #[arg(long, default_value = "barge-operator")]
    lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's name in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Watch only this namespace's BatchJobs (all namespaces when absent).
    #[arg(long, env = "BARGE_WATCH_NAMESPACE")]
    namespace: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Crd) = cli.command {
        print!("{}", crd::yaml());
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_lease_manager=warn")),
        )
        .init();
    // A workspace build enables both of rustls' crypto providers (ring through kube, aws-lc-rs
    // through the runner's AWS SDK); rustls then refuses to pick one, so pick ring here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("barge-operator: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.run)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("barge-operator: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let cfg = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let client = Client::try_default().await.context("cannot find a kubeconfig or in-cluster config")?;
    if !controller::crd_installed(&client, args.namespace.as_deref())
        .await
        .context("cannot reach the Kubernetes API")?
    {
        anyhow::bail!(
            "the BatchJob CRD is not installed; install it with `kubectl apply -f crds/barge.dev_batchjobs.yaml` \
             or `helm install barge charts/barge`"
        );
    }
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let bound = http::serve(args.listen, metrics.clone(), ready.clone())
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(%bound, "serving /metrics, /healthz and /readyz");

    if !args.leader_election {
        controller::run(client, cfg, args.namespace.clone(), metrics, ready, shutdown_signal()).await;
        tracing::info!("stopped");
        return Ok(());
    }
    let identity = args.identity.clone().unwrap_or_else(|| format!("barge-operator-{}", std::process::id()));
    let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .context("cannot set up leader election")?;
    let (mut leader, lease_task) = manager.watch().await;
    tracing::info!(%identity, lease = %args.lease_name, "waiting to become the leader");
    // A standby is ready: it has nothing to sync until it leads, and can take over at once.
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::select! {
        _ = shutdown_signal() => return Ok(()),
        res = leader.wait_for(|is| *is) => { res.context("leader election stopped")?; }
    }
    tracing::info!(%identity, "became the leader");
    let mut lost = leader.clone();
    let stop = async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = lost.wait_for(|is| !*is) => tracing::warn!("lost the leader lease; stopping"),
        }
    };
    controller::run(client, cfg, args.namespace.clone(), metrics, ready, stop).await;
    let still_leader = *leader.borrow();
    // Dropping the receiver makes the lease task release the lease, so a standby takes over at once.
    drop(leader);
    let _ = lease_task.await;
    if !still_leader {
        anyhow::bail!("lost the leader lease");
    }
    tracing::info!("stopped and released the lease");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
