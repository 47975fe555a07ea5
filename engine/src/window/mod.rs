//! Keyed window operators: tumbling, sliding (hopping), session and count windows over event
//! time, with allowed lateness, three emit modes, a `having:` filter, checkpointed state and a
//! memory budget.
//!
//! One [`WindowOperator`] is one *shard* of a pipeline's keyed operator: the runtime routes
//! every key with `key_hash % shards == shard` to it, together with the watermark of the input
//! partition the record came from. Results depend only on the records and those per-partition
//! watermarks, never on how partitions interleave; that is what lets the oracle
//! (`crate::oracle`) check results exactly and what makes crash-replay deterministic.
//!
//! # Window assignment
//!
//! Times are `i64` milliseconds; `S` is the size, `D` the slide, `G` the session gap, `L` the
//! allowed lateness (default 0), `W` the shard watermark (monotone; [`MAX_TIMESTAMP`] = end
//! of input).
//!
//! - **Tumbling(S)**: event `t` is in `[⌊t/S⌋·S, +S)` (euclidean division; negative times ok).
//! - **Sliding(S, D)**: windows `[kD, kD+S)`; `t` is in every window with `kD ≤ t < kD+S`.
//!   State is kept per *pane* of width `P = gcd(S, D)`, so an event touches one pane; a
//!   window's result merges its `S/P` panes. Tumbling is the case `D = S`. A pane is dropped
//!   when the last window containing it is purged. (Should a slide exceed the size, events
//!   between two windows belong to none and are ignored, not counted as late.)
//! - **Session(G)**: event `t` opens `[t, t+G)`; sessions of a key that intersect or touch
//!   (`next.start ≤ cur.end`) merge; a session's end is its last event time `+ G`.
//! - **Count(N)**: per key, groups of `N` events in event-time order, ties broken by a total
//!   order on the record's field values (variant `Null < Bool < Int < Float < Str`, then the
//!   value; floats by `total_cmp`). Events are buffered per key until `W ≥ t`, then appended in
//!   that order; each full group is emitted with `window_start` = its first event time and
//!   `window_end` = its last event time + 1. At end of input (`W = MAX_TIMESTAMP`) an
//!   incomplete group is emitted too. Count windows ignore allowed lateness. Two groups of a
//!   key whose events all share one time get the same bounds (a consumer keying results by
//!   window sees the later one replace the earlier).
//!
//! # Lateness
//!
//! A record is *late for window w* if `end(w) + L ≤ pw`, where `pw` is the record's
//! `partition_watermark` (or the shard watermark, if that is ahead: only possible when idle
//! partitions let it run ahead, and then the window may already be purged). For sessions the
//! window of a record is `[t, t+G)`; a count-window record is late if `t ≤ pw`. A record late
//! for every window it belongs to is a *late event*: counted, and with `late_output` sent as
//! [`Output::Late`] with `lateness_ms` = that watermark − its time. A sliding-window record
//! may be late for the earlier windows of its pane only: it then joins the later ones alone
//! (a pane keeps a separate accumulator per first window for such records).
//!
//! # Closing and emitting
//!
//! A tumbling/sliding window with end `E` *fires* when `W ≥ E` and is *purged* when
//! `W ≥ E + L`; between the two, non-late records still update it. A session with end `e`
//! fires when `W ≥ e + G` (one more gap: an on-time record that could still touch it would
//! have `t ≤ e` and `t + G ≤ W`, i.e. be late) and is purged when `W ≥ e + G + L`.
//!
//! - `on_close`: with `L = 0` exactly one result per window, `is_final = true`, when it
//!   fires. With `L > 0`: a result when it fires (`is_final = false`), a new one after each
//!   update while it is kept (`false`), and one `is_final = true` result at purge. If firing
//!   and purging happen in one watermark step, only the final result is emitted.
//! - `on_update`: after each record changes a window, its current result (`is_final =
//!   false`). With `emit_every_ms`, changes are only marked pending and emitted by
//!   [`WindowOperator::on_processing_time`] at most once per interval; pending changes are
//!   also emitted when the window fires and when it is purged (still `is_final = false`).
//!   Nothing else is emitted at purge.
//! - `both`: updates as `on_update`, plus the `on_close` results.
//! - Count windows emit each group once, when complete (`is_final = true`, except in
//!   `on_update` mode where no result is final).
//! - A session that grows after a result was emitted for it (only possible with updates or
//!   `L > 0`) gets results under its new bounds; the older result is superseded, not retracted.
//!
//! Results for which `having` is false (or fails) are not emitted, only counted. Within one
//! call results are emitted in ascending window end, then key bytes.
//!
//! # State
//!
//! Tumbling/sliding accumulators live in memory per pane in a `BTreeMap` of buckets, each a
//! hash map keyed by the precomputed key hash; `store_layout.rs` documents the stored format
//! (key layout `operator_id 00 kind pane_end key`, versioned values).
//! [`WindowOperator::snapshot`] writes only dirty entries and deletes purged ones. Beyond
//! `memory_budget_bytes`, clean entries of the coldest panes are evicted after a snapshot
//! (they stay in the store and are read back when touched or when their window fires).
//! Session and count-window state stays fully in memory.
//!
//! [`MAX_TIMESTAMP`]: crate::event::MAX_TIMESTAMP

