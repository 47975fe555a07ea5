//! The file sink: JSON lines, exactly once across crashes.
//!
//! Each epoch's lines are appended and synced, then a fence file beside the output
//! (`<path>.weir-fence`) records the epoch and the file length after it, replaced atomically.
//! Recovery truncates the output to the fenced length, so whatever an unconfirmed epoch left
//! is removed before that epoch is committed again.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use weir_engine::checkpoint::Epoch;
use weir_engine::event::Output;
use weir_engine::runtime::{Sink, SinkEncoder, SinkError};
use weir_engine::topology::ConfigIssue;

use crate::parse_options;

/// Options of a `file` sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Output file (JSON lines). Its directory is created if missing. The job owns the file:
    /// it is truncated to the last committed length on recovery.
    pub path: String,
}

impl FileSinkConfig {
    /// Parses the sink's options; issue paths start with `prefix` (e.g. `sinks.out`).
    pub fn from_options(
        prefix: &str,
        options: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, Vec<ConfigIssue>> {
        parse_options(prefix, options)
    }
}

/// What the fence file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Fence {
    epoch: Epoch,
    length: u64,
}

/// The file sink; see the module docs for its exactly-once protocol.
pub struct FileSink {
    name: String,
    path: PathBuf,
    fence_path: PathBuf,
    fence: Option<Fence>,
}

impl FileSink {
    /// Opens the sink `name` writing to `config.path` (nothing is written before `recover`).
    pub fn open(name: &str, config: &FileSinkConfig) -> Result<Self, SinkError> {
        let path = PathBuf::from(&config.path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| {
                SinkError::Fatal(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        let mut fence_path = path.clone().into_os_string();
        fence_path.push(".weir-fence");
        Ok(FileSink {
            name: name.to_string(),
            path,
            fence_path: fence_path.into(),
            fence: None,
        })
    }

    fn read_fence(&self) -> Result<Option<Fence>, SinkError> {
        match fs::read(&self.fence_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                SinkError::Fatal(format!(
                    "corrupt fence file {}: {e}",
                    self.fence_path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("read", &self.fence_path, e)),
        }
    }

    fn write_fence(&self, fence: Fence) -> Result<(), SinkError> {
        let mut tmp = self.fence_path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let bytes = serde_json::to_vec(&fence).map_err(|e| SinkError::Fatal(e.to_string()))?;
        let mut f = File::create(&tmp).map_err(|e| io_error("create", &tmp, e))?;
        f.write_all(&bytes)
            .map_err(|e| io_error("write", &tmp, e))?;
        f.sync_all().map_err(|e| io_error("sync", &tmp, e))?;
        fs::rename(&tmp, &self.fence_path).map_err(|e| io_error("rename", &tmp, e))?;
        sync_parent(&self.fence_path)
    }

    fn committed_length(&self) -> u64 {
        self.fence.map_or(0, |f| f.length)
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> SinkError {
    SinkError::Retryable(format!("cannot {what} {}: {e}", path.display()))
}

fn sync_parent(path: &Path) -> Result<(), SinkError> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync directory", &dir, e))
}

struct JsonLines;

impl SinkEncoder for JsonLines {
    fn encode(&mut self, output: &Output, staged: &mut Vec<u8>) {
        output.write_json_line(staged);
    }
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn encoder(&self) -> Box<dyn SinkEncoder> {
        Box::new(JsonLines)
    }

    fn recover(&mut self, committed: Option<Epoch>) -> Result<(), SinkError> {
        self.fence = self.read_fence()?;
        let existing = match fs::metadata(&self.path) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error("inspect", &self.path, e)),
        };
        match (self.fence, committed) {
            (None, None) if existing.unwrap_or(0) > 0 => {
                return Err(SinkError::Fatal(format!(
                    "sink `{}`: {} already holds data this job did not write (no {} beside it); \
                     remove it or choose another path",
                    self.name,
                    self.path.display(),
                    self.fence_path.display()
                )))
            }
            (Some(f), c) if f.epoch > c.unwrap_or(0) + 1 => {
                return Err(SinkError::Fatal(format!(
                    "sink `{}`: the output holds epoch {} but the state only knows epoch {}; \
                     was the state directory replaced?",
                    self.name,
                    f.epoch,
                    c.unwrap_or(0)
                )))
            }
            (None, _) => {
                // Claim the file before the first append, so a crash in the middle of the
                // first commit leaves a fence saying the job owns the (truncatable) data.
                let fence = Fence {
                    epoch: 0,
                    length: 0,
                };
                self.write_fence(fence)?;
                self.fence = Some(fence);
            }
            _ => {}
        }
        let length = self.committed_length();
        match existing {
            Some(len) if len > length => {
                tracing::info!(sink = %self.name, from = len, to = length, "removing output of an unconfirmed epoch");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&self.path)
                    .map_err(|e| io_error("open", &self.path, e))?;
                f.set_len(length)
                    .map_err(|e| io_error("truncate", &self.path, e))?;
                f.sync_all().map_err(|e| io_error("sync", &self.path, e))?;
            }
            Some(len) if len < length => {
                return Err(SinkError::Fatal(format!(
                    "sink `{}`: {} is shorter ({len} bytes) than its committed length {length}; \
                     it was modified outside Weir",
                    self.name,
                    self.path.display()
                )))
            }
            _ => {}
        }
        Ok(())
    }

    fn commit(&mut self, epoch: Epoch, staged: &[u8]) -> Result<(), SinkError> {
        if self.fence.is_some_and(|f| f.epoch >= epoch) {
            return Ok(());
        }
        if staged.is_empty() {
            return Ok(());
        }
        let length = self.committed_length();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| io_error("open", &self.path, e))?;
        let current = f
            .metadata()
            .map_err(|e| io_error("inspect", &self.path, e))?
            .len();
        if current != length {
            // A failed earlier attempt at this epoch left a partial write.
            f.set_len(length)
                .map_err(|e| io_error("truncate", &self.path, e))?;
        }
        f.write_all(staged)
            .map_err(|e| io_error("write", &self.path, e))?;
        f.sync_data().map_err(|e| io_error("sync", &self.path, e))?;
        if length == 0 {
            sync_parent(&self.path)?;
        }
        let fence = Fence {
            epoch,
            length: length + staged.len() as u64,
        };
        self.write_fence(fence)?;
        self.fence = Some(fence);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(dir: &Path) -> FileSink {
        let config = FileSinkConfig {
            path: dir.join("out/results.jsonl").display().to_string(),
        };
        FileSink::open("out", &config).unwrap()
    }

    #[test]
    fn recommitting_an_epoch_does_not_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path());
        s.recover(None).unwrap();
        s.commit(1, b"a\n").unwrap();
        s.commit(2, b"b\n").unwrap();
        // Crash after the sink committed epoch 2 but before the engine recorded it.
        let mut s = sink(dir.path());
        s.recover(Some(1)).unwrap();
        s.commit(2, b"b\n").unwrap();
        s.commit(3, b"c\n").unwrap();
        let text = fs::read_to_string(dir.path().join("out/results.jsonl")).unwrap();
        assert_eq!(text, "a\nb\nc\n");
    }

