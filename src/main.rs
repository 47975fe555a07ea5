//! The `weir` command line: wiring only; each command lives in `commands/`.

mod commands;
mod http;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// jemalloc for every allocation of the process: it also replaces `malloc` for librdkafka and
/// RocksDB. With glibc's allocator, librdkafka's fetch threads spent about a fifth of their
/// time in page faults and `mprotect` as per-thread heaps grew and shrank.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Weir: a Kafka-compatible stream processor with a windowed aggregation engine.
#[derive(Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a topology until its input ends (bounded sources) or Ctrl-C; resumes from the last
    /// checkpoint after a stop or crash.
    Run(commands::run::RunArgs),
    /// Check a topology and print every problem with its YAML path (exit code 2 if any).
    Validate {
        /// The topology file.
        file: PathBuf,
    },
    /// Write synthetic events (JSON lines or CSV) to a file or standard output.
    Generate(commands::generate::GenerateArgs),
    /// Run the benchmark workloads end to end and print throughput, latency and memory.
    Bench(commands::bench::BenchArgs),
    /// Publish generated events to a Kafka topic (JSON or Confluent-framed Avro), keyed by
    /// user, with the event time as the message timestamp.
    #[cfg(feature = "kafka")]
    Produce(commands::produce::ProduceArgs),
    /// Measure Weir's Redis and MongoDB connectors against plain clients of the same servers,
    /// in one run (rates and ratios).
    BenchIo(commands::bench_io::BenchIoArgs),
    /// Print the JSON Schema of topology.yaml.
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => commands::run::run(args),
        Command::Validate { file } => commands::validate::validate(&file),
        Command::Generate(args) => commands::generate::generate(args),
        Command::Bench(args) => commands::bench::bench(args),
        #[cfg(feature = "kafka")]
        Command::Produce(args) => commands::produce::produce(args),
        Command::BenchIo(args) => commands::bench_io::bench_io(args),
        Command::Schema => {
            let schema = weir_engine::topology::json_schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
    };
    // Kafka clients closed in the background finish first (at most a few seconds).
    #[cfg(feature = "kafka")]
    if !weir_connectors::kafka::finish_background_closes(std::time::Duration::from_secs(5)) {
        tracing::warn!("Kafka clients were still closing when the process exited");
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,weir=info,weir_engine=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
