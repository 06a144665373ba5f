//! `barge-runner`: the command-line shell around the runner library. Errors become one clear
//! line on stderr and a non-zero exit; the final counts go to the termination message.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use barge_api::{Counts, Outcome, TerminationMessage};
use barge_runner::cli::{Cli, Command, FinalizeArgs, KernelChoice, LogFormat, RunArgs};
use barge_runner::decoder::Kernels;
use barge_runner::decoder::engine::EngineConfig;
use barge_runner::output::finalize;
use barge_runner::output::job::Batching;
use barge_runner::progress::{DEFAULT_TERMINATION_PATH, write_termination_message};
use barge_runner::run::{self as shard_run, RunConfig, RunSummary};
use barge_runner::shutdown::Stop;
use barge_runner::{model_source, storage};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Exit status of a run stopped by SIGTERM before its end: the shard is not done (128 + 15).
const EXIT_INTERRUPTED: u8 = 143;

fn main() -> ExitCode {
    #[cfg(all(feature = "openblas", target_arch = "x86_64"))]
    openblas_kernels();
    let cli = Cli::parse();
    let bar = match &cli.command {
        Command::Run(args) => !args.no_progress && std::io::stderr().is_terminal(),
        Command::Finalize(_) => false,
    };
    if let Command::Run(args) = &cli.command
        && let Some(n) = args.threads
    {
        set_thread_count(n);
    }
    init_logging(cli.log_format, bar);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("barge-runner: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(*args, bar).await,
            Command::Finalize(args) => run_finalize(args).await,
        }
    })
}

/// OpenBLAS picks its kernels from the CPU model when the library loads, and releases before
/// 0.3.26 (Debian 12 ships 0.3.21) fall back to their SSE3 kernels on Xeons they do not know,
/// 2–3× slower (measured in docs/benchmarks.md). It reads `OPENBLAS_CORETYPE` only at load, so
/// when that is unset the runner chooses from the CPU's features and restarts itself once.
#[cfg(all(feature = "openblas", target_arch = "x86_64"))]
#[allow(unsafe_code)]
fn openblas_kernels() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("OPENBLAS_CORETYPE").is_some() {
        return;
    }
    let core = if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
    {
        "SkylakeX"
    } else if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        "Haswell"
    } else {
        return;
    };
    let Ok(exe) = std::env::current_exe() else { return };
    // SAFETY: first thing in main, before any other thread exists.
    unsafe { std::env::set_var("OPENBLAS_CORETYPE", core) };
    let err = std::process::Command::new(exe).args(std::env::args_os().skip(1)).exec();
    // Only reached when the restart failed: go on with whatever kernels OpenBLAS chose.
    eprintln!("barge-runner: warning: cannot restart with OPENBLAS_CORETYPE={core}: {err}");
}

/// candle's CPU kernels size their thread pools from these variables when first used.
#[allow(unsafe_code)]
fn set_thread_count(n: u32) {
    // SAFETY: called first thing in main, before any other thread exists, so nothing can read
    // the environment concurrently.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    }
}

fn init_logging(format: LogFormat, bar: bool) {
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // With a progress bar, info lines would tear it; the bar and the summary say enough.
    let default = if bar { "warn" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.compact().init();
    }
}

fn termination_path(explicit: Option<PathBuf>) -> Option<PathBuf> {
    explicit.or_else(|| {
        Path::new(DEFAULT_TERMINATION_PATH).exists().then(|| PathBuf::from(DEFAULT_TERMINATION_PATH))
    })
}

fn fail(path: Option<&Path>, shard: Option<barge_api::ShardId>, error: &dyn std::error::Error) -> ExitCode {
    let message = error.to_string();
    tracing::error!(error = %message, "run failed");
    eprintln!("barge-runner: error: {message}");
    if let Some(path) = path {
        let msg = TerminationMessage {
            shard,
            outcome: Outcome::Failed,
            counts: Counts::default(),
            unprocessed: 0,
            message: Some(message),
        };
        write_termination_message(path, &msg);
    }
    ExitCode::FAILURE
}

async fn run(args: RunArgs, bar: bool) -> ExitCode {
    let termination = termination_path(args.termination_message_path.clone());
    let cfg = RunConfig {
        model: args.model,
        model_name: args.model_name,
        input: args.input,
        output: args.output,
        shard: args.shard,
        device: args.device,
        batching: Batching {
            max_batch_size: args.max_batch_size as usize,
            max_batch_tokens: args.max_batch_tokens as usize,
            window: args.window as usize,
        },
        defaults: args.defaults.unwrap_or_default(),
        max_line_bytes: args.max_line_bytes,
        overwrite: args.overwrite,
        s3: args.s3.options(),
        cache_dir: args.cache_dir.unwrap_or_else(model_source::default_cache_dir),
        listen: args.listen,
        progress_bar: bar,
        null_model: args.null_model,
        format: args.format.fixed(),
        generation: EngineConfig {
            max_seqs: args.max_seqs as usize,
            step_tokens: args.step_tokens as usize,
            kv_cache_mib: args.kv_cache_mib as usize,
        },
        kernels: match args.kernels {
            KernelChoice::Quantized => Kernels::Quantized,
            KernelChoice::F32 => Kernels::F32,
        },
    };
    let stop = Stop::default();
    stop.on_signals();
    let shard = cfg.shard;
    match shard_run::run_shard(cfg, stop).await {
        Ok(summary) => {
            report(&summary);
            let outcome = if summary.done { Outcome::Done } else { Outcome::Interrupted };
            if let Some(path) = &termination {
                let msg = TerminationMessage {
                    shard: Some(shard),
                    outcome,
                    counts: summary.counts,
                    unprocessed: 0,
                    message: None,
                };
                write_termination_message(path, &msg);
            }
            if summary.done { ExitCode::SUCCESS } else { ExitCode::from(EXIT_INTERRUPTED) }
        }
        Err(e) => fail(termination.as_deref(), Some(shard), &e),
    }
}

