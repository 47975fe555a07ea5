//! The RocksDB [`StateStore`]: one column family per [`Table`], batches written as one synced
//! `WriteBatch`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType,
    DBWithThreadMode, Options, ReadOptions, SingleThreaded, WriteBatch, WriteOptions,
};

use super::{
    BatchOp, StateBatch, StateError, StateStore, Table, FORMAT_VERSION_KEY, STATE_FORMAT_VERSION,
};

/// Shared block cache for all column families: cold accumulators are read back by point gets,
/// but the hot set lives in the operators' memory, so the cache only needs to hold index and
/// filter blocks plus recently evicted keys.
const BLOCK_CACHE_BYTES: usize = 64 << 20;
/// Memtable size of the accumulator tables: a checkpoint writes every dirty accumulator each
/// second, so large memtables absorb repeated overwrites of the same keys before they reach L0.
const LARGE_WRITE_BUFFER_BYTES: usize = 64 << 20;
/// Memtable size of the small bookkeeping tables (meta, positions, staged outputs).
const SMALL_WRITE_BUFFER_BYTES: usize = 8 << 20;
/// Bounds the write-ahead log: small tables are rarely flushed on their own and would
/// otherwise keep every log file alive.
const MAX_TOTAL_WAL_BYTES: u64 = 256 << 20;
/// Bloom filter density for tables with point gets on keys that are often absent (new windows
/// and sessions): ~1% false positives.
const BLOOM_BITS_PER_KEY: f64 = 10.0;

// Pinned to the single-threaded column-family mode so another crate enabling rocksdb's
// `multi-threaded-cf` feature cannot change the handle types under us.
type Db = DBWithThreadMode<SingleThreaded>;

/// A [`StateStore`] on RocksDB, shared by all tasks of a worker (`Send + Sync`).
///
/// Each [`StateStore::write`] is one `WriteBatch` across column families, written with a
/// synced write-ahead log: atomic and durable when it returns. A failed write poisons the store:
/// every later write returns [`StateError::Poisoned`], so a worker cannot continue past a
/// checkpoint it could not persist.
pub struct RocksStateStore {
    db: Db,
    path: PathBuf,
    poisoned: AtomicBool,
}

impl std::fmt::Debug for RocksStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStateStore")
            .field("path", &self.path)
            .field("poisoned", &self.is_poisoned())
            .finish()
    }
}

impl RocksStateStore {
    /// Opens the store in `dir`, creating the directory, the database and its column families
    /// as needed.
    ///
    /// A fresh store gets [`STATE_FORMAT_VERSION`] written (synced) before `open` returns. A
    /// store with another version fails with [`StateError::Version`]; a store holding data but
    /// no version fails with [`StateError::Corrupt`].
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StateError::Store(format!(
                "cannot create state directory {}: {e}",
                dir.display()
            ))
        })?;

        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
        db_opts.set_bytes_per_sync(1 << 20);
        db_opts.set_keep_log_file_num(4);

        let cfs =
            Table::ALL.map(|t| ColumnFamilyDescriptor::new(t.name(), table_options(t, &cache)));
        let db = Db::open_cf_descriptors(&db_opts, dir, cfs).map_err(|e| {
            StateError::Store(format!(
                "cannot open state store {}: {}",
                dir.display(),
                e.into_string()
            ))
        })?;
        let store = RocksStateStore {
            db,
            path: dir.to_path_buf(),
            poisoned: AtomicBool::new(false),
        };
        store.check_format_version()?;
        Ok(store)
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether an earlier write failed and the store now refuses writes.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    /// Flushes every memtable to SST files. Not needed for durability (the write-ahead log
    /// is synced on every write); useful before measuring reads from disk.
    pub fn flush(&self) -> Result<(), StateError> {
        for table in Table::ALL {
            self.db
                .flush_cf(self.cf(table)?)
                .map_err(|e| StateError::Store(e.into_string()))?;
        }
        Ok(())
    }

    /// Marks the store as if a write had failed.
    #[cfg(test)]
    pub(crate) fn poison_for_test(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
    }

    fn cf(&self, table: Table) -> Result<&ColumnFamily, StateError> {
        self.db.cf_handle(table.name()).ok_or_else(|| {
            StateError::Store(format!("column family `{}` is missing", table.name()))
        })
    }

    fn check_format_version(&self) -> Result<(), StateError> {
        match self.get(Table::Meta, FORMAT_VERSION_KEY)? {
            Some(bytes) => {
                let raw: [u8; 4] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| StateError::Corrupt {
                            table: Table::Meta,
                            reason: format!("format_version has {} bytes, expected 4", bytes.len()),
                        })?;
                let found = u32::from_be_bytes(raw);
                if found != STATE_FORMAT_VERSION {
                    return Err(StateError::Version {
                        found,
                        supported: STATE_FORMAT_VERSION,
                    });
                }
                Ok(())
            }
            None => {
                for table in Table::ALL {
                    let mut any = false;
                    self.scan(table, b"", None, &mut |_, _| {
                        any = true;
                        false
                    })?;
                    if any {
                        return Err(StateError::Corrupt {
                            table,
                            reason: "the store holds data but no format_version; it was not \
                                     written by Weir or its metadata was lost"
                                .into(),
                        });
                    }
                }
                let mut batch = StateBatch::default();
                batch.put(
                    Table::Meta,
                    FORMAT_VERSION_KEY,
                    STATE_FORMAT_VERSION.to_be_bytes().to_vec(),
                );
                self.write(batch)
            }
        }
    }
}

