//! Counters shared by a job's tasks, read by the status display and `/metrics`.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

const COUNTER: &str = "counter";
const GAUGE: &str = "gauge";

/// One metric: name, Prometheus type, help text, value.
type Sample = (&'static str, &'static str, &'static str, String);

/// `samples` in the Prometheus text exposition format, unlabelled.
fn exposition(samples: &[Sample]) -> String {
    samples
        .iter()
        .map(|(name, kind, help, value)| {
            format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n")
        })
        .collect()
}

/// Live counters of a running job. All are monotone except the gauges noted.
#[derive(Debug)]
pub struct JobMetrics {
    /// Records read and decoded.
    pub events_in: AtomicU64,
    /// Records dropped by a filter.
    pub events_filtered: AtomicU64,
    /// Window results emitted (before commit).
    pub results_out: AtomicU64,
    /// Late events (to the late output or dropped).
    pub late_events: AtomicU64,
    /// Records sent to the dead-letter output (or counted where none is configured).
    pub dead_letters: AtomicU64,
    /// Checkpoint epochs committed.
    pub epochs_committed: AtomicU64,
    /// Gauge: the last committed epoch.
    pub last_epoch: AtomicU64,
    /// Gauge: duration of the last checkpoint, barrier to commit, in µs.
    pub last_checkpoint_us: AtomicU64,
    /// Gauge: the lowest shard watermark (ms), `i64::MIN` before any.
    pub watermark: AtomicI64,
    /// Gauge: windows open over all shards.
    pub open_windows: AtomicU64,
    /// Gauge: sink commit retries so far.
    pub sink_retries: AtomicU64,
    /// Duration of every checkpoint so far, barrier to commit, in µs.
    pub checkpoint_durations_us: Mutex<Vec<u64>>,
    /// Gauge: a sink commit is failing and being retried (the worker is not ready).
    pub commit_failing: AtomicBool,
    /// Gauge: the job is running its tasks (set by `Job::run`, cleared when it returns).
    pub running: AtomicBool,
}

impl Default for JobMetrics {
    fn default() -> Self {
        JobMetrics {
            events_in: AtomicU64::new(0),
            events_filtered: AtomicU64::new(0),
            results_out: AtomicU64::new(0),
            late_events: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            epochs_committed: AtomicU64::new(0),
            last_epoch: AtomicU64::new(0),
            last_checkpoint_us: AtomicU64::new(0),
            watermark: AtomicI64::new(i64::MIN),
            open_windows: AtomicU64::new(0),
            sink_retries: AtomicU64::new(0),
            checkpoint_durations_us: Mutex::new(Vec::new()),
            commit_failing: AtomicBool::new(false),
            running: AtomicBool::new(false),
        }
    }
}

/// A point-in-time copy of [`JobMetrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// See [`JobMetrics::events_in`].
    pub events_in: u64,
    /// See [`JobMetrics::events_filtered`].
    pub events_filtered: u64,
    /// See [`JobMetrics::results_out`].
    pub results_out: u64,
    /// See [`JobMetrics::late_events`].
    pub late_events: u64,
    /// See [`JobMetrics::dead_letters`].
    pub dead_letters: u64,
    /// See [`JobMetrics::epochs_committed`].
    pub epochs_committed: u64,
    /// See [`JobMetrics::last_epoch`].
    pub last_epoch: u64,
    /// See [`JobMetrics::last_checkpoint_us`].
    pub last_checkpoint_us: u64,
    /// See [`JobMetrics::watermark`].
    pub watermark: i64,
    /// See [`JobMetrics::open_windows`].
    pub open_windows: u64,
    /// See [`JobMetrics::sink_retries`].
    pub sink_retries: u64,
}

