//! Progress reporting of `weir run`: a live status line on a terminal, periodic log lines
//! otherwise.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use weir_engine::runtime::{JobMetrics, MetricsSnapshot};

/// Starts the reporter; it exits once `done` is set.
pub fn spawn(metrics: Arc<JobMetrics>, done: Arc<AtomicBool>, live: bool) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let tick = if live {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        };
        let mut last = metrics.snapshot();
        let mut last_at = Instant::now();
        while !done.load(Ordering::Relaxed) {
            let deadline = Instant::now() + tick;
            while Instant::now() < deadline && !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let now = metrics.snapshot();
            let secs = last_at.elapsed().as_secs_f64().max(1e-3);
            let line = render(&last, &now, secs);
            if live {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{line}");
                let _ = err.flush();
            } else {
                tracing::info!("{line}");
            }
            last = now;
            last_at = Instant::now();
        }
        if live {
            eprintln!();
        }
    })
}

/// One status line: rates since the previous snapshot, gauges and totals.
pub fn render(prev: &MetricsSnapshot, now: &MetricsSnapshot, secs: f64) -> String {
    let rate = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / secs;
    format!(
        "in {}/s  out {}/s  watermark {}  open windows {}  late {}  dead-letter {}  epoch {} ({} ms)",
        human(rate(prev.events_in, now.events_in)),
        human(rate(prev.results_out, now.results_out)),
        format_time(now.watermark),
        now.open_windows,
        now.late_events,
        now.dead_letters,
        now.last_epoch,
        now.last_checkpoint_us / 1000,
    )
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn format_time(ms: i64) -> String {
    match ms {
        i64::MIN => "-".into(),
        i64::MAX => "end".into(),
        _ => chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .unwrap_or_else(|| ms.to_string()),
    }
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
