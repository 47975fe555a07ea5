//! An in-memory [`StateStore`] for unit tests of operators and the protocol.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{BatchOp, StateBatch, StateError, StateStore, Table};

/// How many entries a scan copies out per lock acquisition. Scans visit outside the lock so
/// that `visit` may read or write the store itself, like it may with RocksDB.
const SCAN_CHUNK: usize = 256;

type Tables = BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>;

/// A [`StateStore`] held in memory: one ordered map per table behind a single lock, so a batch
/// spanning tables is atomic. Nothing survives the process; "durable" means "visible".
#[derive(Debug, Default)]
pub struct MemoryStateStore {
    tables: RwLock<Tables>,
    poisoned: AtomicBool,
}

impl MemoryStateStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later write fail with [`StateError::Poisoned`], as after a failed write;
    /// lets tests exercise a worker's reaction to a store it can no longer persist to.
    pub fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
    }

    /// Whether the store refuses writes.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    /// The number of keys in `table`.
    pub fn len(&self, table: Table) -> usize {
        self.read()
            .map(|t| t.get(&table).map_or(0, BTreeMap::len))
            .unwrap_or(0)
    }

    /// Whether every table is empty.
    pub fn is_empty(&self) -> bool {
        self.read()
            .map(|t| t.values().all(BTreeMap::is_empty))
            .unwrap_or(true)
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Tables>, StateError> {
        // A panic while the write lock was held may have left a batch half-applied.
        self.tables.read().map_err(|_| StateError::Poisoned)
    }

    fn write_lock(&self) -> Result<RwLockWriteGuard<'_, Tables>, StateError> {
        self.tables.write().map_err(|_| StateError::Poisoned)
    }
}