mod assign;
mod bucketed;
mod count;
mod emit;
mod evicted_filter;
mod keys;
mod session;
mod store_layout;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use compact_str::CompactString;

use crate::aggregate::Aggregates;
use crate::event::{FieldSlots, KeyedRecord, Output, ResultSchema, Timestamp};
use crate::expr::ResultPredicate;
use crate::state::{StateBatch, StateError, StateStore};
use crate::topology::{EmitMode, WindowSpec};

use emit::Common;

/// Everything a keyed window operator shard needs; built once per pipeline by the runtime.
#[derive(Clone)]
pub struct WindowOperatorSpec {
    /// Pipeline name; prefixes every state key of this operator.
    pub operator_id: CompactString,
    /// Names for rendering results.
    pub schema: Arc<ResultSchema>,
    /// Field names by slot (for late output).
    pub slots: Arc<FieldSlots>,
    /// The window.
    pub window: WindowSpec,
    /// The aggregates.
    pub aggregates: Aggregates,
    /// Emit mode.
    pub emit: EmitMode,
    /// With on_update/both: minimum processing time between two updates of one key and window.
    pub emit_every_ms: Option<i64>,
    /// Filter on results.
    pub having: Option<Arc<ResultPredicate>>,
    /// Whether late events are sent as [`Output::Late`] (else only counted).
    pub late_output: bool,
    /// This shard's index and the shard count: the shard owns keys with
    /// `key_hash % shards == shard`.
    pub shard: u32,
    /// Number of shards.
    pub shards: u32,
    /// Memory for this shard's hot state; colder entries are evicted to the store beyond it.
    pub memory_budget_bytes: usize,
}

/// Counters a shard exposes for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OperatorStats {
    /// Windows (per key) currently open: (key, pane) entries for tumbling/sliding windows,
    /// sessions, and keys with an open group or buffered events for count windows.
    pub open_windows: u64,
    /// Entries held in memory.
    pub entries_in_memory: u64,
    /// Entries evicted to the store.
    pub entries_evicted: u64,
    /// Late events seen (sent to the late output or dropped).
    pub late_events: u64,
    /// Results emitted.
    pub results_emitted: u64,
    /// Results suppressed because `having` was false or failed.
    pub results_filtered: u64,
}

/// The state of one window kind.
enum Kind {
    Bucketed(bucketed::Panes),
    Session(session::Sessions),
    Count(count::Counts),
}

/// One shard of a keyed window operator.
pub struct WindowOperator {
    common: Common,
    kind: Kind,
}

