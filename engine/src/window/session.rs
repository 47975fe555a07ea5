//! Session windows: per key, a sorted list of disjoint sessions that merge when a record
//! touches them. All sessions stay in memory (they are bounded by the keys active within
//! gap + lateness); every key's list is one value in [`Table::Sessions`].
//!
//! Timers are a min-heap of (due time, key) holding about one entry per key: a key is queued
//! at the earliest time one of its sessions fires or is purged, and re-queued when woken.
//! Stale entries are harmless, because a watermark step `(prev, w]` acts only on sessions whose
//! fire or purge time lies inside it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use crate::aggregate::Accumulators;
use crate::event::{Key, KeyedRecord, Output, Timestamp, WindowResult};
use crate::state::{try_scan_prefix, StateBatch, StateError, Table};

use super::emit::{Common, OnChange};
use super::keys::{HKey, KeyMap};
use super::store_layout::{self as layout, acc_error, Reader};
use super::OperatorStats;

struct Session {
    start: Timestamp,
    /// Last event time + gap.
    end: Timestamp,
    acc: Accumulators,
    pending: bool,
}

struct KeySessions {
    /// Sorted by start, disjoint and not touching.
    sessions: Vec<Session>,
    dirty: bool,
    persisted: bool,
    /// Listed in `pending_keys`.
    listed_pending: bool,
    /// The earliest timer queued for this key; every session's next due time is at or after
    /// it, so one timer per key suffices (`MAX`: none).
    timer_at: Timestamp,
}

impl Default for KeySessions {
    fn default() -> Self {
        KeySessions {
            sessions: Vec::new(),
            dirty: false,
            persisted: false,
            listed_pending: false,
            timer_at: Timestamp::MAX,
        }
    }
}

/// Session state of one shard.
pub(crate) struct Sessions {
    gap: i64,
    keys: KeyMap<KeySessions>,
    timers: BinaryHeap<Reverse<(Timestamp, Key, u64)>>,
    dirty_keys: Vec<HKey>,
    pending_keys: Vec<HKey>,
    deletes: Vec<Vec<u8>>,
}

impl Sessions {
    pub fn new(gap: i64) -> Self {
        Sessions {
            gap,
            keys: KeyMap::default(),
            timers: BinaryHeap::new(),
            dirty_keys: Vec::new(),
            pending_keys: Vec::new(),
            deletes: Vec::new(),
        }
    }

    fn fire_time(&self, s: &Session) -> Timestamp {
        s.end.saturating_add(self.gap)
    }

    fn purge_time(&self, c: &Common, s: &Session) -> Timestamp {
        self.fire_time(s).saturating_add(c.lateness)
    }

    /// When a session next needs the watermark: its fire time, or its purge time once fired.
    fn next_due(&self, c: &Common, s: &Session, w: Timestamp) -> Timestamp {
        let fire = self.fire_time(s);
        if fire > w {
            fire
        } else {
            self.purge_time(c, s)
        }
    }

