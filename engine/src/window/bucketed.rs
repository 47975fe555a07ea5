//! Tumbling and sliding windows: accumulators per (pane, key), in buckets ordered by pane.
//!
//! A bucket is one pane (a whole window when tumbling): a hash map from key (with its
//! precomputed hash) to an entry. Buckets live in a slab indexed by a `BTreeMap` from pane
//! start, and the last bucket touched is cached, so the hot path is: window arithmetic, one
//! cached bucket lookup, one hash lookup, the aggregate update. Nothing is allocated unless a
//! new (key, pane) entry appears.
//!
//! Entries carry a dirty flag (written by the next snapshot), a pending flag (a change not
//! emitted yet, with coalesced updates) and whether they were ever persisted (purging them
//! then deletes their stored key). After a snapshot, over the memory budget, clean entries of
//! the least recently touched buckets are evicted, but only those neither touched nor written
//! since the previous snapshot: the runtime writes a snapshot's batch after the operator
//! returns (while it goes on processing) and starts the next checkpoint only once that batch
//! is written, so only entries stored by an earlier snapshot are surely readable. (Evicting an
//! entry written by the current batch lost its state whenever it was read back before that
//! batch landed.) The budget can therefore be exceeded by what one checkpoint interval
//! touches. A bucket counts its evicted entries, so a key missing from a fully resident bucket
//! is known to be new without any read. A bucket with evicted entries also keeps a
//! Bloom filter of their key hashes ([`EvictedFilter`]), so a key missing from memory is read
//! from the store only if it may have been evicted.
//!
//! When a window of a single pane (every tumbling window) fires, its evicted entries are
//! streamed from a store scan straight into results instead of being loaded into the bucket,
//! and dropping the pane deletes its stored entries without loading them. A window over
//! several panes (sliding) still loads the evicted entries of its panes first, so memory can
//! exceed the budget while such a window fires.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, BTreeSet};
use std::mem::size_of;

use smallvec::SmallVec;

use crate::aggregate::{Accumulators, Aggregates};
use crate::event::{Key, KeyedRecord, Output, Timestamp, WindowResult, MAX_TIMESTAMP};
use crate::state::{prefix_end, try_scan_prefix, StateBatch, StateError, Table};

use super::assign::Geometry;
use super::emit::{Common, OnChange};
use super::evicted_filter::EvictedFilter;
use super::keys::{HKey, KeyMap};
use super::store_layout::{self as layout, acc_error, Reader};
use super::OperatorStats;

/// Stored flag: a change not emitted yet.
const F_PENDING: u8 = layout::FLAG_PENDING;
/// Stored flag: the main accumulator holds at least one record.
const F_MAIN: u8 = 2;
/// Flags kept in the stored header.
const STORED_FLAGS: u8 = F_PENDING | F_MAIN;
/// Changed since the last snapshot.
const F_DIRTY: u8 = 16;
/// Present in the store.
const F_PERSISTED: u8 = 32;

/// Buckets keep the capacity of their map for reuse unless it grew beyond this.
const REUSE_CAPACITY: usize = 1 << 16;

/// One (pane, key).
struct Entry {
    /// Records counting for every window of the pane.
    acc: Accumulators,
    /// Records that were late for the pane's first windows, by the first window they count
    /// for (rare: only sliding windows, for records behind their partition's watermark).
    /// Boxed so the common entry pays one pointer for it, not a whole `Vec`.
    #[allow(clippy::box_collection)]
    partials: Option<Box<Vec<(i64, Accumulators)>>>,
    flags: u8,
    /// Snapshot epoch of the last update.
    touched: u32,
    /// Bytes accounted for this entry.
    size: usize,
}

const ENTRY_OVERHEAD: usize = size_of::<HKey>() + size_of::<Entry>() + 8;

fn key_heap(key: &Key) -> usize {
    let n = key.as_bytes().len();
    if n > 22 {
        n
    } else {
        0
    }
}

impl Entry {
    fn new(acc: Accumulators) -> Self {
        Entry {
            acc,
            partials: None,
            flags: 0,
            touched: 0,
            size: 0,
        }
    }