    #[test]
    fn recovery_removes_a_partial_unfenced_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path());
        s.recover(None).unwrap();
        s.commit(1, b"a\n").unwrap();
        // Crash in the middle of epoch 2's append, before its fence was written.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("out/results.jsonl"))
            .unwrap();
        f.write_all(b"partial-b").unwrap();
        let mut s = sink(dir.path());
        s.recover(Some(1)).unwrap();
        s.commit(2, b"b\n").unwrap();
        let text = fs::read_to_string(dir.path().join("out/results.jsonl")).unwrap();
        assert_eq!(text, "a\nb\n");
    }

    #[test]
    fn a_crash_during_the_first_commit_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path());
        s.recover(None).unwrap();
        // The first epoch's append landed, its fence did not.
        fs::write(dir.path().join("out/results.jsonl"), b"a\npart").unwrap();
        let mut s = sink(dir.path());
        s.recover(None).unwrap();
        s.commit(1, b"a\n").unwrap();
        let text = fs::read_to_string(dir.path().join("out/results.jsonl")).unwrap();
        assert_eq!(text, "a\n");
    }

    #[test]
    fn refuses_a_foreign_file_and_a_fence_from_the_future() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("out")).unwrap();
        fs::write(dir.path().join("out/results.jsonl"), b"not ours\n").unwrap();
        let mut s = sink(dir.path());
        let err = s.recover(None).unwrap_err().to_string();
        assert!(err.contains("did not write"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path());
        s.recover(None).unwrap();
        s.commit(1, b"a\n").unwrap();
        s.commit(2, b"b\n").unwrap();
        s.commit(3, b"c\n").unwrap();
        let mut s = sink(dir.path());
        let err = s.recover(Some(1)).unwrap_err().to_string();
        assert!(err.contains("state directory replaced"), "{err}");
    }
}