/// Column-family options tuned to how each table is used.
fn table_options(table: Table, cache: &Cache) -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.set_level_compaction_dynamic_level_bytes(true);
    let mut block = BlockBasedOptions::default();
    block.set_block_cache(cache);
    block.set_format_version(5);
    match table {
        Table::Windows | Table::Sessions => {
            opts.set_write_buffer_size(LARGE_WRITE_BUFFER_BYTES);
            opts.set_max_write_buffer_number(3);
            block.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
            block.set_cache_index_and_filter_blocks(true);
            block.set_pin_l0_filter_and_index_blocks_in_cache(true);
        }
        Table::Meta | Table::Positions | Table::Staged => {
            opts.set_write_buffer_size(SMALL_WRITE_BUFFER_BYTES);
        }
    }
    opts.set_block_based_table_factory(&block);
    opts
}

impl StateStore for RocksStateStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.db
            .get_pinned_cf(self.cf(table)?, key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| StateError::Store(e.into_string()))
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        if end.is_some_and(|e| e <= start) {
            return Ok(());
        }
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(start.to_vec());
        if let Some(end) = end {
            ro.set_iterate_upper_bound(end.to_vec());
        }
        let mut it = self.db.raw_iterator_cf_opt(self.cf(table)?, ro);
        it.seek(start);
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !visit(k, v) {
                return Ok(());
            }
            it.next();
        }
        it.status().map_err(|e| StateError::Store(e.into_string()))
    }

    fn write(&self, batch: StateBatch) -> Result<(), StateError> {
        self.write_batch(batch, true)
    }

    fn write_unsynced(&self, batch: StateBatch) -> Result<(), StateError> {
        self.write_batch(batch, false)
    }
}

