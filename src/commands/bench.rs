//! `weir bench`: the end-to-end benchmark workloads of the README.
//!
//! Generates the input once (benchmark shape, 1M events per ~10 minutes of event time, up to
//! 100 ms out of order), measures a parse-only baseline in this process, then runs each query
//! as a child `weir run` (so each gets its own peak RSS), pinned to one CPU by default.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use weir_connectors::generator::{write_events, GeneratorConfig, OutputFormat, Shape};
use weir_engine::event::decode::{CsvDecoder, JsonDecoder};
use weir_engine::event::FieldSlots;
use weir_engine::runtime::DecodeContext;
use weir_engine::topology::{EventTimeSpec, TimeFormat};

/// Arguments of `weir bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Events in the input file.
    #[arg(long, default_value_t = 10_000_000)]
    pub events: u64,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Input format.
    #[arg(long, value_enum, default_value = "csv")]
    pub format: super::generate::FormatArg,
    /// Queries to run, comma-separated: tumbling, sliding, session, wide (a 1-day window that
    /// keeps every key live, for the memory budget).
    #[arg(long, default_value = "tumbling,sliding,session")]
    pub queries: String,
    /// Pin everything to this CPU (one core); `--cpu none` uses every core.
    #[arg(long, default_value = "0")]
    pub cpu: String,
    /// Checkpoint interval of the runs.
    #[arg(long, default_value = "1s")]
    pub checkpoint_interval: String,
    /// `state.memory_budget` of the runs (hot window state; the rest is evicted to RocksDB).
    #[arg(long, default_value = "512MiB")]
    pub memory_budget: String,
    /// Working directory (input, state, outputs).
    #[arg(long, default_value = "./data/bench")]
    pub dir: PathBuf,
}

struct QueryRun {
    name: &'static str,
    events_per_s: f64,
    elapsed_s: f64,
    results: u64,
    checkpoint_p50_ms: f64,
    checkpoint_p99_ms: f64,
    peak_rss_mib: f64,
}