impl WindowOperator {
    /// Creates the shard and restores its state from `store`.
    pub fn new(spec: WindowOperatorSpec, store: Arc<dyn StateStore>) -> Result<Self, StateError> {
        let window = spec.window.clone();
        let mut common = Common::new(spec, store);
        common.restore_watermark()?;
        let mut kind = match window {
            WindowSpec::Tumbling {
                size,
                allowed_lateness,
            } => {
                let size = size.as_millis_i64().max(1);
                Kind::Bucketed(bucketed::Panes::new(assign::Geometry::new(
                    size,
                    size,
                    lateness_ms(allowed_lateness),
                )))
            }
            WindowSpec::Sliding {
                size,
                slide,
                allowed_lateness,
            } => Kind::Bucketed(bucketed::Panes::new(assign::Geometry::new(
                size.as_millis_i64().max(1),
                slide.as_millis_i64().max(1),
                lateness_ms(allowed_lateness),
            ))),
            WindowSpec::Session { gap, .. } => {
                Kind::Session(session::Sessions::new(gap.as_millis_i64().max(1)))
            }
            WindowSpec::Count { size } => Kind::Count(count::Counts::new(size.max(1))),
        };
        common.lateness = match &window {
            WindowSpec::Tumbling {
                allowed_lateness, ..
            }
            | WindowSpec::Sliding {
                allowed_lateness, ..
            }
            | WindowSpec::Session {
                allowed_lateness, ..
            } => lateness_ms(*allowed_lateness),
            WindowSpec::Count { .. } => 0,
        };
        match &mut kind {
            Kind::Bucketed(p) => p.restore(&mut common)?,
            Kind::Session(s) => s.restore(&mut common)?,
            Kind::Count(c) => c.restore(&mut common)?,
        }
        Ok(WindowOperator { common, kind })
    }

    /// Adds a record.
    pub fn process(
        &mut self,
        rec: KeyedRecord,
        out: &mut dyn FnMut(Output),
    ) -> Result<(), StateError> {
        match &mut self.kind {
            Kind::Bucketed(p) => p.process(&mut self.common, rec, out),
            Kind::Session(s) => s.process(&mut self.common, rec, out),
            Kind::Count(c) => c.process(&mut self.common, rec, out),
        }
    }

    /// Advances the event-time watermark and emits what it closes.
    pub fn advance_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut dyn FnMut(Output),
    ) -> Result<(), StateError> {
        let prev = self.common.watermark;
        if watermark <= prev {
            return Ok(());
        }
        self.common.watermark = watermark;
        let mut results = Vec::new();
        match &mut self.kind {
            Kind::Bucketed(p) => p.advance(&mut self.common, prev, watermark, &mut results)?,
            Kind::Session(s) => s.advance(&mut self.common, prev, watermark, &mut results),
            Kind::Count(c) => c.advance(&mut self.common, watermark, &mut results),
        }
        self.common.emit_sorted(results, out);
        Ok(())
    }

    /// Emits rate-limited updates due at processing time `now_ms`.
    pub fn on_processing_time(
        &mut self,
        now_ms: i64,
        out: &mut dyn FnMut(Output),
    ) -> Result<(), StateError> {
        let Some(every) = self.common.every_ms() else {
            return Ok(());
        };
        if let Some(last) = self.common.last_flush_ms {
            if now_ms < last.saturating_add(every) {
                return Ok(());
            }
        }
        self.common.last_flush_ms = Some(now_ms);
        let mut results = Vec::new();
        match &mut self.kind {
            Kind::Bucketed(p) => p.flush_pending(&mut self.common, &mut results)?,
            Kind::Session(s) => s.flush_pending(&mut self.common, &mut results),
            Kind::Count(_) => {}
        }
        self.common.emit_sorted(results, out);
        Ok(())
    }

    /// Writes changes since the last snapshot into `batch`; may evict cold entries.
    pub fn snapshot(&mut self, batch: &mut StateBatch) -> Result<(), StateError> {
        match &mut self.kind {
            Kind::Bucketed(p) => p.snapshot(&mut self.common, batch),
            Kind::Session(s) => s.snapshot(&mut self.common, batch),
            Kind::Count(c) => c.snapshot(&mut self.common, batch),
        }
        self.common.snapshot_watermark(batch);
        Ok(())
    }

    /// Current counters.
    pub fn stats(&self) -> OperatorStats {
        let mut stats = OperatorStats {
            late_events: self.common.late_events,
            results_emitted: self.common.results_emitted,
            results_filtered: self.common.results_filtered,
            ..OperatorStats::default()
        };
        match &self.kind {
            Kind::Bucketed(p) => p.fill_stats(&mut stats),
            Kind::Session(s) => s.fill_stats(&mut stats),
            Kind::Count(c) => c.fill_stats(&mut stats),
        }
        stats
    }
}

fn lateness_ms(d: Option<crate::topology::Duration>) -> i64 {
    d.map_or(0, |d| d.as_millis_i64())
}