    pub fn process(
        &mut self,
        c: &mut Common,
        rec: KeyedRecord,
        out: &mut dyn FnMut(Output),
    ) -> Result<(), StateError> {
        let t = rec.record.time;
        let seen = rec.partition_watermark.max(c.watermark);
        let gap = self.gap;
        if t.saturating_add(gap).saturating_add(c.lateness) <= seen {
            c.late(rec, seen, out);
            return Ok(());
        }
        let w = c.watermark;
        let aggs = &c.spec.aggregates;
        let hk = HKey {
            hash: rec.key_hash,
            key: rec.key,
        };
        let ks = self.keys.entry(hk.clone()).or_default();
        let mut new = Session {
            start: t,
            end: t.saturating_add(gap),
            acc: aggs.create(),
            pending: false,
        };
        aggs.update(&mut new.acc, &rec.record);
        // Sessions touching [t, t + gap]: start ≤ t + gap and t ≤ end.
        let first = ks.sessions.partition_point(|s| s.end < t);
        let mut last = first;
        while last < ks.sessions.len() && ks.sessions[last].start <= new.end {
            let s = &ks.sessions[last];
            new.start = new.start.min(s.start);
            new.end = new.end.max(s.end);
            aggs.merge(&mut new.acc, &s.acc);
            new.pending |= s.pending;
            last += 1;
        }
        ks.sessions.drain(first..last);
        let fire = new.end.saturating_add(gap);
        let fired = fire <= w;
        let change = c.on_change(fired);
        if change == OnChange::Pend && !new.pending {
            new.pending = true;
            if !ks.listed_pending {
                ks.listed_pending = true;
                self.pending_keys.push(hk.clone());
            }
        }
        let emit = (change == OnChange::Emit)
            .then(|| c.result(hk.key.clone(), new.start, new.end, &new.acc, false));
        let due = if fired {
            fire.saturating_add(c.lateness)
        } else {
            fire
        };
        if due < ks.timer_at {
            ks.timer_at = due;
            self.timers.push(Reverse((due, hk.key.clone(), hk.hash)));
        }
        ks.sessions.insert(first, new);
        if !ks.dirty {
            ks.dirty = true;
            self.dirty_keys.push(hk);
        }
        if let Some(r) = emit {
            c.emit(r, out);
        }
        Ok(())
    }

    pub fn advance(
        &mut self,
        c: &mut Common,
        prev: Timestamp,
        w: Timestamp,
        results: &mut Vec<WindowResult>,
    ) {
        let mut due: BTreeMap<Key, u64> = BTreeMap::new();
        while let Some(Reverse((t, _, _))) = self.timers.peek() {
            if *t > w {
                break;
            }
            if let Some(Reverse((_, key, hash))) = self.timers.pop() {
                due.insert(key, hash);
            }
        }
        for (key, hash) in due {
            let hk = HKey { hash, key };
            let Some(mut ks) = self.keys.remove(&hk) else {
                continue;
            };
            let mut kept = Vec::with_capacity(ks.sessions.len());
            for mut s in std::mem::take(&mut ks.sessions) {
                let fire = self.fire_time(&s);
                let purge = self.purge_time(c, &s);
                let fires = prev < fire && fire <= w;
                let purges = prev < purge && purge <= w;
                if let Some(is_final) = c.on_close(fires, purges, s.pending) {
                    results.push(c.result(hk.key.clone(), s.start, s.end, &s.acc, is_final));
                    if s.pending {
                        s.pending = false;
                        ks.dirty = true;
                    }
                }
                if purges || purge <= w {
                    ks.dirty = true;
                    continue;
                }
                kept.push(s);
            }
            ks.sessions = kept;
            let next = ks
                .sessions
                .iter()
                .map(|s| self.next_due(c, s, w))
                .min()
                .unwrap_or(Timestamp::MAX);
            if ks.timer_at <= w || next < ks.timer_at {
                ks.timer_at = next;
                if next < Timestamp::MAX {
                    self.timers.push(Reverse((next, hk.key.clone(), hk.hash)));
                }
            }
            self.put_back(c, hk, ks);
        }
    }

    /// Re-inserts a key's sessions after a change, or forgets the key if none is left.
    fn put_back(&mut self, c: &Common, hk: HKey, mut ks: KeySessions) {
        if ks.sessions.is_empty() {
            if ks.persisted {
                self.deletes.push(layout::session_key(&c.prefix, &hk.key));
            }
            return;
        }
        if ks.dirty {
            // Re-list it: the dirty list may hold it already, which snapshot tolerates.
            self.dirty_keys.push(hk.clone());
        }
        ks.listed_pending = ks.sessions.iter().any(|s| s.pending);
        if ks.listed_pending {
            self.pending_keys.push(hk.clone());
        }
        self.keys.insert(hk, ks);
    }

