//! The state store: an ordered key-value store with atomic, durable batches.
//!
//! Window operators keep hot accumulators in memory and write only dirty entries at each
//! checkpoint, in the same [`StateBatch`] as source positions, watermarks and staged outputs.

mod memory;
mod rocks;

pub use memory::MemoryStateStore;
pub use rocks::RocksStateStore;

/// The on-disk format version this build reads and writes, stored big-endian under
/// [`FORMAT_VERSION_KEY`] in [`Table::Meta`]. Bump it on any incompatible change of a key or
/// value layout of any table.
pub const STATE_FORMAT_VERSION: u32 = 1;

/// The [`Table::Meta`] key holding [`STATE_FORMAT_VERSION`] (u32, big-endian).
pub const FORMAT_VERSION_KEY: &[u8] = b"format_version";

/// The tables (RocksDB column families) of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Job metadata: format version, epochs prepared/committed.
    Meta,
    /// Source partition positions and watermarks, by partition id.
    Positions,
    /// Window accumulators (tumbling windows, sliding panes, count windows).
    Windows,
    /// Session windows.
    Sessions,
    /// Outputs staged for a prepared epoch, by (epoch, sink).
    Staged,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 5] = [
        Table::Meta,
        Table::Positions,
        Table::Windows,
        Table::Sessions,
        Table::Staged,
    ];

    /// The column family name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Positions => "positions",
            Table::Windows => "windows",
            Table::Sessions => "sessions",
            Table::Staged => "staged",
        }
    }
}

/// State store failures. A store that failed a write is poisoned: it refuses later writes, so
/// a worker never continues past a checkpoint it could not persist.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The underlying store failed.
    #[error("state store: {0}")]
    Store(String),
    /// Stored bytes could not be decoded.
    #[error("corrupt state in table {table:?}: {reason}")]
    Corrupt {
        /// The table.
        table: Table,
        /// What was wrong.
        reason: String,
    },
    /// The on-disk format is newer or older than this build understands.
    #[error("state format version {found} is not supported (this build reads {supported})")]
    Version {
        /// The version found on disk.
        found: u32,
        /// The version this build writes.
        supported: u32,
    },
    /// An earlier write failed; the store refuses further writes.
    #[error("state store is poisoned after an earlier failed write")]
    Poisoned,
}

/// One operation of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Set a key.
    Put(Table, Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Table, Vec<u8>),
    /// Remove keys in [start, end).
    DeleteRange(Table, Vec<u8>, Vec<u8>),
}

/// Writes applied atomically by [`StateStore::write`]: all or none, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateBatch {
    /// The operations, applied in order.
    pub ops: Vec<BatchOp>,
}

impl StateBatch {
    /// Adds a put.
    pub fn put(&mut self, table: Table, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Put(table, key.into(), value.into()));
    }

    /// Adds a delete.
    pub fn delete(&mut self, table: Table, key: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Delete(table, key.into()));
    }

    /// Adds a range delete of [start, end).
    pub fn delete_range(
        &mut self,
        table: Table,
        start: impl Into<Vec<u8>>,
        end: impl Into<Vec<u8>>,
    ) {
        self.ops
            .push(BatchOp::DeleteRange(table, start.into(), end.into()));
    }

    /// Moves all operations of `other` to the end of this batch.
    pub fn append(&mut self, other: &mut StateBatch) {
        self.ops.append(&mut other.ops);
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Approximate bytes of keys and values in the batch.
    pub fn approx_bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                BatchOp::Put(_, k, v) => k.len() + v.len(),
                BatchOp::Delete(_, k) => k.len(),
                BatchOp::DeleteRange(_, a, b) => a.len() + b.len(),
            })
            .sum()
    }
}

/// An ordered key-value store with atomic durable batches; shared by all tasks of a worker.
///
/// Contract: [`StateStore::write`] is atomic (after a crash, either every op of the batch is
/// visible or none is) and durable once it returns (the write-ahead log is synced). Reads see
/// every batch written before them. Keys order bytewise.
pub trait StateStore: Send + Sync {
    /// Reads one key.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;

    /// Visits keys in [start, end) in order (`end = None`: to the table's end) until `visit`
    /// returns false.
    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError>;

    /// Applies `batch` atomically and durably.
    fn write(&self, batch: StateBatch) -> Result<(), StateError>;

    /// Applies `batch` atomically without waiting for the disk: it survives a crash of the
    /// process, and becomes durable with the next [`StateStore::write`] (writes land in
    /// order), but an operating-system crash before that may lose it. Default: `write`.
    fn write_unsynced(&self, batch: StateBatch) -> Result<(), StateError> {
        self.write(batch)
    }
}

/// Visits every key starting with `prefix`, in order.
pub fn scan_prefix(
    store: &dyn StateStore,
    table: Table,
    prefix: &[u8],
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<(), StateError> {
    let end = prefix_end(prefix);
    store.scan(table, prefix, end.as_deref(), visit)
}

/// A visitor of stored entries (key, value) that may fail.
pub type TryVisit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StateError> + 'a;

/// Visits every key starting with `prefix`, in order, stopping at the first error `visit`
/// returns (which is then returned).
pub fn try_scan_prefix(
    store: &dyn StateStore,
    table: Table,
    prefix: &[u8],
    visit: &mut TryVisit<'_>,
) -> Result<(), StateError> {
    let mut failure = None;
    scan_prefix(store, table, prefix, &mut |k, v| match visit(k, v) {
        Ok(()) => true,
        Err(e) => {
            failure = Some(e);
            false
        }
    })?;
    failure.map_or(Ok(()), Err)
}

/// The smallest key greater than every key starting with `prefix` (`None` if there is none).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The keys of `table` in [start, end), in scan order.
    pub(crate) fn scan_keys(
        store: &dyn StateStore,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        store
            .scan(table, start, end, &mut |k, _| {
                out.push(k.to_vec());
                true
            })
            .unwrap();
        out
    }
}
