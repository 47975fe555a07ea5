//! `weir bench-io`: Weir's connectors against plain clients of the same servers, measured in
//! one run so the ratios hold on any machine.
//!
//! Sections (pick with `--only`; by default every section whose server is given):
//!
//! - `redis-source`: a sharded Redis stream of activity events is read by a plain consumer
//!   (`XREADGROUP COUNT 1000` + `XACK`, one connection per shard) and by a Weir job reading the
//!   same shards with a fresh group through a tumbling window into a `redis_hash` sink, exactly
//!   once (checkpoint every second). Floor: Weir at 70% of the plain consumer.
//! - `mongodb`: the same window-result documents inserted into a fresh time-series collection
//!   by the driver (`insert_many`, unordered, in batches) and by Weir's `mongodb` sink (mode
//!   `timeseries`, one epoch per batch, through the `Sink` trait). Floor: 70%.
//! - `feed`: the stream again, into activity feeds: a plain consumer that writes each activity
//!   with pipelined `SET PX` + `ZADD` (and trims and expiries per feed) and acknowledges, against
//!   a windowless Weir pipeline into a `redis_feed` sink.
//! - `kafka-source`: a keyed topic (6 partitions) read to its end by a plain rdkafka consumer
//!   (counting messages) and by a Weir job through a tumbling window into a transactional
//!   `kafka` sink, exactly once (checkpoint every second). Floor: Weir at 80% of the consumer.
//!   Weir runs as one job over every partition.
//! - `kafka-source-fleet`: the same, with Weir run as `weir run` runs a Kafka topology: one
//!   fleet worker in the source's consumer group, a task per partition, each replicating its
//!   checkpoints to the changelog topic.
//! - `kafka-latency`: event-to-result latency of an unbounded Weir job (`emit: on_update`,
//!   checkpoint every 100 ms) fed at 10,000 events/s, seen by a `read_committed` consumer of
//!   the result topic; p50 / p99 / max, ceiling p99 < 250 ms. A latency, not a ratio. One job,
//!   whose prepared epochs are synced to its local store.
//! - `kafka-latency-fleet`: the same as `weir run` runs it (fleet worker, changelog replicas,
//!   local writes not synced).
//! - `kafka-restore`: a changelog partition holding 1,000,000 keys of window state, read end to
//!   end by a plain `read_committed` consumer and restored by `ChangelogReplica::restore` into
//!   a fresh RocksDB store.
//!
//! Every section cleans up what it wrote (its keys, its database, its topics).

#[cfg(feature = "kafka")]
mod kafka;
mod mongodb;
mod redis;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use weir_connectors::Registry;
use weir_engine::runtime::{Job, JobOptions};
use weir_engine::topology::load_str;