    /// Merges what counts for window `j` into `into`; whether anything did.
    fn contribute(&self, aggs: &Aggregates, j: i64, into: &mut Accumulators) -> bool {
        let mut any = false;
        if self.flags & F_MAIN != 0 {
            aggs.merge(into, &self.acc);
            any = true;
        }
        if let Some(p) = &self.partials {
            for (first, a) in p.iter() {
                if *first <= j {
                    aggs.merge(into, a);
                    any = true;
                }
            }
        }
        any
    }

    fn measure(&self, aggs: &Aggregates, key: &Key) -> usize {
        let mut s = ENTRY_OVERHEAD + key_heap(key) + aggs.heap_size(&self.acc);
        if let Some(p) = &self.partials {
            s += 32 + p.len() * size_of::<(i64, Accumulators)>();
            s += p.iter().map(|(_, a)| aggs.heap_size(a)).sum::<usize>();
        }
        s
    }
}

#[derive(Default)]
struct Bucket {
    /// Pane start.
    start: Timestamp,
    entries: KeyMap<Entry>,
    /// Entries of this shard in the store but not in memory.
    evicted: u64,
    /// Key hashes of evicted entries (and of some reloaded since); empty when `evicted == 0`.
    filter: EvictedFilter,
    /// Entries with the dirty flag.
    dirty: u64,
    /// Entries with the pending flag.
    pending: u64,
    /// Sequence number of the last update (for eviction order).
    last_touch: u64,
}

/// Tumbling/sliding window state of one shard.
pub(crate) struct Panes {
    geo: Geometry,
    buckets: Vec<Bucket>,
    free: Vec<u32>,
    index: BTreeMap<Timestamp, u32>,
    cache: Option<(Timestamp, u32)>,
    /// Stored keys of entries purged since the last snapshot.
    deletes: Vec<Vec<u8>>,
    /// Stored key ranges `[start, end)` of panes dropped since the last snapshot.
    range_deletes: Vec<(Vec<u8>, Vec<u8>)>,
    mem_bytes: usize,
    epoch: u32,
    seq: u64,
    /// No window fires or is purged before this watermark.
    next_due: Timestamp,
}

impl Panes {
    pub fn new(geo: Geometry) -> Self {
        Panes {
            geo,
            buckets: Vec::new(),
            free: Vec::new(),
            index: BTreeMap::new(),
            cache: None,
            deletes: Vec::new(),
            range_deletes: Vec::new(),
            mem_bytes: 0,
            epoch: 0,
            seq: 0,
            next_due: MAX_TIMESTAMP,
        }
    }

    /// The bucket of the pane starting at `start`, created if missing.
    #[inline]
    fn slot(&mut self, start: Timestamp, w: Timestamp) -> u32 {
        if let Some((s, sl)) = self.cache {
            if s == start {
                return sl;
            }
        }
        let sl = match self.index.get(&start) {
            Some(&sl) => sl,
            None => {
                let sl = match self.free.pop() {
                    Some(sl) => sl,
                    None => {
                        self.buckets.push(Bucket::default());
                        (self.buckets.len() - 1) as u32
                    }
                };
                self.buckets[sl as usize].start = start;
                self.index.insert(start, sl);
                self.next_due = self.next_due.min(self.geo.pane_next_due(start, w));
                sl
            }
        };
        self.cache = Some((start, sl));
        sl
    }