impl RocksStateStore {
    /// Applies `batch` as one RocksDB write, syncing the write-ahead log when `sync`.
    fn write_batch(&self, batch: StateBatch, sync: bool) -> Result<(), StateError> {
        if self.is_poisoned() {
            return Err(StateError::Poisoned);
        }
        let mut wb = WriteBatch::default();
        for op in batch.ops {
            match op {
                BatchOp::Put(t, k, v) => wb.put_cf(self.cf(t)?, k, v),
                BatchOp::Delete(t, k) => wb.delete_cf(self.cf(t)?, k),
                // RocksDB rejects inverted ranges; an empty range deletes nothing anyway.
                BatchOp::DeleteRange(_, start, end) if start >= end => {}
                BatchOp::DeleteRange(t, start, end) => wb.delete_range_cf(self.cf(t)?, start, end),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(|e| {
            self.poisoned.store(true, Ordering::SeqCst);
            StateError::Store(format!("write failed, store poisoned: {}", e.into_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::scan_prefix;
    use crate::state::tests::scan_keys as keys;

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<RocksStateStore>();
    }

    #[test]
    fn unsynced_writes_are_visible_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        {
            let s = RocksStateStore::open(&path).unwrap();
            let mut b = StateBatch::default();
            b.put(Table::Meta, b"marker".to_vec(), b"7".to_vec());
            b.put(Table::Positions, b"p0".to_vec(), b"42".to_vec());
            s.write_unsynced(b).unwrap();
            assert_eq!(s.get(Table::Meta, b"marker").unwrap(), Some(b"7".to_vec()));
        }
        // Written to the log (not only to memory): a reopened store replays it.
        let s = RocksStateStore::open(&path).unwrap();
        assert_eq!(s.get(Table::Meta, b"marker").unwrap(), Some(b"7".to_vec()));
        assert_eq!(
            s.get(Table::Positions, b"p0").unwrap(),
            Some(b"42".to_vec())
        );
    }

    #[test]
    fn writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        {
            let s = RocksStateStore::open(&path).unwrap();
            let mut b = StateBatch::default();
            for i in 0u32..100 {
                b.put(Table::Windows, i.to_be_bytes().to_vec(), vec![i as u8; 64]);
            }
            b.put(Table::Positions, b"p0".to_vec(), b"42".to_vec());
            s.write(b).unwrap();
        }
        let s = RocksStateStore::open(&path).unwrap();
        assert_eq!(
            s.get(Table::Windows, &7u32.to_be_bytes()).unwrap(),
            Some(vec![7; 64])
        );
        assert_eq!(
            s.get(Table::Positions, b"p0").unwrap(),
            Some(b"42".to_vec())
        );
        assert_eq!(keys(&s, Table::Windows, b"", None).len(), 100);
        assert_eq!(
            s.get(Table::Meta, FORMAT_VERSION_KEY).unwrap(),
            Some(STATE_FORMAT_VERSION.to_be_bytes().to_vec())
        );
    }

    #[test]
    fn batch_spanning_tables_is_atomic_and_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let s = RocksStateStore::open(dir.path()).unwrap();
        let mut b = StateBatch::default();
        for t in Table::ALL {
            b.put(t, b"k".to_vec(), t.name().as_bytes().to_vec());
        }
        b.delete(Table::Sessions, b"k".to_vec());
        b.put(Table::Staged, b"k".to_vec(), b"last".to_vec());
        s.write(b).unwrap();
        assert_eq!(
            s.get(Table::Windows, b"k").unwrap(),
            Some(b"windows".to_vec())
        );
        assert_eq!(s.get(Table::Sessions, b"k").unwrap(), None);
        assert_eq!(s.get(Table::Staged, b"k").unwrap(), Some(b"last".to_vec()));
        assert_eq!(s.get(Table::Meta, b"k").unwrap(), Some(b"meta".to_vec()));
        assert_eq!(
            s.get(Table::Positions, b"k").unwrap(),
            Some(b"positions".to_vec())
        );
    }

    #[test]
    fn scans_respect_bounds_and_tables() {
        let dir = tempfile::tempdir().unwrap();
        let s = RocksStateStore::open(dir.path()).unwrap();
        let mut b = StateBatch::default();
        for i in 0u16..500 {
            b.put(Table::Sessions, i.to_be_bytes().to_vec(), vec![1]);
        }
        b.put(Table::Windows, 3u16.to_be_bytes().to_vec(), vec![1]);
        s.write(b).unwrap();
        s.flush().unwrap();

        let mid = keys(
            &s,
            Table::Sessions,
            &100u16.to_be_bytes(),
            Some(&200u16.to_be_bytes()),
        );
        assert_eq!(mid.len(), 100);
        assert_eq!(mid[0], 100u16.to_be_bytes().to_vec());
        assert_eq!(mid[99], 199u16.to_be_bytes().to_vec());
        assert_eq!(
            keys(&s, Table::Sessions, &490u16.to_be_bytes(), None).len(),
            10
        );
        assert!(keys(&s, Table::Sessions, b"\x05", Some(b"\x01")).is_empty());
        assert_eq!(keys(&s, Table::Windows, b"", None).len(), 1);

        let mut n = 0;
        scan_prefix(&s, Table::Sessions, &[1], &mut |k, _| {
            assert_eq!(k[0], 1);
            n += 1;
            true
        })
        .unwrap();
        assert_eq!(n, 244); // 256..500
        let mut stopped = 0;
        s.scan(Table::Sessions, b"", None, &mut |_, _| {
            stopped += 1;
            stopped < 3
        })
        .unwrap();
        assert_eq!(stopped, 3);
    }

    #[test]
    fn delete_range_removes_half_open_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        {
            let s = RocksStateStore::open(&path).unwrap();
            let mut b = StateBatch::default();
            for i in 0u8..10 {
                b.put(Table::Staged, vec![i], vec![i]);
            }
            s.write(b).unwrap();
            s.flush().unwrap();
            let mut b = StateBatch::default();
            b.delete_range(Table::Staged, vec![2], vec![5]);
            b.delete_range(Table::Staged, vec![9], vec![1]); // inverted: no-op, not an error
            s.write(b).unwrap();
            assert_eq!(
                keys(&s, Table::Staged, b"", None),
                vec![
                    vec![0],
                    vec![1],
                    vec![5],
                    vec![6],
                    vec![7],
                    vec![8],
                    vec![9]
                ]
            );
        }
        let s = RocksStateStore::open(&path).unwrap();
        assert_eq!(s.get(Table::Staged, &[3]).unwrap(), None);
        assert_eq!(s.get(Table::Staged, &[5]).unwrap(), Some(vec![5]));
    }

    #[test]
    fn version_mismatch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RocksStateStore::open(dir.path()).unwrap();
            let mut b = StateBatch::default();
            b.put(
                Table::Meta,
                FORMAT_VERSION_KEY,
                (STATE_FORMAT_VERSION + 1).to_be_bytes().to_vec(),
            );
            s.write(b).unwrap();
        }
        match RocksStateStore::open(dir.path()) {
            Err(StateError::Version { found, supported }) => {
                assert_eq!(found, STATE_FORMAT_VERSION + 1);
                assert_eq!(supported, STATE_FORMAT_VERSION);
            }
            other => panic!("expected a version error, got {other:?}"),
        }
    }

