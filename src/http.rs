//! The worker's HTTP endpoints for operators: `/health` (the process is up), `/ready` (the job
//! runs and every sink commits; 503 otherwise) and `/metrics` (Prometheus text format).
//!
//! A deliberately small HTTP/1.1 server on one thread: these endpoints are scraped every few
//! seconds, not served to the public.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use weir_engine::runtime::{FleetMetrics, JobMetrics};

/// What the endpoints report: a job's metrics, or a fleet worker's.
pub trait Endpoints: Send + Sync + 'static {
    /// Whether `/ready` answers 200.
    fn is_ready(&self) -> bool;
    /// The `/metrics` body (Prometheus text format).
    fn prometheus(&self) -> String;
}

impl Endpoints for JobMetrics {
    fn is_ready(&self) -> bool {
        JobMetrics::is_ready(self)
    }
    fn prometheus(&self) -> String {
        JobMetrics::prometheus(self)
    }
}

impl Endpoints for FleetMetrics {
    fn is_ready(&self) -> bool {
        FleetMetrics::is_ready(self)
    }
    fn prometheus(&self) -> String {
        FleetMetrics::prometheus(self)
    }
}

/// Binds `addr` and serves the endpoints from a background thread for the process lifetime.
/// Returns the bound address (useful with port 0).
pub fn serve<M: Endpoints>(addr: &str, metrics: Arc<M>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("weir-http".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = handle(stream, &*metrics) {
                    tracing::debug!("http: {e}");
                }
            }
        })?;
    tracing::info!(%local, "serving /health, /ready and /metrics");
    Ok(local)
}

fn handle(stream: TcpStream, metrics: &dyn Endpoints) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers; the endpoints take no body.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, content_type, body) = match path {
        "/health" => ("200 OK", "text/plain", "ok\n".to_string()),
        "/ready" if metrics.is_ready() => ("200 OK", "text/plain", "ready\n".to_string()),
        "/ready" => (
            "503 Service Unavailable",
            "text/plain",
            "not ready\n".to_string(),
        ),
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.prometheus()),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