    pub fn process(
        &mut self,
        c: &mut Common,
        rec: KeyedRecord,
        out: &mut dyn FnMut(Output),
    ) -> Result<(), StateError> {
        let g = self.geo;
        let t = rec.record.time;
        let seen = rec.partition_watermark.max(c.watermark);
        let (lo, hi) = g.windows_of(t);
        let first = lo.max(g.first_purge_after(seen));
        if first > hi {
            // `lo > hi`: the slide exceeds the size and `t` is in no window at all.
            if lo <= hi {
                c.late(rec, seen, out);
            }
            return Ok(());
        }
        let w = c.watermark;
        let sl = self.slot(g.pane_start(t), w) as usize;
        let hk = HKey {
            hash: rec.key_hash,
            key: rec.key,
        };
        if self.may_be_evicted(sl, &hk) {
            self.reload(c, sl, &hk)?;
        }
        let on_change = c.on_change(false);
        let emit_key = (on_change == OnChange::Emit
            || (c.on_change(true) == OnChange::Emit && g.end(first) <= w))
            .then(|| hk.clone());
        self.seq += 1;
        let aggs = &c.spec.aggregates;
        let Bucket {
            entries,
            dirty,
            pending,
            last_touch,
            ..
        } = &mut self.buckets[sl];
        *last_touch = self.seq;
        let e = match entries.entry(hk) {
            MapEntry::Occupied(o) => o.into_mut(),
            MapEntry::Vacant(v) => {
                let mut e = Entry::new(aggs.create());
                e.size = ENTRY_OVERHEAD + key_heap(&v.key().key);
                self.mem_bytes += e.size;
                v.insert(e)
            }
        };
        if first == lo {
            aggs.update(&mut e.acc, &rec.record);
            e.flags |= F_MAIN;
        } else {
            let partials = e.partials.get_or_insert_with(Default::default);
            match partials.iter_mut().find(|(f, _)| *f == first) {
                Some((_, a)) => aggs.update(a, &rec.record),
                None => {
                    let mut a = aggs.create();
                    aggs.update(&mut a, &rec.record);
                    partials.push((first, a));
                }
            }
        }
        if e.flags & F_DIRTY == 0 {
            e.flags |= F_DIRTY;
            *dirty += 1;
        }
        e.touched = self.epoch;
        if on_change == OnChange::Pend && e.flags & F_PENDING == 0 {
            e.flags |= F_PENDING;
            *pending += 1;
        }
        if let Some(hk) = emit_key {
            for j in first..=hi {
                if c.on_change(g.end(j) <= w) == OnChange::Emit {
                    if let Some(r) = self.window_result(c, &hk, j, false)? {
                        c.emit(r, out);
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `hk` is not in memory in bucket `sl` but may be in the store.
    #[inline]
    fn may_be_evicted(&self, sl: usize, hk: &HKey) -> bool {
        let b = &self.buckets[sl];
        b.evicted > 0 && !b.entries.contains_key(hk) && b.filter.may_contain(hk.hash)
    }

    /// Records that bucket `sl` has no evicted entry left.
    fn none_evicted(&mut self, sl: usize) {
        let b = &mut self.buckets[sl];
        b.evicted = 0;
        self.mem_bytes = self.mem_bytes.saturating_sub(b.filter.heap_bytes());
        b.filter.clear();
    }

    /// Reads an evicted entry back, if the store has it.
    fn reload(&mut self, c: &Common, sl: usize, hk: &HKey) -> Result<(), StateError> {
        let pane_end = self.geo.pane_end(self.buckets[sl].start);
        let key = layout::pane_key(&c.prefix, pane_end, &hk.key);
        if let Some(v) = c.store.get(Table::Windows, &key)? {
            let (_, mut e) = decode_entry(&c.spec.aggregates, &v)?;
            e.size = e.measure(&c.spec.aggregates, &hk.key);
            self.mem_bytes += e.size;
            let b = &mut self.buckets[sl];
            b.evicted = b.evicted.saturating_sub(1);
            b.entries.insert(hk.clone(), e);
            if b.evicted == 0 {
                self.none_evicted(sl);
            }
        }
        Ok(())
    }

    /// Reads every evicted entry of a bucket back.
    fn ensure_loaded(&mut self, c: &Common, sl: usize) -> Result<(), StateError> {
        if self.buckets[sl].evicted == 0 {
            return Ok(());
        }
        let pane_end = self.geo.pane_end(self.buckets[sl].start);
        let prefix = layout::pane_prefix(&c.prefix, pane_end);
        let aggs = &c.spec.aggregates;
        let epoch = self.epoch;
        let b = &mut self.buckets[sl];
        let mem = &mut self.mem_bytes;
        try_scan_prefix(&*c.store, Table::Windows, &prefix, &mut |k, v| {
            let key = Key::from_bytes(&k[prefix.len()..]);
            let hash = stored_hash(v)?;
            if !c.owns(hash) {
                return Ok(());
            }
            let hk = HKey { hash, key };
            if b.entries.contains_key(&hk) {
                return Ok(());
            }
            let (_, mut e) = decode_entry(aggs, v)?;
            e.size = e.measure(aggs, &hk.key);
            // Read from the store, so durable: evictable again at the next snapshot.
            e.touched = epoch.wrapping_sub(1);
            *mem += e.size;
            b.entries.insert(hk, e);
            Ok(())
        })?;
        self.none_evicted(sl);
        Ok(())
    }

    /// Pushes the results of single-pane window `j` for the evicted entries of its bucket
    /// `sl`, read by a store scan and not loaded into memory.
    fn close_evicted(
        &self,
        c: &Common,
        sl: usize,
        j: i64,
        fires: bool,
        purges: bool,
        results: &mut Vec<WindowResult>,
    ) -> Result<(), StateError> {
        let b = &self.buckets[sl];
        if b.evicted == 0 {
            return Ok(());
        }
        let g = self.geo;
        let (s, e) = (g.start(j), g.end(j));
        let prefix = layout::pane_prefix(&c.prefix, g.pane_end(b.start));
        let aggs = &c.spec.aggregates;
        try_scan_prefix(&*c.store, Table::Windows, &prefix, &mut |k, v| {
            let hash = stored_hash(v)?;
            if !c.owns(hash) {
                return Ok(());
            }
            let hk = HKey {
                hash,
                key: Key::from_bytes(&k[prefix.len()..]),
            };
            if b.entries.contains_key(&hk) {
                // Resident: its (possibly newer) state was already handled.
                return Ok(());
            }
            let (_, en) = decode_entry(aggs, v)?;
            let Some(is_final) = c.on_close(fires, purges, en.flags & F_PENDING != 0) else {
                return Ok(());
            };
            if en.partials.is_none() {
                if en.flags & F_MAIN != 0 {
                    results.push(c.result(hk.key, s, e, &en.acc, is_final));
                }
            } else {
                let mut acc = aggs.create();
                if en.contribute(aggs, j, &mut acc) {
                    results.push(c.result(hk.key, s, e, &acc, is_final));
                }
            }
            Ok(())
        })
    }

    /// The current result of window `j` for one key (`None` if no record counts for it).
    fn window_result(
        &mut self,
        c: &Common,
        hk: &HKey,
        j: i64,
        is_final: bool,
    ) -> Result<Option<WindowResult>, StateError> {
        let g = self.geo;
        let (s, e) = (g.start(j), g.end(j));
        let slots: SmallVec<[u32; 8]> = self.index.range(s..e).map(|(_, &sl)| sl).collect();
        for &sl in &slots {
            let sl = sl as usize;
            if self.may_be_evicted(sl, hk) {
                self.reload(c, sl, hk)?;
            }
        }
        let aggs = &c.spec.aggregates;
        if let [sl] = slots[..] {
            if let Some(en) = self.buckets[sl as usize].entries.get(hk) {
                if en.partials.is_none() {
                    return Ok((en.flags & F_MAIN != 0)
                        .then(|| c.result(hk.key.clone(), s, e, &en.acc, is_final)));
                }
            }
        }
        let mut acc = aggs.create();
        let mut any = false;
        for &sl in &slots {
            if let Some(en) = self.buckets[sl as usize].entries.get(hk) {
                any |= en.contribute(aggs, j, &mut acc);
            }
        }
        Ok(any.then(|| c.result(hk.key.clone(), s, e, &acc, is_final)))
    }

    /// Fires and purges what the watermark step `(prev, w]` closes.
    pub fn advance(
        &mut self,
        c: &mut Common,
        prev: Timestamp,
        w: Timestamp,
        results: &mut Vec<WindowResult>,
    ) -> Result<(), StateError> {
        if w < self.next_due {
            return Ok(());
        }
        let g = self.geo;
        let (fa, fb) = (
            g.first_end_after(prev),
            g.first_end_after(w).saturating_sub(1),
        );
        let (pa, pb) = (
            g.first_purge_after(prev),
            g.first_purge_after(w).saturating_sub(1),
        );
        let mut due = BTreeSet::new();
        for &start in self.index.range(..w).map(|(s, _)| s) {
            let (lo, hi) = g.windows_of(start);
            due.extend(lo.max(fa)..=hi.min(fb));
            due.extend(lo.max(pa)..=hi.min(pb));
        }
        let aggs = c.spec.aggregates.clone();
        for j in due {
            let (s, e) = (g.start(j), g.end(j));
            let fires = prev < e && e <= w;
            let purge_time = g.purge_time(j);
            let purges = prev < purge_time && purge_time <= w;
            let slots: SmallVec<[u32; 8]> = self.index.range(s..e).map(|(_, &sl)| sl).collect();
            let single = slots.len() == 1;
            if let [sl] = slots[..] {
                self.close_evicted(c, sl as usize, j, fires, purges, results)?;
            } else {
                for &sl in &slots {
                    self.ensure_loaded(c, sl as usize)?;
                }
            }
            let mut merged: KeyMap<(Accumulators, bool, bool)> = KeyMap::default();
            for &sl in &slots {
                let b = &mut self.buckets[sl as usize];
                for (hk, en) in b.entries.iter() {
                    let pending = en.flags & F_PENDING != 0;
                    if single && en.partials.is_none() {
                        if en.flags & F_MAIN != 0 {
                            if let Some(is_final) = c.on_close(fires, purges, pending) {
                                results.push(c.result(hk.key.clone(), s, e, &en.acc, is_final));
                            }
                        }
                        continue;
                    }
                    let m = merged
                        .entry(hk.clone())
                        .or_insert_with(|| (aggs.create(), false, false));
                    m.1 |= en.contribute(&aggs, j, &mut m.0);
                    m.2 |= pending;
                }
                if g.is_tumbling() && b.pending > 0 {
                    // The pane's only window emitted (or closed over) every pending change.
                    for en in b.entries.values_mut() {
                        if en.flags & F_PENDING != 0 {
                            en.flags &= !F_PENDING;
                            if en.flags & F_DIRTY == 0 {
                                en.flags |= F_DIRTY;
                                b.dirty += 1;
                            }
                        }
                    }
                    b.pending = 0;
                }
            }
            for (hk, (acc, any, pending)) in merged {
                if any {
                    if let Some(is_final) = c.on_close(fires, purges, pending) {
                        results.push(c.result(hk.key, s, e, &acc, is_final));
                    }
                }
            }
        }
        let dropped: Vec<(Timestamp, u32)> = self
            .index
            .range(..w)
            .filter(|(s, _)| g.pane_drop_time(**s) <= w)
            .map(|(s, sl)| (*s, *sl))
            .collect();
        for (start, sl) in dropped {
            self.drop_pane(c, start, sl)?;
        }
        self.next_due = self
            .index
            .keys()
            .map(|&s| g.pane_next_due(s, w))
            .min()
            .unwrap_or(MAX_TIMESTAMP);
        Ok(())
    }

    /// Drops a pane whose windows are all purged, deleting its stored entries (evicted ones
    /// included, without loading them).
    fn drop_pane(&mut self, c: &Common, start: Timestamp, sl: u32) -> Result<(), StateError> {
        let pane_end = self.geo.pane_end(start);
        let prefix = layout::pane_prefix(&c.prefix, pane_end);
        // With one shard every stored entry of the pane is ours: one range delete does.
        let range = (c.spec.shards <= 1).then(|| prefix_end(&prefix)).flatten();
        let b = &mut self.buckets[sl as usize];
        if range.is_none() && b.evicted > 0 {
            let deletes = &mut self.deletes;
            try_scan_prefix(&*c.store, Table::Windows, &prefix, &mut |k, v| {
                let hash = stored_hash(v)?;
                if !c.owns(hash) {
                    return Ok(());
                }
                let hk = HKey {
                    hash,
                    key: Key::from_bytes(&k[prefix.len()..]),
                };
                if !b.entries.contains_key(&hk) {
                    deletes.push(k.to_vec());
                }
                Ok(())
            })?;
        }
        for (hk, en) in b.entries.drain() {
            if range.is_none() && en.flags & F_PERSISTED != 0 {
                self.deletes
                    .push(layout::pane_key(&c.prefix, pane_end, &hk.key));
            }
            self.mem_bytes = self.mem_bytes.saturating_sub(en.size);
        }
        if b.entries.capacity() > REUSE_CAPACITY {
            b.entries = KeyMap::default();
        }
        if let Some(end) = range {
            self.range_deletes.push((prefix, end));
        }
        self.none_evicted(sl as usize);
        let b = &mut self.buckets[sl as usize];
        b.dirty = 0;
        b.pending = 0;
        self.index.remove(&start);
        self.free.push(sl);
        self.cache = None;
        Ok(())
    }

    /// Emits every pending change (coalesced updates): all windows still kept of each pending
    /// (pane, key).
    pub fn flush_pending(
        &mut self,
        c: &mut Common,
        results: &mut Vec<WindowResult>,
    ) -> Result<(), StateError> {
        let g = self.geo;
        let first_kept = g.first_purge_after(c.watermark);
        let mut todo: BTreeMap<(i64, Key), u64> = BTreeMap::new();
        for (&start, &sl) in &self.index {
            let b = &mut self.buckets[sl as usize];
            if b.pending == 0 {
                continue;
            }
            let (lo, hi) = g.windows_of(start);
            for (hk, en) in b.entries.iter_mut() {
                if en.flags & F_PENDING == 0 {
                    continue;
                }
                en.flags &= !F_PENDING;
                if en.flags & F_DIRTY == 0 {
                    en.flags |= F_DIRTY;
                    b.dirty += 1;
                }
                for j in lo.max(first_kept)..=hi {
                    todo.insert((j, hk.key.clone()), hk.hash);
                }
            }
            b.pending = 0;
        }
        for ((j, key), hash) in todo {
            if let Some(r) = self.window_result(c, &HKey { hash, key }, j, false)? {
                results.push(r);
            }
        }
        Ok(())
    }

    pub fn snapshot(&mut self, c: &mut Common, batch: &mut StateBatch) {
        let aggs = &c.spec.aggregates;
        let g = self.geo;
        for (&start, &sl) in &self.index {
            let b = &mut self.buckets[sl as usize];
            if b.dirty == 0 {
                continue;
            }
            let pane_end = g.pane_end(start);
            for (hk, en) in b.entries.iter_mut() {
                if en.flags & F_DIRTY == 0 {
                    continue;
                }
                batch.put(
                    Table::Windows,
                    layout::pane_key(&c.prefix, pane_end, &hk.key),
                    encode_entry(aggs, hk.hash, en),
                );
                en.flags = (en.flags & !F_DIRTY) | F_PERSISTED;
                // Written by this batch, not durable yet: `evict` must keep it this time.
                en.touched = self.epoch;
                let size = en.measure(aggs, &hk.key);
                self.mem_bytes = self.mem_bytes.saturating_sub(en.size) + size;
                en.size = size;
            }
            b.dirty = 0;
        }
        for k in self.deletes.drain(..) {
            batch.delete(Table::Windows, k);
        }
        for (start, end) in self.range_deletes.drain(..) {
            batch.delete_range(Table::Windows, start, end);
        }
        self.evict(c.spec.memory_budget_bytes);
        self.epoch = self.epoch.wrapping_add(1);
    }

    /// Evicts clean entries down to 80% of `budget`, least recently touched buckets first;
    /// only entries neither touched nor written since the previous snapshot (see the module
    /// documentation).
    fn evict(&mut self, budget: usize) {
        if self.mem_bytes <= budget {
            return;
        }
        let target = budget / 10 * 8;
        let mut order: Vec<(u64, u32)> = self
            .index
            .values()
            .map(|&sl| (self.buckets[sl as usize].last_touch, sl))
            .collect();
        order.sort_unstable();
        let epoch = self.epoch;
        for &(_, sl) in &order {
            if self.mem_bytes <= target {
                return;
            }
            let Bucket {
                entries, filter, ..
            } = &mut self.buckets[sl as usize];
            let mem = &mut self.mem_bytes;
            let before = entries.len();
            entries.retain(|hk, en| {
                let keep = *mem <= target
                    || en.flags & (F_DIRTY | F_PENDING) != 0
                    || en.flags & F_PERSISTED == 0
                    || en.touched == epoch;
                if !keep {
                    *mem = mem.saturating_sub(en.size) + filter.insert(hk.hash);
                }
                keep
            });
            let b = &mut self.buckets[sl as usize];
            let n = before - b.entries.len();
            if n > 0 {
                b.evicted += n as u64;
                b.entries.shrink_to_fit();
            }
        }
    }

    /// Rebuilds the buckets from the store, loading entries while under 80% of the budget and
    /// counting the others as evicted (entries with pending changes are always loaded).
    pub fn restore(&mut self, c: &mut Common) -> Result<(), StateError> {
        let kind_prefix = layout::kind_prefix(&c.prefix, layout::KIND_PANE);
        let target = c.spec.memory_budget_bytes / 10 * 8;
        let store = c.store.clone();
        try_scan_prefix(&*store, Table::Windows, &kind_prefix, &mut |k, v| {
            self.restore_one(c, &k[kind_prefix.len()..], k, v, target)
        })?;
        let w = c.watermark;
        let g = self.geo;
        self.next_due = self
            .index
            .keys()
            .map(|&s| g.pane_next_due(s, w))
            .min()
            .unwrap_or(MAX_TIMESTAMP);
        Ok(())
    }

    fn restore_one(
        &mut self,
        c: &Common,
        rest: &[u8],
        full_key: &[u8],
        v: &[u8],
        target: usize,
    ) -> Result<(), StateError> {
        let corrupt = |reason: &str| StateError::Corrupt {
            table: Table::Windows,
            reason: reason.into(),
        };
        let (end, key) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("window key too short"))?;
        let pane_end = layout::decode_ts(*end);
        let g = self.geo;
        let start = pane_end
            .checked_sub(g.pane)
            .filter(|s| g.pane_start(*s) == *s)
            .ok_or_else(|| corrupt("pane end does not match the window size"))?;
        let mut r = Reader::new(v, Table::Windows);
        r.version()?;
        let flags = r.u8()?;
        let hash = r.u64()?;
        if !c.owns(hash) {
            return Ok(());
        }
        if g.pane_drop_time(start) <= c.watermark {
            // Stale (written under another shard count): its windows are closed here.
            self.deletes.push(full_key.to_vec());
            return Ok(());
        }
        let sl = self.slot(start, c.watermark) as usize;
        if self.mem_bytes < target || flags & F_PENDING != 0 {
            let key = Key::from_bytes(key);
            let (_, mut e) = decode_entry(&c.spec.aggregates, v)?;
            e.size = e.measure(&c.spec.aggregates, &key);
            // Read from the store, so durable: evictable at the first snapshot.
            e.touched = self.epoch.wrapping_sub(1);
            self.mem_bytes += e.size;
            let b = &mut self.buckets[sl];
            if e.flags & F_PENDING != 0 {
                b.pending += 1;
            }
            b.entries.insert(HKey { hash, key }, e);
        } else {
            let b = &mut self.buckets[sl];
            b.evicted += 1;
            self.mem_bytes += b.filter.insert(hash);
        }
        Ok(())
    }

    pub fn fill_stats(&self, stats: &mut OperatorStats) {
        for &sl in self.index.values() {
            let b = &self.buckets[sl as usize];
            stats.entries_in_memory += b.entries.len() as u64;
            stats.entries_evicted += b.evicted;
        }
        stats.open_windows = stats.entries_in_memory + stats.entries_evicted;
    }
}

fn encode_entry(aggs: &Aggregates, hash: u64, en: &Entry) -> Vec<u8> {
    let mut v = Vec::with_capacity(32);
    v.push(layout::VERSION);
    v.push(en.flags & STORED_FLAGS);
    v.extend_from_slice(&hash.to_be_bytes());
    layout::put_encoded(&mut v, |b| aggs.encode(&en.acc, b));
    let partials = en.partials.as_deref().map_or(&[][..], |p| &p[..]);
    let n = partials.len().min(u16::MAX as usize);
    v.extend_from_slice(&(n as u16).to_be_bytes());
    for (first, a) in &partials[..n] {
        v.extend_from_slice(&first.to_be_bytes());
        layout::put_encoded(&mut v, |b| aggs.encode(a, b));
    }
    v
}

fn stored_hash(v: &[u8]) -> Result<u64, StateError> {
    let mut r = Reader::new(v, Table::Windows);
    r.version()?;
    r.u8()?;
    r.u64()
}

/// Decodes a stored entry (clean, persisted) and its key hash.
fn decode_entry(aggs: &Aggregates, v: &[u8]) -> Result<(u64, Entry), StateError> {
    let mut r = Reader::new(v, Table::Windows);
    r.version()?;
    let flags = r.u8()? & STORED_FLAGS;
    let hash = r.u64()?;
    let acc = aggs
        .decode(r.bytes()?)
        .map_err(|e| acc_error(Table::Windows, e))?;
    let n = r.u16()?;
    let mut partials = Vec::new();
    for _ in 0..n {
        let first = r.i64()?;
        let a = aggs
            .decode(r.bytes()?)
            .map_err(|e| acc_error(Table::Windows, e))?;
        partials.push((first, a));
    }
    r.finish()?;
    let mut e = Entry::new(acc);
    e.flags = flags | F_PERSISTED;
    if !partials.is_empty() {
        e.partials = Some(Box::new(partials));
    }
    Ok((hash, e))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::aggregate::{Aggregates, CompiledAggregate};
    use crate::event::{FieldSlots, Key, KeyedRecord, Output, Record, ResultSchema, Value};
    use crate::state::{MemoryStateStore, StateBatch, StateStore, Table};
    use crate::topology::{AggregateFunction, Duration, EmitMode, WindowSpec};
    use crate::window::{WindowOperator, WindowOperatorSpec};

    use super::layout;

    fn spec() -> WindowOperatorSpec {
        let mut slots = FieldSlots::default();
        slots.slot("user");
        WindowOperatorSpec {
            operator_id: "pipe".into(),
            schema: Arc::new(ResultSchema {
                pipeline: "p".into(),
                key_fields: vec!["user".into()],
                aggregate_names: vec!["n".into()],
            }),
            slots: Arc::new(slots),
            window: WindowSpec::Tumbling {
                size: Duration::from_millis(1000),
                allowed_lateness: None,
            },
            aggregates: Aggregates::new(vec![CompiledAggregate {
                name: "n".into(),
                function: AggregateFunction::Count,
                slot: None,
                q: 0.5,
                n: 3,
            }]),
            emit: EmitMode::OnClose,
            emit_every_ms: None,
            having: None,
            late_output: false,
            shard: 0,
            shards: 1,
            memory_budget_bytes: 1,
        }
    }

    fn add(op: &mut WindowOperator, user: u32, t: i64) {
        let key = Key::from_values(&[Value::Str(format!("u{user}").into())]);
        let rec = KeyedRecord {
            key_hash: key.stable_hash(),
            key,
            record: Record {
                time: t,
                fields: [Value::Str(format!("u{user}").into())]
                    .into_iter()
                    .collect(),
            },
            partition_watermark: i64::MIN,
        };
        op.process(rec, &mut |_| {}).unwrap();
    }

    /// Like the runtime: a snapshot's batch is written while the operator goes on, and the
    /// next snapshot comes only after it was written. Entries evicted to the store are read
    /// back (the filter must know them), new keys are not, and the firing window streams the
    /// evicted ones from the store.
    #[test]
    fn eviction_waits_for_the_batch_and_evicted_keys_come_back() {
        let store = Arc::new(MemoryStateStore::new());
        let mut op = WindowOperator::new(spec(), store.clone()).unwrap();
        let pass = |op: &mut WindowOperator, users: std::ops::Range<u32>| {
            for u in users {
                add(op, u, 10);
            }
            let mut b = StateBatch::default();
            op.snapshot(&mut b).unwrap();
            b
        };
        let a = pass(&mut op, 0..5000);
        // Batch `a` is not written yet: nothing it holds may be evicted.
        assert_eq!(op.stats().entries_evicted, 0);
        let b = pass(&mut op, 0..5000);
        store.write(a).unwrap();
        store.write(b).unwrap();
        let c = pass(&mut op, 5000..6000);
        assert_eq!(op.stats().entries_evicted, 5000);
        store.write(c).unwrap();
        let d = pass(&mut op, 2000..8000);
        store.write(d).unwrap();
        let mut results = Vec::new();
        op.advance_watermark(i64::MAX, &mut |o| {
            if let Output::Result(r) = o {
                results.push((r.key.clone(), r.aggregates[0].as_i64().unwrap_or(-1)));
            }
        })
        .unwrap();
        let want = |u: u32| match u {
            0..2000 => 2,
            2000..5000 => 3,
            5000..6000 => 2,
            _ => 1,
        };
        assert_eq!(results.len(), 8000);
        for (k, n) in results {
            let u: u32 = match k.values().unwrap_or_default().first() {
                Some(Value::Str(s)) => s[1..].parse().unwrap(),
                other => panic!("unexpected key {other:?}"),
            };
            assert_eq!(n, want(u), "user {u}");
        }
        let mut b = StateBatch::default();
        op.snapshot(&mut b).unwrap();
        store.write(b).unwrap();
        let panes = layout::kind_prefix(&layout::prefix("pipe"), layout::KIND_PANE);
        let mut left = 0;
        crate::state::scan_prefix(&*store, Table::Windows, &panes, &mut |_, _| {
            left += 1;
            true
        })
        .unwrap();
        assert_eq!(left, 0, "the dropped pane left stored entries");
    }
}
