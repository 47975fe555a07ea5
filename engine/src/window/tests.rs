use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::aggregate::CompiledAggregate;
use crate::event::{Key, Record, Value, MAX_TIMESTAMP, MIN_TIMESTAMP};
use crate::oracle::{self, OracleInput, OracleSpec, ResultMap};
use crate::state::{MemoryStateStore, StateStore, Table};
use crate::topology::{AggregateFunction, Duration};

// ---------------------------------------------------------------------------------------------
// Fixtures

fn schema() -> Arc<ResultSchema> {
    Arc::new(ResultSchema {
        pipeline: "p".into(),
        key_fields: vec!["user".into()],
        aggregate_names: vec![
            "n".into(),
            "total".into(),
            "lo".into(),
            "hi".into(),
            "last".into(),
        ],
    })
}

fn aggregates() -> Aggregates {
    let agg = |name: &str, function, slot| CompiledAggregate {
        name: name.into(),
        function,
        slot,
        q: 0.5,
        n: 3,
    };
    Aggregates::new(vec![
        agg("n", AggregateFunction::Count, None),
        agg("total", AggregateFunction::Sum, Some(1)),
        agg("lo", AggregateFunction::Min, Some(1)),
        agg("hi", AggregateFunction::Max, Some(1)),
        agg("last", AggregateFunction::Last, Some(1)),
    ])
}

fn slots() -> Arc<FieldSlots> {
    let mut s = FieldSlots::default();
    s.slot("user");
    s.slot("v");
    Arc::new(s)
}

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

fn lat(l: u64) -> Option<Duration> {
    (l > 0).then(|| ms(l))
}

fn tumbling(size: u64, l: u64) -> WindowSpec {
    WindowSpec::Tumbling {
        size: ms(size),
        allowed_lateness: lat(l),
    }
}

fn sliding(size: u64, slide: u64, l: u64) -> WindowSpec {
    WindowSpec::Sliding {
        size: ms(size),
        slide: ms(slide),
        allowed_lateness: lat(l),
    }
}

fn session(gap: u64, l: u64) -> WindowSpec {
    WindowSpec::Session {
        gap: ms(gap),
        allowed_lateness: lat(l),
    }
}

fn spec(window: WindowSpec, emit: EmitMode) -> WindowOperatorSpec {
    WindowOperatorSpec {
        operator_id: "pipe".into(),
        schema: schema(),
        slots: slots(),
        window,
        aggregates: aggregates(),
        emit,
        emit_every_ms: None,
        having: None,
        late_output: true,
        shard: 0,
        shards: 1,
        memory_budget_bytes: 1 << 30,
    }
}

fn record(user: &str, t: i64, v: i64) -> Record {
    Record {
        time: t,
        fields: [Value::Str(user.into()), Value::Int(v)]
            .into_iter()
            .collect(),
    }
}

fn key(user: &str) -> Key {
    Key::from_values(&[Value::Str(user.into())])
}

fn keyed(user: &str, t: i64, v: i64, pw: i64) -> KeyedRecord {
    let k = key(user);
    KeyedRecord {
        key_hash: k.stable_hash(),
        key: k,
        record: record(user, t, v),
        partition_watermark: pw,
    }
}

/// A single shard fed by hand.
struct Shard {
    op: WindowOperator,
    store: Arc<MemoryStateStore>,
    spec: WindowOperatorSpec,
    out: Vec<Output>,
}

impl Shard {
    fn new(spec: WindowOperatorSpec) -> Self {
        let store = Arc::new(MemoryStateStore::new());
        let op = WindowOperator::new(spec.clone(), store.clone()).unwrap();
        Shard {
            op,
            store,
            spec,
            out: Vec::new(),
        }
    }

    fn add(&mut self, user: &str, t: i64, v: i64, pw: i64) {
        let out = &mut self.out;
        self.op
            .process(keyed(user, t, v, pw), &mut |o| out.push(o))
            .unwrap();
    }

    fn wm(&mut self, w: i64) {
        let out = &mut self.out;
        self.op.advance_watermark(w, &mut |o| out.push(o)).unwrap();
    }

    fn tick(&mut self, now: i64) {
        let out = &mut self.out;
        self.op
            .on_processing_time(now, &mut |o| out.push(o))
            .unwrap();
    }