    pub fn flush_pending(&mut self, c: &mut Common, results: &mut Vec<WindowResult>) {
        for hk in std::mem::take(&mut self.pending_keys) {
            let Some(ks) = self.keys.get_mut(&hk) else {
                continue;
            };
            ks.listed_pending = false;
            for s in ks.sessions.iter_mut().filter(|s| s.pending) {
                s.pending = false;
                results.push(c.result(hk.key.clone(), s.start, s.end, &s.acc, false));
                if !ks.dirty {
                    ks.dirty = true;
                    self.dirty_keys.push(hk.clone());
                }
            }
        }
    }

    pub fn snapshot(&mut self, c: &mut Common, batch: &mut StateBatch) {
        let aggs = &c.spec.aggregates;
        for k in self.deletes.drain(..) {
            batch.delete(Table::Sessions, k);
        }
        for hk in std::mem::take(&mut self.dirty_keys) {
            let Some(ks) = self.keys.get_mut(&hk) else {
                continue;
            };
            if !ks.dirty {
                continue;
            }
            let mut v = Vec::with_capacity(16 + 32 * ks.sessions.len());
            v.push(layout::VERSION);
            v.extend_from_slice(&hk.hash.to_be_bytes());
            v.extend_from_slice(&(ks.sessions.len() as u32).to_be_bytes());
            for s in &ks.sessions {
                v.extend_from_slice(&s.start.to_be_bytes());
                v.extend_from_slice(&s.end.to_be_bytes());
                v.push(if s.pending { layout::FLAG_PENDING } else { 0 });
                layout::put_encoded(&mut v, |b| aggs.encode(&s.acc, b));
            }
            batch.put(Table::Sessions, layout::session_key(&c.prefix, &hk.key), v);
            ks.dirty = false;
            ks.persisted = true;
        }
    }

    pub fn restore(&mut self, c: &mut Common) -> Result<(), StateError> {
        let prefix = c.prefix.clone();
        let store = c.store.clone();
        try_scan_prefix(&*store, Table::Sessions, &prefix, &mut |k, v| {
            self.restore_one(c, Key::from_bytes(&k[prefix.len()..]), v)
        })
    }

    fn restore_one(&mut self, c: &Common, key: Key, v: &[u8]) -> Result<(), StateError> {
        let mut r = Reader::new(v, Table::Sessions);
        r.version()?;
        let hash = r.u64()?;
        if !c.owns(hash) {
            return Ok(());
        }
        let n = r.u32()?;
        let mut ks = KeySessions {
            persisted: true,
            ..KeySessions::default()
        };
        for _ in 0..n {
            let start = r.i64()?;
            let end = r.i64()?;
            let pending = r.u8()? & layout::FLAG_PENDING != 0;
            let acc = c
                .spec
                .aggregates
                .decode(r.bytes()?)
                .map_err(|e| acc_error(Table::Sessions, e))?;
            if ks.sessions.last().is_some_and(|p| p.end >= start) || start > end {
                return Err(r.corrupt("sessions overlap or are out of order"));
            }
            ks.sessions.push(Session {
                start,
                end,
                acc,
                pending,
            });
        }
        r.finish()?;
        let w = c.watermark;
        let hk = HKey { hash, key };
        ks.timer_at = ks
            .sessions
            .iter()
            .map(|s| self.next_due(c, s, w))
            .min()
            .unwrap_or(Timestamp::MAX);
        if ks.timer_at < Timestamp::MAX {
            self.timers
                .push(Reverse((ks.timer_at, hk.key.clone(), hash)));
        }
        if ks.sessions.iter().any(|s| s.pending) {
            ks.listed_pending = true;
            self.pending_keys.push(hk.clone());
        }
        self.keys.insert(hk, ks);
        Ok(())
    }

    pub fn fill_stats(&self, stats: &mut OperatorStats) {
        let n: usize = self.keys.values().map(|k| k.sessions.len()).sum();
        stats.open_windows = n as u64;
        stats.entries_in_memory = n as u64;
    }
}
