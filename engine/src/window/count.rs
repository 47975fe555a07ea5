//! Count windows: per key, groups of `size` events in event-time order.
//!
//! Records wait in a per-key buffer until the shard watermark reaches their time; by then no
//! on-time record can still come before them, so appending them in (time, field values) order
//! gives the same groups whatever the arrival order. Everything stays in memory; each key's
//! open group and buffer is one `'C'` value in [`Table::Windows`].

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};

use crate::aggregate::Accumulators;
use crate::event::{
    Key, KeyedRecord, Output, Record, Timestamp, Value, WindowResult, MAX_TIMESTAMP,
};
use crate::state::{try_scan_prefix, StateBatch, StateError, Table};
use crate::topology::EmitMode;

use super::emit::Common;
use super::keys::{HKey, KeyMap};
use super::store_layout::{self as layout, acc_error, Reader};
use super::OperatorStats;

/// Total order of field values used to break ties of equal event times: variant (`Null <
/// Bool < Int < Float < Str`), then value (floats by `total_cmp`, strings by bytes).
pub(crate) fn cmp_value(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) => 2,
            Value::Float(_) => 3,
            Value::Str(_) => 4,
        }
    }
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::Float(x), Value::Float(y)) => x.total_cmp(y),
        (Value::Str(x), Value::Str(y)) => x.as_bytes().cmp(y.as_bytes()),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// The order records are appended in: time, then field values.
pub(crate) fn cmp_record(a: &Record, b: &Record) -> Ordering {
    a.time.cmp(&b.time).then_with(|| {
        a.fields
            .iter()
            .zip(b.fields.iter())
            .map(|(x, y)| cmp_value(x, y))
            .find(|o| o.is_ne())
            .unwrap_or_else(|| a.fields.len().cmp(&b.fields.len()))
    })
}

/// The open group of a key.
struct Group {
    n: u64,
    first: Timestamp,
    last: Timestamp,
    acc: Accumulators,
}

struct KeyCount {
    buffer: Vec<Record>,
    group: Option<Group>,
    dirty: bool,
    persisted: bool,
    /// The earliest timer queued for this key, at or before every buffered time (`MAX`: none).
    timer_at: Timestamp,
}

impl Default for KeyCount {
    fn default() -> Self {
        KeyCount {
            buffer: Vec::new(),
            group: None,
            dirty: false,
            persisted: false,
            timer_at: Timestamp::MAX,
        }
    }
}

/// Count-window state of one shard.
pub(crate) struct Counts {
    size: u64,
    keys: KeyMap<KeyCount>,
    /// (time, key) of buffered records, to find the keys a watermark step releases.
    timers: BinaryHeap<Reverse<(Timestamp, Key, u64)>>,
    dirty_keys: Vec<HKey>,
    deletes: Vec<Vec<u8>>,
}