/// Arguments of `weir bench-io`.
#[derive(Args)]
pub struct BenchIoArgs {
    /// Redis server of the `redis-source` and `feed` sections, e.g. `redis://127.0.0.1:6379`.
    #[arg(long)]
    pub redis: Option<String>,
    /// MongoDB server of the `mongodb` section, e.g.
    /// `mongodb://127.0.0.1:27017/?directConnection=true`.
    #[arg(long)]
    pub mongodb: Option<String>,
    /// Kafka bootstrap brokers of the kafka-* sections, `HOST:PORT[,HOST:PORT...]`.
    #[cfg(feature = "kafka")]
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// Sections to run, comma-separated: redis-source, mongodb, feed, kafka-source,
    /// kafka-source-fleet, kafka-latency, kafka-latency-fleet, kafka-restore. Default: every
    /// section whose server is given.
    #[arg(long)]
    pub only: Option<String>,
    /// Events in the stream (redis-source, feed) or the input topic (kafka-source).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Shards of the stream (`bench:{0}` … ), each read by its own consumer.
    #[arg(long, default_value_t = 4)]
    pub shards: u32,
    /// Distinct users in the events (the window key and the feeds; the key of kafka-source).
    #[arg(long, default_value_t = 1_000)]
    pub keys: u64,
    /// Window-result documents written by each side of the mongodb section.
    #[arg(long, default_value_t = 200_000)]
    pub docs: u64,
    /// Documents per `insert_many` batch, and per Weir epoch, in the mongodb section.
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// Partitions of the input topics of the kafka-source and kafka-latency sections.
    #[cfg(feature = "kafka")]
    #[arg(long, default_value_t = 6)]
    pub kafka_partitions: u32,
    /// Compression of the kafka-source input as its producer writes it (librdkafka's
    /// `compression.type`: none, gzip, snappy, lz4, zstd). Both the plain consumers and Weir
    /// read the same compressed batches.
    #[cfg(feature = "kafka")]
    #[arg(long, default_value = "none")]
    pub kafka_compression: String,
    /// Events per second the kafka-latency producer sends.
    #[cfg(feature = "kafka")]
    #[arg(long, default_value_t = 10_000.0)]
    pub latency_rate: f64,
    /// Seconds the kafka-latency producer sends for (the first 2 s are not timed).
    #[cfg(feature = "kafka")]
    #[arg(long, default_value_t = 20)]
    pub latency_secs: u64,
    /// Keys of state in the changelog partition of kafka-restore.
    #[cfg(feature = "kafka")]
    #[arg(long, default_value_t = 1_000_000)]
    pub restore_keys: u64,
    /// Repeat every section this many times and report medians.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Working directory (Weir's state).
    #[arg(long, default_value = "./data/bench-io")]
    pub dir: PathBuf,
}

/// A part of the benchmark, with the server it needs. The Kafka parts are [`KafkaSection`]s:
/// the Redis module matches this enum exhaustively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    RedisSource,
    Mongodb,
    Feed,
}

/// A Kafka part of the benchmark (all need `--kafka`).
#[cfg(feature = "kafka")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KafkaSection {
    Source,
    SourceFleet,
    Latency,
    LatencyFleet,
    Restore,
}

#[cfg(feature = "kafka")]
impl KafkaSection {
    const ALL: [KafkaSection; 5] = [
        KafkaSection::Source,
        KafkaSection::SourceFleet,
        KafkaSection::Latency,
        KafkaSection::LatencyFleet,
        KafkaSection::Restore,
    ];

    fn name(self) -> &'static str {
        match self {
            KafkaSection::Source => "kafka-source",
            KafkaSection::SourceFleet => "kafka-source-fleet",
            KafkaSection::Latency => "kafka-latency",
            KafkaSection::LatencyFleet => "kafka-latency-fleet",
            KafkaSection::Restore => "kafka-restore",
        }
    }
}

/// Any section `--only` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Selected {
    Core(Section),
    #[cfg(feature = "kafka")]
    Kafka(KafkaSection),
}

impl Selected {
    /// Every section, in run order.
    fn all() -> Vec<Selected> {
        let all: Vec<Selected> = Section::ALL.into_iter().map(Selected::Core).collect();
        #[cfg(feature = "kafka")]
        let all = {
            let mut all = all;
            all.extend(KafkaSection::ALL.into_iter().map(Selected::Kafka));
            all
        };
        all
    }

    /// The Redis or MongoDB section, if it is one.
    fn core(self) -> Option<Section> {
        match self {
            Selected::Core(s) => Some(s),
            #[cfg(feature = "kafka")]
            Selected::Kafka(_) => None,
        }
    }

    /// The Kafka section, if it is one.
    #[cfg(feature = "kafka")]
    fn kafka(self) -> Option<KafkaSection> {
        match self {
            Selected::Kafka(s) => Some(s),
            Selected::Core(_) => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Selected::Core(s) => s.name(),
            #[cfg(feature = "kafka")]
            Selected::Kafka(s) => s.name(),
        }
    }

    /// The option naming this section's server, and its value.
    fn server(self, args: &BenchIoArgs) -> (&'static str, Option<&str>) {
        match self {
            Selected::Core(s) => s.server(args),
            #[cfg(feature = "kafka")]
            Selected::Kafka(_) => ("--kafka", args.kafka.as_deref()),
        }
    }
}