impl StateStore for MemoryStateStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.read()?.get(&table).and_then(|t| t.get(key)).cloned())
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StateError> {
        let mut lower: Bound<Vec<u8>> = Bound::Included(start.to_vec());
        loop {
            let chunk: Vec<(Vec<u8>, Vec<u8>)> = {
                let tables = self.read()?;
                let Some(map) = tables.get(&table) else {
                    return Ok(());
                };
                let upper = match end {
                    Some(e) => Bound::Excluded(e),
                    None => Bound::Unbounded,
                };
                let lower_ref = match &lower {
                    Bound::Included(k) => Bound::Included(k.as_slice()),
                    Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
                    Bound::Unbounded => Bound::Unbounded,
                };
                if range_is_empty(lower_ref, upper) {
                    return Ok(());
                }
                map.range::<[u8], _>((lower_ref, upper))
                    .take(SCAN_CHUNK)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            };
            let full = chunk.len() == SCAN_CHUNK;
            let mut last = None;
            for (k, v) in chunk {
                if !visit(&k, &v) {
                    return Ok(());
                }
                last = Some(k);
            }
            match (full, last) {
                (true, Some(k)) => lower = Bound::Excluded(k),
                _ => return Ok(()),
            }
        }
    }

    fn write(&self, batch: StateBatch) -> Result<(), StateError> {
        if self.is_poisoned() {
            return Err(StateError::Poisoned);
        }
        let mut tables = self.write_lock()?;
        for op in batch.ops {
            match op {
                BatchOp::Put(table, k, v) => {
                    tables.entry(table).or_default().insert(k, v);
                }
                BatchOp::Delete(table, k) => {
                    if let Some(map) = tables.get_mut(&table) {
                        map.remove(&k);
                    }
                }
                BatchOp::DeleteRange(table, start, end) => {
                    if start >= end {
                        continue;
                    }
                    if let Some(map) = tables.get_mut(&table) {
                        let doomed: Vec<Vec<u8>> = map
                            .range::<[u8], _>((
                                Bound::Included(start.as_slice()),
                                Bound::Excluded(end.as_slice()),
                            ))
                            .map(|(k, _)| k.clone())
                            .collect();
                        for k in doomed {
                            map.remove(&k);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether no key lies between the bounds; `BTreeMap::range` panics on inverted bounds.
fn range_is_empty(lower: Bound<&[u8]>, upper: Bound<&[u8]>) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Excluded(u)) => l >= u,
        (Bound::Excluded(l), Bound::Excluded(u)) => l >= u,
        (Bound::Included(l), Bound::Included(u)) => l > u,
        (Bound::Excluded(l), Bound::Included(u)) => l >= u,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::scan_prefix;
    use crate::state::tests::scan_keys as collect;

    #[test]
    fn put_get_delete() {
        let s = MemoryStateStore::new();
        let mut b = StateBatch::default();
        b.put(Table::Windows, b"a".to_vec(), b"1".to_vec());
        b.put(Table::Sessions, b"a".to_vec(), b"2".to_vec());
        s.write(b).unwrap();
        assert_eq!(s.get(Table::Windows, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.get(Table::Sessions, b"a").unwrap(), Some(b"2".to_vec()));
        assert_eq!(s.get(Table::Meta, b"a").unwrap(), None);
        let mut b = StateBatch::default();
        b.delete(Table::Windows, b"a".to_vec());
        s.write(b).unwrap();
        assert_eq!(s.get(Table::Windows, b"a").unwrap(), None);
        assert_eq!(s.len(Table::Sessions), 1);
    }

    #[test]
    fn ops_apply_in_order() {
        let s = MemoryStateStore::new();
        let mut b = StateBatch::default();
        b.put(Table::Windows, b"k".to_vec(), b"1".to_vec());
        b.delete(Table::Windows, b"k".to_vec());
        b.put(Table::Windows, b"j".to_vec(), b"1".to_vec());
        b.delete_range(Table::Windows, b"a".to_vec(), b"z".to_vec());
        b.put(Table::Windows, b"m".to_vec(), b"2".to_vec());
        s.write(b).unwrap();
        assert_eq!(collect(&s, Table::Windows, b"", None), vec![b"m".to_vec()]);
    }

    #[test]
    fn scan_bounds_and_chunks() {
        let s = MemoryStateStore::new();
        let mut b = StateBatch::default();
        for i in 0u32..1000 {
            b.put(Table::Windows, i.to_be_bytes().to_vec(), vec![1]);
        }
        b.put(Table::Sessions, b"other".to_vec(), vec![1]);
        s.write(b).unwrap();
        let all = collect(&s, Table::Windows, b"", None);
        assert_eq!(all.len(), 1000);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        let part = collect(
            &s,
            Table::Windows,
            &10u32.to_be_bytes(),
            Some(&700u32.to_be_bytes()),
        );
        assert_eq!(part.len(), 690);
        assert_eq!(part[0], 10u32.to_be_bytes().to_vec());
        assert!(collect(&s, Table::Windows, b"\xff", Some(b"\x00")).is_empty());
        assert!(collect(&s, Table::Staged, b"", None).is_empty());

        let mut seen = 0;
        s.scan(Table::Windows, b"", None, &mut |_, _| {
            seen += 1;
            seen < 300
        })
        .unwrap();
        assert_eq!(seen, 300);

        let mut n = 0;
        scan_prefix(&s, Table::Windows, &[0, 0, 1], &mut |_, _| {
            n += 1;
            true
        })
        .unwrap();
        assert_eq!(n, 256);
    }

    #[test]
    fn visitor_may_write_during_scan() {
        let s = MemoryStateStore::new();
        let mut b = StateBatch::default();
        for i in 0u32..600 {
            b.put(Table::Windows, i.to_be_bytes().to_vec(), vec![1]);
        }
        s.write(b).unwrap();
        let mut n = 0;
        s.scan(Table::Windows, b"", None, &mut |k, _| {
            let mut b = StateBatch::default();
            b.delete(Table::Windows, k.to_vec());
            s.write(b).unwrap();
            n += 1;
            true
        })
        .unwrap();
        assert_eq!(n, 600);
        assert_eq!(s.len(Table::Windows), 0);
    }

    #[test]
    fn inverted_delete_range_is_a_no_op() {
        let s = MemoryStateStore::new();
        let mut b = StateBatch::default();
        b.put(Table::Staged, b"b".to_vec(), vec![1]);
        b.delete_range(Table::Staged, b"c".to_vec(), b"a".to_vec());
        s.write(b).unwrap();
        assert_eq!(s.len(Table::Staged), 1);
    }

    #[test]
    fn poisoned_store_refuses_writes() {
        let s = MemoryStateStore::new();
        s.poison();
        let mut b = StateBatch::default();
        b.put(Table::Meta, b"k".to_vec(), b"v".to_vec());
        assert!(matches!(s.write(b), Err(StateError::Poisoned)));
        assert!(s.is_empty());
    }
}