impl Counts {
    pub fn new(size: u64) -> Self {
        Counts {
            size,
            keys: KeyMap::default(),
            timers: BinaryHeap::new(),
            dirty_keys: Vec::new(),
            deletes: Vec::new(),
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
        if t <= seen {
            c.late(rec, seen, out);
            return Ok(());
        }
        let hk = HKey {
            hash: rec.key_hash,
            key: rec.key,
        };
        let kc = self.keys.entry(hk.clone()).or_default();
        if t < kc.timer_at {
            kc.timer_at = t;
            self.timers.push(Reverse((t, hk.key.clone(), hk.hash)));
        }
        kc.buffer.push(rec.record);
        if !kc.dirty {
            kc.dirty = true;
            self.dirty_keys.push(hk);
        }
        Ok(())
    }

    pub fn advance(&mut self, c: &mut Common, w: Timestamp, results: &mut Vec<WindowResult>) {
        let mut due: BTreeMap<Key, u64> = BTreeMap::new();
        if w == MAX_TIMESTAMP {
            due.extend(self.keys.keys().map(|hk| (hk.key.clone(), hk.hash)));
            self.timers.clear();
        } else {
            while let Some(Reverse((t, _, _))) = self.timers.peek() {
                if *t > w {
                    break;
                }
                if let Some(Reverse((_, key, hash))) = self.timers.pop() {
                    due.insert(key, hash);
                }
            }
        }
        let is_final = c.spec.emit != EmitMode::OnUpdate;
        let aggs = c.spec.aggregates.clone();
        for (key, hash) in due {
            let hk = HKey { hash, key };
            let Some(mut kc) = self.keys.remove(&hk) else {
                continue;
            };
            let (mut ready, rest): (Vec<Record>, Vec<Record>) = std::mem::take(&mut kc.buffer)
                .into_iter()
                .partition(|r| r.time <= w);
            kc.buffer = rest;
            ready.sort_by(cmp_record);
            if !ready.is_empty() {
                kc.dirty = true;
            }
            for r in ready {
                let g = kc.group.get_or_insert_with(|| Group {
                    n: 0,
                    first: r.time,
                    last: r.time,
                    acc: aggs.create(),
                });
                aggs.update(&mut g.acc, &r);
                g.n += 1;
                g.last = r.time;
                if g.n >= self.size {
                    if let Some(g) = kc.group.take() {
                        results.push(c.result(
                            hk.key.clone(),
                            g.first,
                            g.last.saturating_add(1),
                            &g.acc,
                            is_final,
                        ));
                    }
                }
            }
            if w == MAX_TIMESTAMP {
                if let Some(g) = kc.group.take() {
                    kc.dirty = true;
                    results.push(c.result(
                        hk.key.clone(),
                        g.first,
                        g.last.saturating_add(1),
                        &g.acc,
                        is_final,
                    ));
                }
            }
            if kc.buffer.is_empty() && kc.group.is_none() {
                if kc.persisted {
                    self.deletes.push(layout::count_key(&c.prefix, &hk.key));
                }
                continue;
            }
            if kc.dirty {
                self.dirty_keys.push(hk.clone());
            }
            let next = kc
                .buffer
                .iter()
                .map(|r| r.time)
                .min()
                .unwrap_or(MAX_TIMESTAMP);
            if kc.timer_at <= w || next < kc.timer_at {
                kc.timer_at = next;
                if next < MAX_TIMESTAMP {
                    self.timers.push(Reverse((next, hk.key.clone(), hk.hash)));
                }
            }
            self.keys.insert(hk, kc);
        }
    }

    pub fn snapshot(&mut self, c: &mut Common, batch: &mut StateBatch) {
        let aggs = &c.spec.aggregates;
        for k in self.deletes.drain(..) {
            batch.delete(Table::Windows, k);
        }
        for hk in std::mem::take(&mut self.dirty_keys) {
            let Some(kc) = self.keys.get_mut(&hk) else {
                continue;
            };
            if !kc.dirty {
                continue;
            }
            let mut v = Vec::with_capacity(64);
            v.push(layout::VERSION);
            v.extend_from_slice(&hk.hash.to_be_bytes());
            match &kc.group {
                Some(g) => {
                    v.extend_from_slice(&g.n.to_be_bytes());
                    v.extend_from_slice(&g.first.to_be_bytes());
                    v.extend_from_slice(&g.last.to_be_bytes());
                    v.push(1);
                    layout::put_encoded(&mut v, |b| aggs.encode(&g.acc, b));
                }
                None => {
                    v.extend_from_slice(&[0; 24]);
                    v.push(0);
                }
            }
            v.extend_from_slice(&(kc.buffer.len() as u32).to_be_bytes());
            for r in &kc.buffer {
                layout::put_record(&mut v, r);
            }
            batch.put(Table::Windows, layout::count_key(&c.prefix, &hk.key), v);
            kc.dirty = false;
            kc.persisted = true;
        }
    }

    pub fn restore(&mut self, c: &mut Common) -> Result<(), StateError> {
        let prefix = layout::kind_prefix(&c.prefix, layout::KIND_COUNT);
        let store = c.store.clone();
        try_scan_prefix(&*store, Table::Windows, &prefix, &mut |k, v| {
            self.restore_one(c, Key::from_bytes(&k[prefix.len()..]), v)
        })
    }

    fn restore_one(&mut self, c: &Common, key: Key, v: &[u8]) -> Result<(), StateError> {
        let mut r = Reader::new(v, Table::Windows);
        r.version()?;
        let hash = r.u64()?;
        if !c.owns(hash) {
            return Ok(());
        }
        let n = r.u64()?;
        let first = r.i64()?;
        let last = r.i64()?;
        let group = match r.u8()? {
            0 => None,
            1 => Some(Group {
                n,
                first,
                last,
                acc: c
                    .spec
                    .aggregates
                    .decode(r.bytes()?)
                    .map_err(|e| acc_error(Table::Windows, e))?,
            }),
            _ => return Err(r.corrupt("bad count-window group flag")),
        };
        let m = r.u32()?;
        let mut buffer = Vec::new();
        for _ in 0..m {
            buffer.push(r.record()?);
        }
        r.finish()?;
        let timer_at = buffer.iter().map(|r| r.time).min().unwrap_or(MAX_TIMESTAMP);
        if timer_at < MAX_TIMESTAMP {
            self.timers.push(Reverse((timer_at, key.clone(), hash)));
        }
        self.keys.insert(
            HKey { hash, key },
            KeyCount {
                buffer,
                group,
                dirty: false,
                persisted: true,
                timer_at,
            },
        );
        Ok(())
    }

    pub fn fill_stats(&self, stats: &mut OperatorStats) {
        stats.open_windows = self.keys.len() as u64;
        stats.entries_in_memory = self.keys.len() as u64;
    }
}