impl Section {
    const ALL: [Section; 3] = [Section::RedisSource, Section::Mongodb, Section::Feed];

    fn name(self) -> &'static str {
        match self {
            Section::RedisSource => "redis-source",
            Section::Mongodb => "mongodb",
            Section::Feed => "feed",
        }
    }

    /// The option naming this section's server, and its value.
    fn server(self, args: &BenchIoArgs) -> (&'static str, Option<&str>) {
        match self {
            Section::RedisSource | Section::Feed => ("--redis", args.redis.as_deref()),
            Section::Mongodb => ("--mongodb", args.mongodb.as_deref()),
        }
    }
}

/// One comparison: the same work done by a plain client and by Weir.
#[derive(Debug, Clone)]
pub(crate) struct Measurement {
    /// The section that measured it.
    pub section: &'static str,
    /// What the plain client did.
    pub baseline: String,
    /// What Weir did.
    pub weir: String,
    /// What the rates count (`events`, `docs`, `activities`).
    pub unit: &'static str,
    /// Items per second of the plain client.
    pub baseline_per_s: f64,
    /// Items per second of Weir.
    pub weir_per_s: f64,
    /// The lowest acceptable `weir_per_s / baseline_per_s`, if the issue sets one.
    pub floor: Option<f64>,
    /// Counts worth knowing (items, results, epochs).
    pub detail: String,
}

impl Measurement {
    fn ratio(&self) -> f64 {
        self.weir_per_s / self.baseline_per_s
    }
}

/// A latency Weir achieved on its own (no baseline to divide by).
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
pub(crate) struct LatencyMeasurement {
    /// The section that measured it.
    pub section: &'static str,
    /// What was timed, from where to where.
    pub what: String,
    /// Median, in ms.
    pub p50_ms: f64,
    /// 99th percentile, in ms.
    pub p99_ms: f64,
    /// Largest, in ms.
    pub max_ms: f64,
    /// The highest acceptable `p99_ms`, if the issue sets one.
    pub ceiling_p99_ms: Option<f64>,
    /// Counts worth knowing (events, results, epochs).
    pub detail: String,
}

/// Names that keep the keys, groups, jobs and databases of one run apart from any other.
#[derive(Debug, Clone)]
pub(crate) struct RunNames {
    /// Unique per run: `<pid>-<ms>-<run>`.
    pub id: String,
}

impl RunNames {
    fn new(run: usize) -> RunNames {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        RunNames {
            id: format!("{}-{ms}-{run}", std::process::id()),
        }
    }
}

/// Runs the selected sections (`--runs` times) and prints a table of rates and ratios.
pub fn bench_io(args: BenchIoArgs) -> anyhow::Result<ExitCode> {
    let picked = selected(&args)?;
    let sections: Vec<Section> = picked.iter().filter_map(|s| s.core()).collect();
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    anyhow::ensure!(args.shards >= 1, "--shards must be at least 1");
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    std::fs::create_dir_all(&args.dir)?;
    let mut all: Vec<Vec<Measurement>> = Vec::new();
    let mut all_latencies: Vec<Vec<LatencyMeasurement>> = Vec::new();
    for run in 1..=args.runs {
        eprintln!("run {run} of {}", args.runs);
        let names = RunNames::new(run);
        let mut measured = Vec::new();
        let redis_sections: Vec<Section> = sections
            .iter()
            .copied()
            .filter(|s| matches!(s, Section::RedisSource | Section::Feed))
            .collect();
        if let (false, Some(url)) = (redis_sections.is_empty(), args.redis.as_deref()) {
            measured.extend(redis::run(url, &args, &names, &redis_sections)?);
        }
        if sections.contains(&Section::Mongodb) {
            let uri = args.mongodb.as_deref().unwrap_or_default();
            measured.push(mongodb::run(uri, &args, &names)?);
        }
        #[allow(unused_mut)]
        let mut latencies: Vec<LatencyMeasurement> = Vec::new();
        #[cfg(feature = "kafka")]
        {
            let kafka_sections: Vec<KafkaSection> =
                picked.iter().filter_map(|s| s.kafka()).collect();
            if let (false, Some(brokers)) = (kafka_sections.is_empty(), args.kafka.as_deref()) {
                let (rates, times) = kafka::run(brokers, &args, &names, &kafka_sections)?;
                measured.extend(rates);
                latencies.extend(times);
            }
        }
        for m in &measured {
            eprintln!(
                "  {:<13} {} {}/s vs Weir {}/s: {:.2}",
                m.section,
                m.unit,
                rate(m.baseline_per_s),
                rate(m.weir_per_s),
                m.ratio()
            );
        }
        for l in &latencies {
            eprintln!(
                "  {:<13} latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                l.section, l.p50_ms, l.p99_ms, l.max_ms
            );
        }
        all.push(measured);
        all_latencies.push(latencies);
    }
    print!("{}", table(&args, &all, &all_latencies));
    Ok(ExitCode::SUCCESS)
}