/// Runs the benchmark and prints a table.
pub fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let cpu = match args.cpu.as_str() {
        "none" | "all" => None,
        n => Some(
            n.parse::<usize>()
                .context("--cpu takes a CPU number or `none`")?,
        ),
    };
    if let Some(cpu) = cpu {
        super::pin_to_cpu(cpu)?;
    }
    fs::create_dir_all(&args.dir)?;
    let csv = matches!(args.format, super::generate::FormatArg::Csv);
    let input = args.dir.join(format!(
        "input-{}-{}.{}",
        args.events,
        args.keys,
        if csv { "csv" } else { "jsonl" }
    ));
    if !input.exists() {
        eprintln!(
            "generating {} events into {} ...",
            args.events,
            input.display()
        );
        let config = GeneratorConfig {
            shape: Shape::Bench,
            count: Some(args.events),
            keys: args.keys,
            events_per_second_of_event_time: Some(1_000_000.0 / 600.0),
            max_out_of_orderness_ms: 100,
            ..GeneratorConfig::default()
        };
        let tmp = input.with_extension("tmp");
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        let format = if csv {
            OutputFormat::Csv
        } else {
            OutputFormat::Jsonl
        };
        write_events(&config, format, &mut out)?;
        out.flush()?;
        fs::rename(&tmp, &input)?;
    }

    let baseline = parse_baseline(&input, csv)?;
    eprintln!(
        "baseline (read + parse only, one thread): {}",
        rate(baseline)
    );

    let mut runs = Vec::new();
    for query in args
        .queries
        .split(',')
        .map(str::trim)
        .filter(|q| !q.is_empty())
    {
        let (name, window): (&'static str, &str) = match query {
            "tumbling" => ("tumbling 1m count/sum/avg", "{type: tumbling, size: 1m}"),
            "sliding" => (
                "sliding 5m every 1m count",
                "{type: sliding, size: 5m, slide: 1m}",
            ),
            "session" => ("session 30s gap count", "{type: session, gap: 30s}"),
            // Every key stays live until the end of input: the memory-budget case.
            "wide" => ("tumbling 1d count (all live)", "{type: tumbling, size: 1d}"),
            other => bail!("unknown query `{other}` (tumbling, sliding, session, wide)"),
        };
        let aggregates = if query == "tumbling" {
            "[{name: n, fn: count}, {name: total, fn: sum, field: value}, {name: mean, fn: avg, field: value}]"
        } else {
            "[{name: n, fn: count}]"
        };
        let run_dir = args.dir.join(query);
        if run_dir.exists() {
            fs::remove_dir_all(&run_dir)?;
        }
        fs::create_dir_all(&run_dir)?;
        let topology = format!(
            "name: bench-{query}\n\
             sources:\n  input:\n    type: file\n    path: {input}\n    format: {format}\n    \
             event_time: {{field: ts_ms, format: epoch_millis}}\n    \
             watermark: {{max_out_of_orderness: 100ms}}\n\
             pipelines:\n  q:\n    source: input\n    key_by: [key]\n    window: {window}\n    \
             aggregates: {aggregates}\n    sinks: [out]\n\
             sinks:\n  out: {{type: file, path: {out}}}\n\
             state: {{dir: {state}, memory_budget: {budget}}}\n\
             checkpoint: {{interval: {interval}}}\n",
            input = input.display(),
            format = if csv { "csv" } else { "jsonl" },
            out = run_dir.join("results.jsonl").display(),
            state = run_dir.join("state").display(),
            interval = args.checkpoint_interval,
            budget = args.memory_budget,
        );
        let yaml = run_dir.join("topology.yaml");
        fs::write(&yaml, topology)?;
        eprintln!("running {name} ...");
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.args(["run", "--no-status", "--summary-json"])
            .arg(&yaml);
        if cpu.is_some() {
            cmd.args(["--shards", "1"]);
        }
        let output = cmd.output().context("cannot start `weir run`")?;
        if !output.status.success() {
            bail!("{name} failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let summary: serde_json::Value = stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .context("no summary from `weir run`")?;
        let events = summary["events_in"].as_u64().unwrap_or(0);
        let elapsed = summary["elapsed_s"].as_f64().unwrap_or(f64::NAN);
        let mut checkpoints: Vec<u64> = summary["checkpoint_us"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default();
        checkpoints.sort_unstable();
        runs.push(QueryRun {
            name,
            events_per_s: events as f64 / elapsed,
            elapsed_s: elapsed,
            results: summary["results_out"].as_u64().unwrap_or(0),
            checkpoint_p50_ms: percentile(&checkpoints, 0.50) / 1000.0,
            checkpoint_p99_ms: percentile(&checkpoints, 0.99) / 1000.0,
            peak_rss_mib: summary["peak_rss_bytes"].as_u64().unwrap_or(0) as f64 / (1 << 20) as f64,
        });
    }

    println!(
        "\n{} events, {} keys, {} input, memory budget {}, {}",
        args.events,
        args.keys,
        if csv { "CSV" } else { "JSONL" },
        args.memory_budget,
        match cpu {
            Some(c) => format!("pinned to CPU {c}"),
            None => "all cores".into(),
        }
    );
    println!("baseline: read + parse only      {:>12}", rate(baseline));
    println!(
        "{:<28} {:>12} {:>9} {:>8} {:>11} {:>15} {:>9}",
        "query", "events/s", "vs parse", "time s", "results", "ckpt p50/p99 ms", "peak RSS"
    );
    for r in &runs {
        println!(
            "{:<28} {:>12} {:>8.2}x {:>8.2} {:>11} {:>7.1}/{:<7.1} {:>6.0}MiB",
            r.name,
            rate(r.events_per_s),
            r.events_per_s / baseline,
            r.elapsed_s,
            r.results,
            r.checkpoint_p50_ms,
            r.checkpoint_p99_ms,
            r.peak_rss_mib
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Decodes one line into its event time (`None` if it is rejected).
type DecodeTime = dyn FnMut(&[u8]) -> Option<i64>;

/// Reads and decodes every line of `input` on one thread; returns records per second.
fn parse_baseline(input: &Path, csv: bool) -> anyhow::Result<f64> {
    let mut slots = FieldSlots::default();
    slots.slot("key");
    slots.slot("value");
    let ctx = DecodeContext {
        source_name: "bench".into(),
        slots: Arc::new(slots),
        event_time: EventTimeSpec {
            field: "ts_ms".into(),
            format: TimeFormat::EpochMillis,
            processing_time: false,
            source_timestamp: false,
        },
    };
    let started = Instant::now();
    let mut reader = BufReader::with_capacity(1 << 20, File::open(input)?);
    let mut line = Vec::with_capacity(256);
    let mut decode: Box<DecodeTime> = if csv {
        reader.read_until(b'\n', &mut line)?;
        let mut decoder = CsvDecoder::new(&ctx, trim_newline(&line))?;
        Box::new(move |l| decoder.decode(l).ok().map(|r| r.time))
    } else {
        let mut decoder = JsonDecoder::new(&ctx);
        Box::new(move |l| decoder.decode(l).ok().map(|r| r.time))
    };
    let mut count = 0u64;
    let mut checksum = 0i64;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if let Some(time) = decode(trim_newline(&line)) {
            checksum = checksum.wrapping_add(time);
            count += 1;
        }
    }
    std::hint::black_box(checksum);
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64
}

fn rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2}M/s", per_s / 1e6)
    } else {
        format!("{:.0}k/s", per_s / 1e3)
    }
}