fn report(s: &RunSummary) {
    let c = &s.counts;
    let session = s.session.completed + s.session.failed;
    tracing::info!(
        shard = %s.shard, done = s.done, lines = c.lines, completed = c.completed, failed = c.failed,
        prompt_tokens = c.prompt_tokens, session_requests = session, seconds = s.seconds,
        "run finished"
    );
    if s.already_done {
        eprintln!("nothing to do: shard {} of this job is already complete", s.shard);
    } else if !s.done {
        eprintln!(
            "stopped after {} lines ({} ok, {} failed); run the same command again to resume",
            c.lines, c.completed, c.failed
        );
        return;
    } else {
        let rate = if s.seconds > 0.0 { session as f64 / s.seconds } else { 0.0 };
        eprintln!(
            "done: {} requests ({} ok, {} failed), {} prompt tokens; this run: {} requests in {:.1} s ({:.1} requests/s)",
            c.completed + c.failed,
            c.completed,
            c.failed,
            c.prompt_tokens,
            session,
            s.seconds,
            rate
        );
    }
    match &s.manifest {
        Some(m) => {
            eprintln!("results: {}", m.outputs.results);
            eprintln!("errors:  {} ({} failed)", m.outputs.errors, m.request_counts.failed);
        }
        None => eprintln!("shard {} done; run `barge-runner finalize` once every shard is done", s.shard),
    }
}

async fn run_finalize(args: FinalizeArgs) -> ExitCode {
    let termination = termination_path(args.termination_message_path.clone());
    let s3 = if args.output.is_s3() { Some(storage::s3_client(&args.s3.options()).await) } else { None };
    let store = storage::open(&args.output, &s3);
    if args.partial {
        // Cancelled or expired before any runner got as far as writing: there is nothing to
        // merge, which is a cancelled job's normal end, not a failed finalize.
        match finalize::read_job(store.as_ref()).await {
            Ok(None) => {
                let message = format!(
                    "{} holds no job yet (no runner had started writing): nothing to merge",
                    store.uri("")
                );
                eprintln!("{message}");
                if let Some(path) = &termination {
                    let msg = TerminationMessage {
                        shard: None,
                        outcome: Outcome::Done,
                        counts: Default::default(),
                        unprocessed: 0,
                        message: Some(message),
                    };
                    write_termination_message(path, &msg);
                }
                return ExitCode::SUCCESS;
            }
            Ok(Some(_)) => {}
            Err(e) => return fail(termination.as_deref(), None, &e),
        }
    }
    let merged = if args.partial {
        match partial_input(store.as_ref(), &s3, &args).await {
            Ok(input) => finalize::finalize_partial(store.as_ref(), args.shards, input).await,
            Err(e) => return fail(termination.as_deref(), None, e.as_ref()),
        }
    } else {
        finalize::finalize(store.as_ref(), args.shards).await
    };
    match merged {
        Ok(m) => {
            let counts = shard_run::manifest_counts(&m);
            eprintln!(
                "finalized {} shards: {} requests ({} ok, {} failed){}",
                args.shards,
                m.request_counts.total,
                m.request_counts.completed,
                m.request_counts.failed,
                if m.partial { format!("; {} never ran", m.unprocessed) } else { String::new() }
            );
            eprintln!("results: {}", m.outputs.results);
            eprintln!("errors:  {}", m.outputs.errors);
            if let Some(path) = &termination {
                let msg = TerminationMessage {
                    shard: None,
                    outcome: Outcome::Done,
                    counts,
                    unprocessed: m.unprocessed,
                    message: None,
                };
                write_termination_message(path, &msg);
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(termination.as_deref(), None, &e),
    }
}

/// Where a partial finalize reads the job's input from: the URI its job record names.
async fn partial_input(
    store: &dyn storage::ObjectStore,
    s3: &Option<aws_sdk_s3::Client>,
    args: &FinalizeArgs,
) -> Result<finalize::InputAccess, Box<dyn std::error::Error + Send + Sync>> {
    let job = finalize::read_job(store)
        .await?
        .ok_or_else(|| format!("{} holds no job (no _barge/job.json): nothing to finalize", store.uri("")))?;
    let input: barge_runner::location::Location = job.spec.input.parse()?;
    let (folder, key) =
        input.split_file().ok_or_else(|| format!("the job's input {} is not a file", job.spec.input))?;
    let s3 = match (s3, input.is_s3()) {
        (None, true) => Some(storage::s3_client(&args.s3.options()).await),
        _ => s3.clone(),
    };
    Ok(finalize::InputAccess { store: storage::open(&folder, &s3), key })
}