/// The sections `--only` names, or every one whose server is given.
fn selected(args: &BenchIoArgs) -> anyhow::Result<Vec<Selected>> {
    let Some(only) = &args.only else {
        let available: Vec<Selected> = Selected::all()
            .into_iter()
            .filter(|s| s.server(args).1.is_some())
            .collect();
        if available.is_empty() {
            let options = if cfg!(feature = "kafka") {
                "--redis URL, --mongodb URI and/or --kafka BROKERS"
            } else {
                "--redis URL and/or --mongodb URI"
            };
            bail!("give {options}: nothing to measure");
        }
        return Ok(available);
    };
    let mut sections = Vec::new();
    for name in only.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some(section) = Selected::all().into_iter().find(|s| s.name() == name) else {
            let names: Vec<_> = Selected::all().iter().map(|s| s.name()).collect();
            bail!("unknown section `{name}` (sections: {})", names.join(", "));
        };
        let (option, server) = section.server(args);
        if server.is_none() {
            bail!("section `{name}` needs {option}");
        }
        if !sections.contains(&section) {
            sections.push(section);
        }
    }
    anyhow::ensure!(!sections.is_empty(), "--only names no section");
    Ok(sections)
}

/// Loads `yaml` and runs it to its end in this process (bounded sources); returns the job's
/// counters and its wall time, building (state, connectors, recovery) included.
pub(crate) fn run_job(
    yaml: &str,
) -> anyhow::Result<(weir_engine::runtime::MetricsSnapshot, Duration)> {
    let topology = load_str(yaml, &Registry).map_err(|issues| {
        let list: Vec<String> = issues.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("invalid benchmark topology: {}", list.join("; "))
    })?;
    let started = Instant::now();
    let job = Job::build(&topology, &Registry, JobOptions::default())
        .context("cannot start the benchmark job")?;
    let summary = job.run().context("the benchmark job failed")?;
    Ok((summary.metrics, started.elapsed()))
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The result table: per measurement, medians over the runs (with the range when there are
/// several), the ratio, and whether it meets its floor; then the latencies, likewise.
fn table(
    args: &BenchIoArgs,
    runs: &[Vec<Measurement>],
    latency_runs: &[Vec<LatencyMeasurement>],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nweir bench-io: {} events on {} shards, {} users; {} MongoDB documents in batches of {}; \
         {} run(s){}",
        args.events,
        args.shards,
        args.keys,
        args.docs,
        args.batch,
        runs.len(),
        if runs.len() > 1 { ", medians (min-max)" } else { "" }
    );
    #[cfg(feature = "kafka")]
    if args.kafka.is_some() {
        let _ = writeln!(
            out,
            "Kafka: {} events on {} partitions, {} keys; latency at {} events/s for {} s; \
             restore of {} keys",
            args.events,
            args.kafka_partitions,
            args.keys,
            args.latency_rate,
            args.latency_secs,
            args.restore_keys
        );
    }
    let _ = writeln!(
        out,
        "{:<13} {:<44} {:>22} {:>22} {:>14} {:>6}",
        "section", "baseline vs Weir", "baseline /s", "Weir /s", "Weir/baseline", "floor"
    );
    if let Some(first) = runs.first() {
        rate_rows(&mut out, runs, first);
    }
    if let Some(first) = latency_runs.first().filter(|l| !l.is_empty()) {
        latency_rows(&mut out, latency_runs, first);
    }
    out
}

/// `values` as its median, with the range when there are several.
fn shown(values: &mut [f64], f: &dyn Fn(f64) -> String) -> String {
    let med = median(values);
    if values.len() > 1 {
        format!(
            "{} ({}-{})",
            f(med),
            f(values[0]),
            f(values[values.len() - 1])
        )
    } else {
        f(med)
    }
}

/// The rows of the rate comparisons.
fn rate_rows(out: &mut String, runs: &[Vec<Measurement>], first: &[Measurement]) {
    for (i, m) in first.iter().enumerate() {
        let pick = |f: &dyn Fn(&Measurement) -> f64| -> Vec<f64> {
            runs.iter().filter_map(|r| r.get(i)).map(f).collect()
        };
        let mut base = pick(&|m| m.baseline_per_s);
        let mut weir = pick(&|m| m.weir_per_s);
        let mut ratio = pick(&Measurement::ratio);
        let ratio_median = median(&mut ratio.clone());
        let verdict = match m.floor {
            Some(floor) if ratio_median >= floor => format!("{floor:.2} ok"),
            Some(floor) => format!("{floor:.2} MISSED"),
            None => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<13} {:<44} {:>22} {:>22} {:>14} {:>6}",
            m.section,
            format!("{} {}", m.unit, m.baseline),
            shown(&mut base, &rate),
            shown(&mut weir, &rate),
            shown(&mut ratio, &|r| format!("{r:.2}")),
            verdict
        );
        let _ = writeln!(out, "{:<13}   vs {} ({})", "", m.weir, m.detail);
    }
}

