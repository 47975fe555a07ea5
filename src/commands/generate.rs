//! `weir generate`: synthetic events to a file or standard output.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use weir_connectors::generator::{write_events, GeneratorConfig, OutputFormat, Shape};

/// Arguments of `weir generate`.
#[derive(Args)]
pub struct GenerateArgs {
    /// Event shape.
    #[arg(long, value_enum, default_value = "bench")]
    pub shape: ShapeArg,
    /// Events per partition.
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// Interleaved partitions (independent event streams).
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Distinct keys (bench) or users (activity).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Events per second of event time.
    #[arg(long, default_value_t = 1666.67)]
    pub events_per_second_of_event_time: f64,
    /// Maximum out-of-orderness of event times, in ms.
    #[arg(long, default_value_t = 100)]
    pub max_out_of_orderness_ms: u64,
    /// Share of late events (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub late_ratio: f64,
    /// Share of malformed records (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub malformed_ratio: f64,
    /// Event time of the first event (RFC 3339).
    #[arg(long)]
    pub start_time: Option<String>,
    /// Seed of the deterministic sequence.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output format.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: FormatArg,
    /// Output file; standard output when absent.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

/// Event shapes on the command line.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ShapeArg {
    /// `{ts_ms, key, value}`.
    Bench,
    /// `{event_id, user_id, event_type, product, session_id, value, timestamp}`.
    Activity,
}

/// Output formats on the command line.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    /// JSON lines.
    Jsonl,
    /// CSV with a header row.
    Csv,
}

impl GenerateArgs {
    /// The generator configuration these arguments describe.
    pub fn config(&self) -> GeneratorConfig {
        GeneratorConfig {
            shape: match self.shape {
                ShapeArg::Bench => Shape::Bench,
                ShapeArg::Activity => Shape::Activity,
            },
            count: Some(self.count),
            partitions: self.partitions,
            keys: self.keys,
            events_per_second_of_event_time: Some(self.events_per_second_of_event_time),
            start_time: self.start_time.clone(),
            max_out_of_orderness_ms: self.max_out_of_orderness_ms,
            late_ratio: self.late_ratio,
            malformed_ratio: self.malformed_ratio,
            seed: self.seed,
            ..GeneratorConfig::default()
        }
    }

    /// The output format.
    pub fn output_format(&self) -> OutputFormat {
        match self.format {
            FormatArg::Jsonl => OutputFormat::Jsonl,
            FormatArg::Csv => OutputFormat::Csv,
        }
    }
}

/// Writes the events.
pub fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let config = args.config();
    let written = match &args.out {
        Some(path) => {
            let file =
                File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            let mut out = BufWriter::with_capacity(1 << 20, file);
            let n = write_events(&config, args.output_format(), &mut out)?;
            out.flush()?;
            n
        }
        None => {
            let stdout = std::io::stdout();
            let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
            let n = write_events(&config, args.output_format(), &mut out)?;
            out.flush()?;
            n
        }
    };
    tracing::info!(events = written, "generated");
    Ok(ExitCode::SUCCESS)
}