    fn checkpoint(&mut self) {
        let mut b = StateBatch::default();
        self.op.snapshot(&mut b).unwrap();
        self.store.write(b).unwrap();
    }

    fn restart(&mut self) {
        self.op = WindowOperator::new(self.spec.clone(), self.store.clone()).unwrap();
    }

    /// Results emitted since the last call: (user, start, end, count, total, is_final).
    fn take(&mut self) -> Vec<(String, i64, i64, i64, i64, bool)> {
        std::mem::take(&mut self.out)
            .into_iter()
            .filter_map(|o| match o {
                Output::Result(r) => {
                    let user = match &r.key.values().unwrap()[0] {
                        Value::Str(s) => s.to_string(),
                        _ => unreachable!(),
                    };
                    Some((
                        user,
                        r.window_start,
                        r.window_end,
                        r.aggregates[0].as_i64().unwrap(),
                        r.aggregates[1].as_i64().unwrap(),
                        r.is_final,
                    ))
                }
                _ => None,
            })
            .collect()
    }

    fn take_late(&mut self) -> Vec<(i64, i64)> {
        let (late, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.out)
            .into_iter()
            .partition(|o| matches!(o, Output::Late(_)));
        self.out = rest;
        late.into_iter()
            .map(|o| match o {
                Output::Late(l) => (l.time, l.lateness_ms),
                _ => unreachable!(),
            })
            .collect()
    }
}

fn r(
    user: &str,
    s: i64,
    e: i64,
    n: i64,
    total: i64,
    fin: bool,
) -> (String, i64, i64, i64, i64, bool) {
    (user.to_string(), s, e, n, total, fin)
}

// ---------------------------------------------------------------------------------------------
// Tumbling

#[test]
fn tumbling_on_close_emits_one_final_result_per_window_in_order() {
    let mut s = Shard::new(spec(tumbling(10, 0), EmitMode::OnClose));
    s.add("b", 3, 1, MIN_TIMESTAMP);
    s.add("a", 1, 2, MIN_TIMESTAMP);
    s.add("a", 5, 3, MIN_TIMESTAMP);
    s.add("a", 12, 4, MIN_TIMESTAMP);
    s.add("a", -4, 5, MIN_TIMESTAMP);
    s.wm(9);
    assert_eq!(s.take(), vec![r("a", -10, 0, 1, 5, true)]);
    s.wm(10);
    assert_eq!(
        s.take(),
        vec![r("a", 0, 10, 2, 5, true), r("b", 0, 10, 1, 1, true)]
    );
    s.wm(MAX_TIMESTAMP);
    assert_eq!(s.take(), vec![r("a", 10, 20, 1, 4, true)]);
    let st = s.op.stats();
    assert_eq!(st.results_emitted, 4);
    assert_eq!(st.open_windows, 0);
}

#[test]
fn late_records_are_counted_and_sent_to_the_late_output() {
    let mut s = Shard::new(spec(tumbling(10, 0), EmitMode::OnClose));
    s.add("a", 1, 1, MIN_TIMESTAMP);
    s.add("a", 15, 1, 12);
    // Its partition's watermark (12) is past the window end (10): late, by 12 - 4.
    s.add("a", 4, 1, 12);
    // Same window, but from a partition still behind: accepted.
    s.add("a", 4, 7, 3);
    assert_eq!(s.take_late(), vec![(4, 8)]);
    s.wm(10);
    assert_eq!(s.take(), vec![r("a", 0, 10, 2, 8, true)]);
    // The window is purged: a record for it is late even from a lagging partition.
    s.add("a", 5, 1, 3);
    assert_eq!(s.take_late(), vec![(5, 5)]);
    assert_eq!(s.op.stats().late_events, 2);
}

#[test]
fn allowed_lateness_refires_updates_then_a_final_result() {
    let mut s = Shard::new(spec(tumbling(10, 5), EmitMode::OnClose));
    s.add("a", 1, 1, MIN_TIMESTAMP);
    s.wm(10);
    assert_eq!(s.take(), vec![r("a", 0, 10, 1, 1, false)]);
    s.add("a", 2, 2, 12);
    assert_eq!(s.take(), vec![r("a", 0, 10, 2, 3, false)]);
    s.add("a", 3, 2, 15);
    assert_eq!(s.take_late(), vec![(3, 12)]);
    s.wm(14);
    assert!(s.take().is_empty());
    s.wm(15);
    assert_eq!(s.take(), vec![r("a", 0, 10, 2, 3, true)]);
}

