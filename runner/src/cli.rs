//! The command line: `barge-runner run` and `barge-runner finalize`.

use std::net::SocketAddr;
use std::path::PathBuf;

use barge_api::InputFormat;
use barge_api::ShardId;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value};

use crate::device::DeviceChoice;
use crate::location::Location;
use crate::storage::S3Options;

#[derive(Debug, Parser)]
#[command(
    name = "barge-runner",
    version,
    about = "Runs a batch of LLM requests (a JSONL file, OpenAI batch format) through a local model",
    long_about = "Runs a batch of LLM requests (a JSONL file, OpenAI batch format) through a local model and \
                  writes results.jsonl, errors.jsonl and manifest.json. Inputs, outputs and models may be local \
                  paths or s3://bucket/key URIs. A killed run resumes from its last checkpoint when started \
                  again with the same arguments."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format: `auto` is text on a terminal and JSON lines otherwise.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto, env = "BARGE_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Process the input (or one shard of it); an unsharded run also finalizes.
    Run(Box<RunArgs>),
    /// Merge every shard's work into results.jsonl, errors.jsonl and manifest.json.
    Finalize(FinalizeArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KernelChoice {
    /// llama.cpp's block kernels on the GGUF's own 4/5/8-bit blocks (its arithmetic exactly;
    /// k-quant tensors run as f32).
    Quantized,
    /// Weights dequantized once to f32, multiplied with large GEMMs.
    F32,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The model: an embedding encoder folder (config.json, model.safetensors, tokenizer.json,
    /// plus sentence-transformers' modules.json, 1_Pooling/ and sentence_bert_config.json when
    /// present), a decoder's .gguf file, or a Llama-family safetensors folder; a local path or
    /// an s3:// URI (downloaded once into --cache-dir).
    #[arg(long, env = "BARGE_MODEL")]
    pub model: Location,

    /// The name results report as `model` [default: the model folder's name].
    #[arg(long, env = "BARGE_MODEL_NAME")]
    pub model_name: Option<String>,

    /// The requests: one JSONL file, a local path or an s3://bucket/key.
    #[arg(long, env = "BARGE_INPUT")]
    pub input: Location,

    /// The output folder (local path or s3://bucket/prefix/) for results.jsonl, errors.jsonl,
    /// manifest.json and the run's working files under _barge/.
    #[arg(long, env = "BARGE_OUTPUT")]
    pub output: Location,

    /// The input format: `auto` (decide from the input's first request line: `params` means
    /// Anthropic, `body` OpenAI), `openai` (`{"custom_id", "method", "url", "body"}` lines) or
    /// `anthropic` (Message Batches lines, `{"custom_id", "params"}`; chat models only).
    #[arg(long, default_value_t = InputFormat::Auto)]
    pub format: InputFormat,

    /// Process only shard I of N (0-based), e.g. 2/4: the lines that start in its quarter of the
    /// file's bytes. Run `finalize` once every shard is done.
    #[arg(long, default_value = "0/1", env = "BARGE_SHARD")]
    pub shard: ShardId,

    /// Decoder models: sequences generating together (continuous batching).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_seqs: u32,

    /// Decoder models: tokens in one forward pass, prompt chunks included (long prompts are
    /// read in chunks of this size).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub step_tokens: u32,

    /// Decoder models: how quantized GGUF weights are multiplied (see docs/generation.md).
    #[arg(long, value_enum, default_value_t = KernelChoice::Quantized)]
    pub kernels: KernelChoice,

    /// Decoder models: memory for the KV cache, in MiB. Requests wait for room rather than
    /// exceed it.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub kv_cache_mib: u32,

    /// Most sequences in one model batch.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_batch_size: u32,

    /// Most tokens in one model batch, counted after padding to the batch's longest sequence.
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_tokens: u32,

    /// Lines read ahead and sorted by length before batching; also the checkpoint interval.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub window: u32,

    /// Where inference runs: `auto` (the first CUDA GPU when this binary is built with CUDA and
    /// the machine has a usable one, else the CPU), `cpu`, or `cuda` / `cuda:N` (that GPU; a run
    /// that cannot have it fails at once, saying why).
    #[arg(long, default_value_t = DeviceChoice::Auto, env = "BARGE_DEVICE")]
    pub device: DeviceChoice,

    /// CPU threads for inference [default: all cores].
    #[arg(long, env = "BARGE_THREADS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,

    /// Request body fields (JSON object) used where a line leaves them out, e.g.
    /// '{"encoding_format":"base64"}'.
    #[arg(long, value_parser = parse_defaults, env = "BARGE_DEFAULTS")]
    pub defaults: Option<Map<String, Value>>,

    /// Longer input lines become `line_too_long` errors.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub max_line_bytes: usize,

    /// Replace an output that holds a different job (or start this one over).
    #[arg(long)]
    pub overwrite: bool,

    /// Serve GET /progress (JSON) and GET /metrics (Prometheus) on this address, e.g. 0.0.0.0:8080.
    #[arg(long, env = "BARGE_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Write the final counts here as JSON at exit [default: /dev/termination-log when it exists].
    #[arg(long, env = "BARGE_TERMINATION_MESSAGE_PATH")]
    pub termination_message_path: Option<PathBuf>,

    /// Where models fetched from S3 are kept [default: $XDG_CACHE_HOME/barge or ~/.cache/barge].
    #[arg(long, env = "BARGE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Never draw a progress bar, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,

    /// Benchmarks only: tokenize and write as usual but skip the model (zero vectors).
    #[arg(long, hide = true)]
    pub null_model: bool,

    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Debug, Args)]
pub struct FinalizeArgs {
    /// The job's output folder (local path or s3://bucket/prefix/).
    #[arg(long, env = "BARGE_OUTPUT")]
    pub output: Location,

    /// How many shards the job was split into.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub shards: u32,

    /// Merge what the shards finished even though some did not (a cancelled or expired job);
    /// the requests they never ran are counted as `unprocessed` in the manifest.
    #[arg(long)]
    pub partial: bool,

    /// Write the final counts here as JSON at exit [default: /dev/termination-log when it exists].
    #[arg(long, env = "BARGE_TERMINATION_MESSAGE_PATH")]
    pub termination_message_path: Option<PathBuf>,

    #[command(flatten)]
    pub s3: S3Args,
}

/// S3 settings; credentials come from the default AWS chain (environment, profile, IRSA, …)
/// and are never printed.
#[derive(Debug, Args)]
pub struct S3Args {
    /// S3 endpoint for MinIO and other S3-compatible stores.
    #[arg(long = "s3-endpoint", env = "AWS_ENDPOINT_URL")]
    pub endpoint: Option<String>,

    /// S3 region [default: from the AWS environment, else us-east-1].
    #[arg(long = "s3-region")]
    pub region: Option<String>,

    /// Path-style bucket addressing [default: true when an endpoint is set].
    #[arg(long = "s3-force-path-style", env = "BARGE_S3_FORCE_PATH_STYLE")]
    pub force_path_style: Option<bool>,
}

impl S3Args {
    pub fn options(&self) -> S3Options {
        S3Options {
            endpoint: self.endpoint.clone().filter(|e| !e.is_empty()),
            region: self.region.clone(),
            force_path_style: self.force_path_style,
        }
    }
}

fn parse_defaults(s: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("--defaults must be a JSON object".to_string()),
        Err(e) => Err(format!("--defaults is not valid JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_a_sharded_s3_run() {
        let cli = Cli::try_parse_from([
            "barge-runner",
            "run",
            "--model",
            "s3://models/minilm/",
            "--input",
            "s3://data/in.jsonl",
            "--output",
            "s3://data/out/",
            "--shard",
            "1/3",
            "--defaults",
            r#"{"encoding_format":"base64"}"#,
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else { panic!("a run") };
        assert_eq!(args.shard, ShardId { index: 1, count: 3 });
        assert!(args.output.is_s3());
        assert_eq!(args.defaults.expect("defaults")["encoding_format"], "base64");
    }

    #[test]
    fn the_device_defaults_to_auto_and_takes_a_gpu_number() {
        let device = |extra: &[&str]| {
            let mut args = vec!["barge-runner", "run", "--model", "m", "--input", "i", "--output", "o"];
            args.extend(extra);
            let cli = Cli::try_parse_from(args).expect("parses");
            let Command::Run(args) = cli.command else { panic!("a run") };
            args.device
        };
        assert_eq!(device(&[]), DeviceChoice::Auto);
        assert_eq!(device(&["--device", "cpu"]), DeviceChoice::Cpu);
        assert_eq!(device(&["--device", "cuda:1"]), DeviceChoice::Cuda(1));
    }

    #[test]
    fn rejects_bad_values_with_their_names() {
        for (flag, value, needle) in [
            ("--device", "gpu:0", "unknown device `gpu:0`"),
            ("--shard", "3/3", "shard `3/3`"),
            ("--defaults", "[1]", "JSON object"),
            ("--input", "gs://x/y", "gs://x/y"),
        ] {
            let mut args = vec!["barge-runner", "run", "--model", "m", "--output", "o", flag, value];
            if flag != "--input" {
                args.extend(["--input", "i"]);
            }
            let err = Cli::try_parse_from(args).expect_err(flag);
            assert!(err.to_string().contains(needle), "{err}");
        }
    }
}