    #[test]
    fn garbled_version_and_missing_version_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RocksStateStore::open(dir.path()).unwrap();
            let mut b = StateBatch::default();
            b.put(Table::Meta, FORMAT_VERSION_KEY, vec![1, 2]);
            s.write(b).unwrap();
        }
        assert!(matches!(
            RocksStateStore::open(dir.path()),
            Err(StateError::Corrupt {
                table: Table::Meta,
                ..
            })
        ));

        let dir = tempfile::tempdir().unwrap();
        {
            let s = RocksStateStore::open(dir.path()).unwrap();
            let mut b = StateBatch::default();
            b.delete(Table::Meta, FORMAT_VERSION_KEY);
            b.put(Table::Windows, b"k".to_vec(), b"v".to_vec());
            s.write(b).unwrap();
        }
        assert!(matches!(
            RocksStateStore::open(dir.path()),
            Err(StateError::Corrupt {
                table: Table::Windows,
                ..
            })
        ));
    }

    #[test]
    fn poisoned_store_refuses_writes_but_serves_reads() {
        let dir = tempfile::tempdir().unwrap();
        let s = RocksStateStore::open(dir.path()).unwrap();
        let mut b = StateBatch::default();
        b.put(Table::Windows, b"a".to_vec(), b"1".to_vec());
        s.write(b).unwrap();
        s.poison_for_test();
        assert!(s.is_poisoned());
        let mut b = StateBatch::default();
        b.put(Table::Windows, b"b".to_vec(), b"2".to_vec());
        assert!(matches!(s.write(b), Err(StateError::Poisoned)));
        assert_eq!(s.get(Table::Windows, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.get(Table::Windows, b"b").unwrap(), None);
    }
}