#[test]
fn firing_and_purging_in_one_step_emit_only_the_final_result() {
    let mut s = Shard::new(spec(tumbling(10, 5), EmitMode::Both));
    s.add("a", 1, 1, MIN_TIMESTAMP);
    assert_eq!(s.take(), vec![r("a", 0, 10, 1, 1, false)]);
    s.wm(100);
    assert_eq!(s.take(), vec![r("a", 0, 10, 1, 1, true)]);
}

#[test]
fn on_update_emits_every_change_and_nothing_final() {
    let mut s = Shard::new(spec(tumbling(10, 0), EmitMode::OnUpdate));
    s.add("a", 1, 1, MIN_TIMESTAMP);
    s.add("a", 2, 2, MIN_TIMESTAMP);
    assert_eq!(
        s.take(),
        vec![r("a", 0, 10, 1, 1, false), r("a", 0, 10, 2, 3, false)]
    );
    s.wm(MAX_TIMESTAMP);
    assert!(s.take().is_empty());
}

#[test]
fn coalesced_updates_are_rate_limited_and_flushed_at_close() {
    let mut sp = spec(tumbling(10, 0), EmitMode::OnUpdate);
    sp.emit_every_ms = Some(100);
    let mut s = Shard::new(sp);
    s.add("a", 1, 1, MIN_TIMESTAMP);
    s.add("a", 2, 2, MIN_TIMESTAMP);
    s.add("b", 12, 2, MIN_TIMESTAMP);
    assert!(s.take().is_empty());
    s.tick(1000);
    assert_eq!(
        s.take(),
        vec![r("a", 0, 10, 2, 3, false), r("b", 10, 20, 1, 2, false)]
    );
    s.add("a", 3, 4, MIN_TIMESTAMP);
    s.tick(1050);
    assert!(s.take().is_empty());
    // Closing the window flushes its pending change.
    s.wm(10);
    assert_eq!(s.take(), vec![r("a", 0, 10, 3, 7, false)]);
    s.tick(1100);
    assert!(s.take().is_empty());
}

#[test]
fn both_mode_emits_updates_then_the_final_result() {
    let mut s = Shard::new(spec(tumbling(10, 0), EmitMode::Both));
    s.add("a", 1, 1, MIN_TIMESTAMP);
    s.wm(10);
    assert_eq!(
        s.take(),
        vec![r("a", 0, 10, 1, 1, false), r("a", 0, 10, 1, 1, true)]
    );
}

#[test]
fn having_filters_results_and_counts_them() {
    let mut sp = spec(tumbling(10, 0), EmitMode::OnClose);
    sp.having = Some(Arc::new(
        crate::expr::ResultPredicate::compile("n > 1").unwrap(),
    ));
    let mut s = Shard::new(sp);
    s.add("a", 1, 1, MIN_TIMESTAMP);
    s.add("a", 2, 1, MIN_TIMESTAMP);
    s.add("b", 2, 1, MIN_TIMESTAMP);
    s.wm(10);
    assert_eq!(s.take(), vec![r("a", 0, 10, 2, 2, true)]);
    assert_eq!(s.op.stats().results_filtered, 1);
}

// ---------------------------------------------------------------------------------------------
// Sliding

#[test]
fn sliding_windows_merge_panes() {
    // Size 10, slide 4: panes of 2; windows [.., 0, 4, 8, ..].
    let mut s = Shard::new(spec(sliding(10, 4, 0), EmitMode::OnClose));
    s.add("a", 1, 1, MIN_TIMESTAMP);
    s.add("a", 9, 10, MIN_TIMESTAMP);
    s.wm(MAX_TIMESTAMP);
    assert_eq!(
        s.take(),
        vec![
            r("a", -8, 2, 1, 1, true),
            r("a", -4, 6, 1, 1, true),
            r("a", 0, 10, 2, 11, true),
            r("a", 4, 14, 1, 10, true),
            r("a", 8, 18, 1, 10, true),
        ]
    );
}