/// The rows of the latencies: p50 / p99 / max in ms and whether p99 is under its ceiling.
fn latency_rows(out: &mut String, runs: &[Vec<LatencyMeasurement>], first: &[LatencyMeasurement]) {
    let _ = writeln!(
        out,
        "\n{:<13} {:<44} {:>22} {:>22} {:>14} {:>6}",
        "section", "latency", "p50 ms", "p99 ms", "max ms", "ceiling"
    );
    for (i, l) in first.iter().enumerate() {
        let pick = |f: &dyn Fn(&LatencyMeasurement) -> f64| -> Vec<f64> {
            runs.iter().filter_map(|r| r.get(i)).map(f).collect()
        };
        let mut p99 = pick(&|l| l.p99_ms);
        let p99_median = median(&mut p99.clone());
        let verdict = match l.ceiling_p99_ms {
            Some(c) if p99_median < c => format!("p99<{c:.0} ok"),
            Some(c) => format!("p99<{c:.0} MISSED"),
            None => "-".into(),
        };
        let ms = |v: f64| format!("{v:.0}");
        let _ = writeln!(
            out,
            "{:<13} {:<44} {:>22} {:>22} {:>14} {:>6}",
            l.section,
            "event -> committed result",
            shown(&mut pick(&|l| l.p50_ms), &ms),
            shown(&mut p99, &ms),
            shown(&mut pick(&|l| l.max_ms), &ms),
            verdict
        );
        let _ = writeln!(out, "{:<13}   {} ({})", "", l.what, l.detail);
    }
}

/// A rate for people: `812k`, `1.25M`.
pub(crate) fn rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2}M", per_s / 1e6)
    } else if per_s >= 1e4 {
        format!("{:.0}k", per_s / 1e3)
    } else {
        format!("{per_s:.0}")
    }
}
