//! `weir run FILE`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use weir_connectors::Registry;
use weir_engine::runtime::fleet::{run_worker, WorkerOptions};
use weir_engine::runtime::{Connectors, FleetMetrics, Job, JobOptions};
use weir_engine::topology::load_file;

use super::validate::{report, INVALID_TOPOLOGY};
use crate::status;

/// Arguments of `weir run`.
#[derive(Args)]
pub struct RunArgs {
    /// The topology file.
    pub file: PathBuf,
    /// Keyed shards per pipeline (overrides `parallelism.shards`).
    #[arg(long)]
    pub shards: Option<u32>,
    /// Never draw the live status line (it is drawn only when standard error is a terminal).
    #[arg(long)]
    pub no_status: bool,
    /// At the end, print a JSON summary (counters, elapsed time, peak RSS) on standard output.
    #[arg(long)]
    pub summary_json: bool,
    /// Serve `/health`, `/ready` and Prometheus `/metrics` on this address (e.g.
    /// `127.0.0.1:9464`).
    #[arg(long, env = "WEIR_HTTP")]
    pub http: Option<String>,
    /// Pin the process to this CPU (benchmarks on one core).
    #[arg(long, hide = true)]
    pub cpu: Option<usize>,
}

/// Runs the topology until its input ends or Ctrl-C / SIGTERM.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if let Some(cpu) = args.cpu {
        super::pin_to_cpu(cpu)?;
    }
    let topology = match load_file(&args.file, &Registry) {
        Ok(t) => t,
        Err(issues) => {
            report(&args.file, &issues);
            return Ok(ExitCode::from(INVALID_TOPOLOGY));
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    install_stop_handler(stop.clone());
    if let Some(mut fleet) = Registry.implied_fleet(&topology) {
        // Resolved before the backend opens, so that the backend can name this worker too
        // (a Kafka group member's `client.id`).
        let worker_id = fleet
            .worker_id
            .get_or_insert_with(default_worker_id)
            .clone();
        let backend = Registry
            .open_fleet(&topology, &fleet)
            .context("cannot join the fleet")?;
        let options = WorkerOptions {
            worker_id,
            lease_ttl: std::time::Duration::from_millis(fleet.lease_ttl.as_millis()),
            shards: args.shards,
            stop,
            metrics: Arc::new(FleetMetrics::default()),
        };
        if let Some(addr) = &args.http {
            crate::http::serve(addr, options.metrics.clone())?;
        }
        run_worker(&topology, Arc::new(Registry), backend, options).context("the worker failed")?;
        return Ok(ExitCode::SUCCESS);
    }
    let job = Job::build(
        &topology,
        &Registry,
        JobOptions {
            shards: args.shards,
            stop: stop.clone(),
            ..JobOptions::default()
        },
    )
    .context("cannot start the job")?;
    let metrics = job.metrics();
    if let Some(addr) = &args.http {
        crate::http::serve(addr, metrics.clone())?;
    }
    let live = !args.no_status && std::io::stderr().is_terminal();
    let done = Arc::new(AtomicBool::new(false));
    let reporter = status::spawn(metrics, done.clone(), live);
    let result = job.run();
    done.store(true, Ordering::Relaxed);
    let _ = reporter.join();
    let summary = result.context("the job failed")?;
    let m = summary.metrics;
    tracing::info!(
        events = m.events_in,
        results = m.results_out,
        late = m.late_events,
        dead_letters = m.dead_letters,
        epochs = m.epochs_committed,
        elapsed_s = summary.elapsed.as_secs_f64(),
        "job finished"
    );
    if args.summary_json {
        let json = serde_json::json!({
            "events_in": m.events_in,
            "events_filtered": m.events_filtered,
            "results_out": m.results_out,
            "late_events": m.late_events,
            "dead_letters": m.dead_letters,
            "epochs_committed": m.epochs_committed,
            "elapsed_s": summary.elapsed.as_secs_f64(),
            "peak_rss_bytes": status::peak_rss_bytes(),
            "checkpoint_us": summary.checkpoint_durations_us,
        });
        println!("{json}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `<host name>-<process id>`: unique among live workers.
fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}

static STOP_FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    if let Some(flag) = STOP_FLAG.get() {
        flag.store(true, Ordering::Relaxed);
    }
}

/// Ctrl-C and SIGTERM request a graceful stop: the job commits a last epoch and exits.
fn install_stop_handler(flag: Arc<AtomicBool>) {
    let _ = STOP_FLAG.set(flag);
    let handler = on_signal as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}