#[test]
fn sliding_record_late_for_its_first_window_joins_only_the_later_ones() {
    let mut s = Shard::new(spec(sliding(10, 5, 0), EmitMode::OnClose));
    // A lagging partition keeps the shard watermark low.
    s.add("a", 6, 1, MIN_TIMESTAMP);
    // Watermark 10 on its own partition: late for [0,10), on time for [5,15).
    s.add("a", 7, 100, 10);
    assert!(s.take_late().is_empty());
    s.wm(MAX_TIMESTAMP);
    assert_eq!(
        s.take(),
        vec![r("a", 0, 10, 1, 1, true), r("a", 5, 15, 2, 101, true)]
    );
}

// ---------------------------------------------------------------------------------------------
// Sessions

#[test]
fn sessions_merge_when_touching_and_fire_one_gap_after_their_end() {
    let mut s = Shard::new(spec(session(10, 0), EmitMode::OnClose));
    s.add("a", 0, 1, MIN_TIMESTAMP);
    s.add("a", 30, 1, MIN_TIMESTAMP);
    s.add("a", 10, 1, MIN_TIMESTAMP); // touches [0,10): session [0,20)
    s.add("a", 20, 1, MIN_TIMESTAMP); // touches [0,20) and [30,40) once extended: [0,40)
    s.add("b", 5, 1, MIN_TIMESTAMP);
    s.wm(24);
    assert!(s.take().is_empty());
    s.wm(25);
    assert_eq!(s.take(), vec![r("b", 5, 15, 1, 1, true)]);
    s.wm(49);
    assert!(s.take().is_empty());
    s.wm(50);
    assert_eq!(s.take(), vec![r("a", 0, 40, 4, 4, true)]);
    assert_eq!(s.op.stats().open_windows, 0);
}

