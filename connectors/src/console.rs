//! The console sink: prints committed results as JSON lines on standard output.
//!
//! For watching a pipeline, not for keeping results: after a crash, an epoch that was printed
//! but not confirmed is printed again.

use std::io::{IsTerminal, Write};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use weir_engine::checkpoint::Epoch;
use weir_engine::event::Output;
use weir_engine::runtime::{Sink, SinkEncoder, SinkError};
use weir_engine::topology::ConfigIssue;

use crate::parse_options;

/// Options of a `console` sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSinkConfig {
    /// Print at most this many lines per checkpoint epoch, then a count of the rest; `0`
    /// prints everything.
    #[serde(default = "default_limit")]
    pub limit_per_checkpoint: usize,
}

fn default_limit() -> usize {
    20
}

impl ConsoleSinkConfig {
    /// Parses the sink's options; issue paths start with `prefix`.
    pub fn from_options(
        prefix: &str,
        options: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, Vec<ConfigIssue>> {
        parse_options(prefix, options)
    }
}

/// The console sink.
pub struct ConsoleSink {
    name: String,
    limit: usize,
    terminal: bool,
}

impl ConsoleSink {
    /// A console sink named `name`.
    pub fn new(name: &str, config: &ConsoleSinkConfig) -> Self {
        ConsoleSink {
            name: name.to_string(),
            limit: config.limit_per_checkpoint,
            terminal: std::io::stdout().is_terminal(),
        }
    }
}

struct JsonLines;

impl SinkEncoder for JsonLines {
    fn encode(&mut self, output: &Output, staged: &mut Vec<u8>) {
        output.write_json_line(staged);
    }
}

impl Sink for ConsoleSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn encoder(&self) -> Box<dyn SinkEncoder> {
        Box::new(JsonLines)
    }

    fn recover(&mut self, _committed: Option<Epoch>) -> Result<(), SinkError> {
        Ok(())
    }

    fn commit(&mut self, _epoch: Epoch, staged: &[u8]) -> Result<(), SinkError> {
        if staged.is_empty() {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        if self.terminal {
            // Start on a clean line: `weir run` may be showing its status line here.
            out.write_all(b"\r\x1b[2K")
                .map_err(|e| SinkError::Retryable(format!("stdout: {e}")))?;
        }
        let lines = staged.split_inclusive(|b| *b == b'\n');
        let mut skipped = 0usize;
        for (i, line) in lines.enumerate() {
            if self.limit == 0 || i < self.limit {
                out.write_all(line)
                    .map_err(|e| SinkError::Retryable(format!("stdout: {e}")))?;
            } else {
                skipped += 1;
            }
        }
        if skipped > 0 {
            writeln!(out, "... {skipped} more results in this checkpoint")
                .map_err(|e| SinkError::Retryable(format!("stdout: {e}")))?;
        }
        out.flush()
            .map_err(|e| SinkError::Retryable(format!("stdout: {e}")))
    }
}