impl JobMetrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            events_in: r(&self.events_in),
            events_filtered: r(&self.events_filtered),
            results_out: r(&self.results_out),
            late_events: r(&self.late_events),
            dead_letters: r(&self.dead_letters),
            epochs_committed: r(&self.epochs_committed),
            last_epoch: r(&self.last_epoch),
            last_checkpoint_us: r(&self.last_checkpoint_us),
            watermark: self.watermark.load(Ordering::Relaxed),
            open_windows: r(&self.open_windows),
            sink_retries: r(&self.sink_retries),
        }
    }

    /// Whether the worker is ready: running, with every sink committing.
    pub fn is_ready(&self) -> bool {
        self.running.load(Ordering::Relaxed) && !self.commit_failing.load(Ordering::Relaxed)
    }

    /// The counters in the Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        exposition(&self.samples())
    }

    /// Every metric as (name, type, help, value).
    fn samples(&self) -> Vec<Sample> {
        let m = self.snapshot();
        let mut metrics: Vec<Sample> = vec![
            (
                "weir_events_in_total",
                COUNTER,
                "Records read and decoded.",
                m.events_in.to_string(),
            ),
            (
                "weir_events_filtered_total",
                COUNTER,
                "Records dropped by a filter.",
                m.events_filtered.to_string(),
            ),
            (
                "weir_results_total",
                COUNTER,
                "Window results emitted.",
                m.results_out.to_string(),
            ),
            (
                "weir_late_events_total",
                COUNTER,
                "Late events.",
                m.late_events.to_string(),
            ),
            (
                "weir_dead_letters_total",
                COUNTER,
                "Records sent to the dead-letter output.",
                m.dead_letters.to_string(),
            ),
            (
                "weir_epochs_committed_total",
                COUNTER,
                "Checkpoint epochs committed.",
                m.epochs_committed.to_string(),
            ),
            (
                "weir_sink_commit_retries_total",
                COUNTER,
                "Sink commit retries.",
                m.sink_retries.to_string(),
            ),
            (
                "weir_last_epoch",
                GAUGE,
                "Last committed checkpoint epoch.",
                m.last_epoch.to_string(),
            ),
            (
                "weir_last_checkpoint_seconds",
                GAUGE,
                "Duration of the last checkpoint, barrier to commit.",
                (m.last_checkpoint_us as f64 / 1e6).to_string(),
            ),
            (
                "weir_open_windows",
                GAUGE,
                "Windows open over all shards.",
                m.open_windows.to_string(),
            ),
            (
                "weir_ready",
                GAUGE,
                "1 when the worker is running and every sink commits.",
                u8::from(self.is_ready()).to_string(),
            ),
        ];
        if m.watermark != i64::MIN && m.watermark != i64::MAX {
            metrics.push((
                "weir_watermark_seconds",
                GAUGE,
                "Lowest shard watermark (event time, seconds since the Unix epoch).",
                (m.watermark as f64 / 1e3).to_string(),
            ));
        }
        metrics
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Counters of a fleet worker, and the job metrics of each task it runs, for `/metrics`.
#[derive(Debug, Default)]
pub struct FleetMetrics {
    /// Gauge: tasks running on this worker.
    pub tasks_running: AtomicU64,
    /// Tasks started on this worker (each after acquiring a partition).
    pub tasks_started: AtomicU64,
    /// Local states rebuilt from a task's replica (the local copy was missing or stale).
    pub restores: AtomicU64,
    /// State entries copied by those restores.
    pub restored_entries: AtomicU64,
    /// Time spent in those restores, in ms.
    pub restore_ms: AtomicU64,
    /// Gauge: duration of the last restore, in ms.
    pub last_restore_ms: AtomicU64,
    /// Each running task's job metrics, by task id.
    tasks: Mutex<std::collections::BTreeMap<String, std::sync::Arc<JobMetrics>>>,
}

impl FleetMetrics {
    /// Records a restore of `entries` state entries that took `ms`.
    pub fn record_restore(&self, entries: u64, ms: u64) {
        JobMetrics::add(&self.restores, 1);
        JobMetrics::add(&self.restored_entries, entries);
        JobMetrics::add(&self.restore_ms, ms);
        self.last_restore_ms.store(ms, Ordering::Relaxed);
    }

    /// Shows `metrics` as task `task`'s job metrics until [`FleetMetrics::remove_task`].
    pub fn add_task(&self, task: &str, metrics: std::sync::Arc<JobMetrics>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.insert(task.to_string(), metrics);
    }

    /// Stops showing task `task`'s job metrics.
    pub fn remove_task(&self, task: &str) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.remove(task);
    }

    /// The job metrics of the tasks running now.
    pub fn task_metrics(&self) -> Vec<std::sync::Arc<JobMetrics>> {
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.values().cloned().collect()
    }

    /// Ready while at least one task runs and every running task is ready.
    pub fn is_ready(&self) -> bool {
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        !tasks.is_empty() && tasks.values().all(|t| t.is_ready())
    }

    /// The worker's counters, then each task's job metrics labelled `task="<id>"`, in the
    /// Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
        let worker: Vec<Sample> = vec![
            (
                "weir_fleet_tasks_running",
                GAUGE,
                "Tasks running on this worker.",
                load(&self.tasks_running),
            ),
            (
                "weir_fleet_tasks_started_total",
                COUNTER,
                "Tasks started on this worker.",
                load(&self.tasks_started),
            ),
            (
                "weir_fleet_restores_total",
                COUNTER,
                "Local task states rebuilt from their replica.",
                load(&self.restores),
            ),
            (
                "weir_fleet_restored_entries_total",
                COUNTER,
                "State entries copied from replicas.",
                load(&self.restored_entries),
            ),
            (
                "weir_fleet_restore_seconds_total",
                COUNTER,
                "Time spent restoring task states from their replicas.",
                (self.restore_ms.load(Ordering::Relaxed) as f64 / 1e3).to_string(),
            ),
            (
                "weir_fleet_last_restore_seconds",
                GAUGE,
                "Duration of the last restore of a task state.",
                (self.last_restore_ms.load(Ordering::Relaxed) as f64 / 1e3).to_string(),
            ),
        ];
        let mut out = exposition(&worker);
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let per_task: Vec<(&String, Vec<Sample>)> =
            tasks.iter().map(|(id, m)| (id, m.samples())).collect();
        let mut names: Vec<(&str, &str, &str)> = Vec::new();
        for (name, kind, help, _) in per_task.iter().flat_map(|(_, samples)| samples) {
            if !names.iter().any(|n| n.0 == *name) {
                names.push((*name, *kind, *help));
            }
        }
        // One HELP/TYPE block per metric name, one labelled line per task that has it.
        for (name, kind, help) in names {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (task, samples) in &per_task {
                if let Some((_, _, _, value)) = samples.iter().find(|s| s.0 == name) {
                    out.push_str(&format!("{name}{{task=\"{task}\"}} {value}\n"));
                }
            }
        }
        out
    }
}