#[test]
fn session_updates_name_the_current_bounds() {
    let mut s = Shard::new(spec(session(10, 0), EmitMode::Both));
    s.add("a", 0, 1, MIN_TIMESTAMP);
    s.add("a", 4, 1, MIN_TIMESTAMP);
    s.wm(MAX_TIMESTAMP);
    assert_eq!(
        s.take(),
        vec![
            r("a", 0, 10, 1, 1, false),
            r("a", 0, 14, 2, 2, false),
            r("a", 0, 14, 2, 2, true)
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Count windows

#[test]
fn count_windows_group_in_event_time_order() {
    let mut s = Shard::new(spec(WindowSpec::Count { size: 2 }, EmitMode::OnClose));
    s.add("a", 5, 1, MIN_TIMESTAMP);
    s.add("a", 3, 2, MIN_TIMESTAMP);
    s.add("a", 9, 3, MIN_TIMESTAMP);
    s.wm(4);
    assert!(s.take().is_empty());
    s.wm(8);
    assert_eq!(s.take(), vec![r("a", 3, 6, 2, 3, true)]);
    // Late: at or before its partition's watermark.
    s.add("a", 8, 1, 8);
    assert_eq!(s.take_late(), vec![(8, 0)]);
    // End of input emits the incomplete group.
    s.wm(MAX_TIMESTAMP);
    assert_eq!(s.take(), vec![r("a", 9, 10, 1, 3, true)]);
}

// ---------------------------------------------------------------------------------------------
// State

#[test]
fn snapshot_writes_only_dirty_entries_and_deletes_purged_ones() {
    let mut s = Shard::new(spec(tumbling(10, 0), EmitMode::OnClose));
    s.add("a", 1, 1, MIN_TIMESTAMP);
    s.add("b", 11, 1, MIN_TIMESTAMP);
    let mut b = StateBatch::default();
    s.op.snapshot(&mut b).unwrap();
    // Two entries and the (unchanged: MIN) watermark is not written.
    assert_eq!(b.ops.len(), 2);
    s.store.write(b).unwrap();
    let mut b = StateBatch::default();
    s.op.snapshot(&mut b).unwrap();
    assert!(b.is_empty());
    s.wm(10);
    let mut b = StateBatch::default();
    s.op.snapshot(&mut b).unwrap();
    // The purged entry and the watermark.
    assert_eq!(b.ops.len(), 2);
    s.store.write(b).unwrap();
    assert_eq!(s.store.len(Table::Windows), 2);
}

#[test]
fn corrupt_state_is_reported_not_panicked_on() {
    let store = Arc::new(MemoryStateStore::new());
    let mut b = StateBatch::default();
    let mut k = b"pipe\0W".to_vec();
    k.extend_from_slice(&store_layout::encode_ts(10));
    k.extend_from_slice(key("a").as_bytes());
    b.put(Table::Windows, k, vec![1, 0, 0, 0]);
    store.write(b).unwrap();
    let err = WindowOperator::new(spec(tumbling(10, 0), EmitMode::OnClose), store.clone());
    assert!(matches!(err, Err(StateError::Corrupt { .. })));
    let mut b = StateBatch::default();
    b.put(Table::Sessions, b"pipe\0x".to_vec(), vec![1, 2, 3]);
    store.write(b).unwrap();
    let err = WindowOperator::new(spec(session(10, 0), EmitMode::OnClose), store);
    assert!(matches!(err, Err(StateError::Corrupt { .. })));
}

#[test]
fn eviction_keeps_memory_bounded_and_results_exact() {
    let run = |budget: usize| {
        let mut sp = spec(tumbling(100, 0), EmitMode::OnClose);
        sp.memory_budget_bytes = budget;
        let mut s = Shard::new(sp);
        let mut max_evicted = 0;
        for t in 0..400i64 {
            for u in 0..50 {
                if (t + u) % 3 == 0 {
                    s.add(&format!("user{u}"), t, t % 7, MIN_TIMESTAMP);
                }
            }
            if t % 10 == 9 {
                s.checkpoint();
                max_evicted = max_evicted.max(s.op.stats().entries_evicted);
            }
            if t % 50 == 49 {
                s.restart();
            }
            s.wm(t - 20);
        }
        s.wm(MAX_TIMESTAMP);
        (s.take(), max_evicted)
    };
    let (small, evicted) = run(4_000);
    let (big, none) = run(1 << 30);
    assert!(evicted > 0);
    assert_eq!(none, 0);
    assert_eq!(small, big);
}

/// Windows of 20 keys snapshotted by `from` shards, restored by `to` shards: how many open
/// windows the restored shards hold and how many results they emit at the end of time.
fn restore_across_shard_counts(from: u32, to: u32) -> (u64, usize) {
    let store = Arc::new(MemoryStateStore::new());
    let mut outs = Vec::new();
    let mut ops: Vec<WindowOperator> = (0..from)
        .map(|i| {
            let mut sp = spec(tumbling(10, 0), EmitMode::OnClose);
            sp.shard = i;
            sp.shards = from;
            WindowOperator::new(sp, store.clone()).unwrap()
        })
        .collect();
    for i in 0..20 {
        let rec = keyed(&format!("u{i}"), 1, 1, MIN_TIMESTAMP);
        let shard = (rec.key_hash % u64::from(from)) as usize;
        ops[shard].process(rec, &mut |o| outs.push(o)).unwrap();
    }
    let mut b = StateBatch::default();
    for op in &mut ops {
        op.snapshot(&mut b).unwrap();
    }
    store.write(b).unwrap();
    outs.clear();
    let mut open = 0;
    for i in 0..to {
        let mut sp = spec(tumbling(10, 0), EmitMode::OnClose);
        sp.shard = i;
        sp.shards = to;
        let mut op = WindowOperator::new(sp, store.clone()).unwrap();
        open += op.stats().open_windows;
        op.advance_watermark(MAX_TIMESTAMP, &mut |o| outs.push(o))
            .unwrap();
    }
    (open, outs.len())
}

#[test]
fn state_restores_under_another_shard_count() {
    // A fleet task's default shard count depends on the worker's cores, so the next owner
    // of a task may run it with more or fewer shards than the one that saved its state.
    assert_eq!(restore_across_shard_counts(2, 1), (20, 20));
    assert_eq!(restore_across_shard_counts(1, 3), (20, 20));
    assert_eq!(restore_across_shard_counts(3, 2), (20, 20));
}

#[test]
fn shards_restore_only_their_own_keys() {
    let store = Arc::new(MemoryStateStore::new());
    let mut outs = Vec::new();
    let mut ops: Vec<WindowOperator> = (0..2)
        .map(|i| {
            let mut sp = spec(tumbling(10, 0), EmitMode::OnClose);
            sp.shard = i;
            sp.shards = 2;
            WindowOperator::new(sp, store.clone()).unwrap()
        })
        .collect();
    let users: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    for u in &users {
        let rec = keyed(u, 1, 1, MIN_TIMESTAMP);
        let shard = (rec.key_hash % 2) as usize;
        ops[shard].process(rec, &mut |o| outs.push(o)).unwrap();
    }
    let mut b = StateBatch::default();
    for op in &mut ops {
        op.snapshot(&mut b).unwrap();
    }
    store.write(b).unwrap();
    let mut total = 0;
    for i in 0..2 {
        let mut sp = spec(tumbling(10, 0), EmitMode::OnClose);
        sp.shard = i;
        sp.shards = 2;
        let mut op = WindowOperator::new(sp, store.clone()).unwrap();
        total += op.stats().open_windows;
        op.advance_watermark(MAX_TIMESTAMP, &mut |o| outs.push(o))
            .unwrap();
    }
    assert_eq!(total, 20);
    assert_eq!(outs.len(), 20);
}

// ---------------------------------------------------------------------------------------------
// Runtime-like driver, oracle comparisons, failover

/// Drives shards like the runtime: per-partition watermarks, shard watermark = minimum over
/// partitions after each record, checkpoints into a shared store, and crashes that lose
/// everything since the last checkpoint.
struct Driver {
    spec: WindowOperatorSpec,
    store: Arc<MemoryStateStore>,
    ops: Vec<WindowOperator>,
    ooo: i64,
    part_max: Vec<Option<i64>>,
    out: Vec<Output>,
    now: i64,
}

#[derive(Clone)]
struct Checkpoint {
    next: usize,
    part_max: Vec<Option<i64>>,
    out_len: usize,
}

impl Driver {
    fn new(spec: WindowOperatorSpec, shards: u32, partitions: usize, ooo: i64) -> Self {
        let store = Arc::new(MemoryStateStore::new());
        let mut d = Driver {
            spec: WindowOperatorSpec { shards, ..spec },
            store,
            ops: Vec::new(),
            ooo,
            part_max: vec![None; partitions],
            out: Vec::new(),
            now: 0,
        };
        d.start();
        d
    }

    fn start(&mut self) {
        self.ops = (0..self.spec.shards)
            .map(|i| {
                let spec = WindowOperatorSpec {
                    shard: i,
                    ..self.spec.clone()
                };
                WindowOperator::new(spec, self.store.clone()).unwrap()
            })
            .collect();
    }

    fn pw(&self, p: usize) -> i64 {
        self.part_max[p].map_or(MIN_TIMESTAMP, |m| m.saturating_sub(self.ooo))
    }

    fn advance(&mut self, w: i64) {
        let out = &mut self.out;
        for op in &mut self.ops {
            op.advance_watermark(w, &mut |o| out.push(o)).unwrap();
        }
    }

    fn feed(&mut self, input: &OracleInput) {
        let p = input.partition;
        let k = Key::from_values(&input.record.fields[..1]);
        let hash = k.stable_hash();
        let rec = KeyedRecord {
            key: k,
            key_hash: hash,
            record: input.record.clone(),
            partition_watermark: self.pw(p),
        };
        let shard = (hash % u64::from(self.spec.shards)) as usize;
        let out = &mut self.out;
        self.ops[shard].process(rec, &mut |o| out.push(o)).unwrap();
        let m = self.part_max[p].get_or_insert(input.record.time);
        *m = (*m).max(input.record.time);
        let w = (0..self.part_max.len())
            .map(|p| self.pw(p))
            .min()
            .unwrap_or(MIN_TIMESTAMP);
        self.advance(w);
        self.now += 7;
        let out = &mut self.out;
        for op in &mut self.ops {
            op.on_processing_time(self.now, &mut |o| out.push(o))
                .unwrap();
        }
    }

    fn checkpoint(&mut self, next: usize) -> Checkpoint {
        let mut b = StateBatch::default();
        for op in &mut self.ops {
            op.snapshot(&mut b).unwrap();
        }
        self.store.write(b).unwrap();
        Checkpoint {
            next,
            part_max: self.part_max.clone(),
            out_len: self.out.len(),
        }
    }

    /// Loses everything since `cp` and restarts from the store.
    fn crash(&mut self, cp: &Checkpoint) {
        self.out.truncate(cp.out_len);
        self.part_max = cp.part_max.clone();
        self.start();
        let w = (0..self.part_max.len())
            .map(|p| self.pw(p))
            .min()
            .unwrap_or(MIN_TIMESTAMP);
        self.advance(w);
    }

    /// Runs `inputs` with checkpoints before the indexes in `checkpoints` and one crash at
    /// each index in `crashes` (back to the last checkpoint).
    fn run(
        &mut self,
        inputs: &[OracleInput],
        checkpoints: &BTreeSet<usize>,
        crashes: &BTreeSet<usize>,
    ) {
        let mut crashes = crashes.clone();
        let mut cp = Checkpoint {
            next: 0,
            part_max: self.part_max.clone(),
            out_len: 0,
        };
        let mut i = 0;
        while i < inputs.len() {
            if checkpoints.contains(&i) && cp.next != i {
                cp = self.checkpoint(i);
            }
            if crashes.remove(&i) {
                self.crash(&cp);
                i = cp.next;
                continue;
            }
            self.feed(&inputs[i]);
            i += 1;
        }
        self.advance(MAX_TIMESTAMP);
    }

    fn late_outputs(&self) -> usize {
        self.out
            .iter()
            .filter(|o| matches!(o, Output::Late(_)))
            .count()
    }
}

fn oracle_spec(sp: &WindowOperatorSpec, ooo: i64) -> OracleSpec {
    OracleSpec {
        key_slots: vec![0],
        window: sp.window.clone(),
        aggregates: sp.aggregates.clone(),
        having: sp.having.clone(),
        max_out_of_orderness_ms: ooo,
        schema: sp.schema.clone(),
    }
}

fn finals(out: &[Output]) -> (ResultMap, usize) {
    let finals: Vec<&Output> = out
        .iter()
        .filter(|o| matches!(o, Output::Result(r) if r.is_final))
        .collect();
    (oracle::last_results(finals.iter().copied()), finals.len())
}

/// Checks an operator run against the oracle; returns a description of the first mismatch.
fn check(
    sp: &WindowOperatorSpec,
    ooo: i64,
    inputs: &[OracleInput],
    out: &[Output],
    late: usize,
) -> Result<(), String> {
    let os = oracle_spec(sp, ooo);
    let expected = oracle::final_results(&os, inputs);
    let expected_late = oracle::late_count(&os, inputs);
    if late != expected_late {
        return Err(format!("late events: {late}, oracle {expected_late}"));
    }
    let is_session = matches!(sp.window, WindowSpec::Session { .. });
    if sp.emit != EmitMode::OnUpdate {
        let (f, n) = finals(out);
        // Groups of a count window whose events all share one time have the same bounds; the
        // maps keep the last of them, and the oracle does the same.
        let is_count = matches!(sp.window, WindowSpec::Count { .. });
        if n != f.len() && !is_count {
            return Err(format!("{n} final results for {} windows", f.len()));
        }
        if f != expected {
            return Err(format!(
                "final results differ:\n got {f:?}\nwant {expected:?}"
            ));
        }
        let lateness = match &sp.window {
            WindowSpec::Tumbling {
                allowed_lateness, ..
            }
            | WindowSpec::Sliding {
                allowed_lateness, ..
            }
            | WindowSpec::Session {
                allowed_lateness, ..
            } => allowed_lateness.map_or(0, |d| d.as_millis()),
            WindowSpec::Count { .. } => 0,
        };
        let results = out
            .iter()
            .filter(|o| matches!(o, Output::Result(_)))
            .count();
        if sp.emit == EmitMode::OnClose && lateness == 0 && results != n && !is_count {
            return Err(format!("{results} results but {n} windows with L = 0"));
        }
    }
    let last = oracle::without_is_final(&oracle::last_results(out));
    let want = oracle::without_is_final(&expected);
    for (k, v) in &want {
        if last.get(k) != Some(v) {
            return Err(format!(
                "window {k:?}: last {:?}, oracle {v:?}",
                last.get(k)
            ));
        }
    }
    for k in last.keys() {
        if want.contains_key(k) {
            continue;
        }
        // Only a session can have results under bounds it later outgrew.
        let covered = is_session
            && want
                .keys()
                .any(|(wk, ws, we)| *wk == k.0 && *ws <= k.1 && k.2 <= *we);
        if !covered {
            return Err(format!(
                "result for a window the oracle does not have: {k:?}"
            ));
        }
    }
    Ok(())
}

fn make_inputs(events: &[(usize, u8, i64, u8, i64)], partitions: usize) -> Vec<OracleInput> {
    let mut clocks = vec![0i64; partitions];
    events
        .iter()
        .map(|&(p, user, step, back, v)| {
            let p = p % partitions;
            clocks[p] += step;
            // Mostly slightly out of order; `back` ≥ 40 sends a record far into the past.
            let back = if back >= 40 {
                i64::from(back)
            } else {
                i64::from(back % 8)
            };
            let users = ["a", "b", "c", "d"];
            OracleInput {
                partition: p,
                record: record(users[usize::from(user) % 4], clocks[p] - back, v),
            }
        })
        .collect()
}

#[test]
fn failover_gives_the_same_results_for_every_window_kind() {
    let events: Vec<(usize, u8, i64, u8, i64)> = (0..300)
        .map(|i: i64| {
            (
                (i % 3) as usize,
                (i * 7 % 5) as u8,
                (i * 13 % 5),
                (i * 11 % 50) as u8,
                i % 17,
            )
        })
        .collect();
    let inputs = make_inputs(&events, 3);
    let kinds = [
        tumbling(20, 0),
        tumbling(20, 10),
        sliding(30, 10, 5),
        session(6, 0),
        session(6, 8),
        WindowSpec::Count { size: 3 },
    ];
    for window in kinds {
        for emit in [EmitMode::OnClose, EmitMode::OnUpdate, EmitMode::Both] {
            let mut sp = spec(window.clone(), emit);
            sp.memory_budget_bytes = 3_000;
            let mut straight = Driver::new(sp.clone(), 1, 3, 5);
            straight.run(&inputs, &BTreeSet::new(), &BTreeSet::new());
            let mut crashed = Driver::new(sp.clone(), 1, 3, 5);
            let cps: BTreeSet<usize> = [150].into();
            let crashes: BTreeSet<usize> = [151, 220].into();
            crashed.run(&inputs, &cps, &crashes);
            assert_eq!(
                straight.out, crashed.out,
                "{window:?} {emit:?}: outputs differ after a crash"
            );
            check(&sp, 5, &inputs, &crashed.out, crashed.late_outputs())
                .unwrap_or_else(|e| panic!("{window:?} {emit:?}: {e}"));
        }
    }
}

fn window_strategy() -> impl Strategy<Value = WindowSpec> {
    let l = prop_oneof![Just(0u64), Just(0), Just(4), Just(15)];
    prop_oneof![
        (prop_oneof![Just(5u64), Just(10), Just(20)], l.clone()).prop_map(|(s, l)| tumbling(s, l)),
        (
            prop_oneof![Just(10u64), Just(20), Just(30)],
            prop_oneof![Just(5u64), Just(10)],
            l.clone()
        )
            .prop_map(|(s, d, l)| sliding(s, d.min(s), l)),
        (prop_oneof![Just(3u64), Just(10)], l).prop_map(|(g, l)| session(g, l)),
        (1u64..6).prop_map(|size| WindowSpec::Count { size }),
    ]
}

fn emit_strategy() -> impl Strategy<Value = (EmitMode, Option<i64>)> {
    (
        prop_oneof![
            Just(EmitMode::OnClose),
            Just(EmitMode::OnUpdate),
            Just(EmitMode::Both)
        ],
        prop_oneof![Just(None), Just(Some(20i64))],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn random_streams_match_the_oracle(
        window in window_strategy(),
        (emit, every) in emit_strategy(),
        partitions in 1usize..4,
        shards in 1u32..3,
        ooo in prop_oneof![Just(0i64), Just(3), Just(10)],
        events in prop::collection::vec((0usize..3, 0u8..4, 0i64..4, 0u8..50, -5i64..50), 1..120),
        checkpoints in prop::collection::btree_set(0usize..120, 0..6),
        crashes in prop::collection::btree_set(0usize..120, 0..3),
        budget in prop_oneof![Just(1usize << 30), Just(1_500), Just(0)],
    ) {
        let inputs = make_inputs(&events, partitions);
        let mut sp = spec(window, emit);
        sp.emit_every_ms = every;
        sp.memory_budget_bytes = budget;
        let mut d = Driver::new(sp.clone(), shards, partitions, ooo);
        d.run(&inputs, &checkpoints, &crashes);
        let late = d.late_outputs();
        if let Err(e) = check(&sp, ooo, &inputs, &d.out, late) {
            prop_assert!(false, "{}", e);
        }
    }
}
