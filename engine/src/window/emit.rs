//! What every window kind shares: the shard watermark, counters, emit decisions, result
//! building, the `having` filter and late output.

use std::sync::Arc;

use crate::aggregate::Accumulators;
use crate::event::{Key, KeyedRecord, LateRecord, Output, Timestamp, WindowResult, MIN_TIMESTAMP};
use crate::state::{scan_prefix, StateBatch, StateError, StateStore, Table};
use crate::topology::EmitMode;

use super::store_layout::{self as layout, Reader};
use super::WindowOperatorSpec;

/// State and settings shared by the window kinds.
pub(crate) struct Common {
    pub spec: WindowOperatorSpec,
    pub store: Arc<dyn StateStore>,
    /// `op 00`.
    pub prefix: Vec<u8>,
    /// The shard watermark.
    pub watermark: Timestamp,
    /// The watermark last written to the store.
    pub saved_watermark: Timestamp,
    /// Allowed lateness in ms (0 for count windows).
    pub lateness: i64,
    /// Processing time of the last flush of coalesced updates.
    pub last_flush_ms: Option<i64>,
    pub late_events: u64,
    pub results_emitted: u64,
    pub results_filtered: u64,
}

/// What to do with a window's result after a record changed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnChange {
    /// Emit the new result now (`is_final = false`).
    Emit,
    /// Mark it pending; a flush emits it.
    Pend,
    /// Nothing.
    Nothing,
}

impl Common {
    pub fn new(spec: WindowOperatorSpec, store: Arc<dyn StateStore>) -> Self {
        let prefix = layout::prefix(&spec.operator_id);
        Common {
            spec,
            store,
            prefix,
            watermark: MIN_TIMESTAMP,
            saved_watermark: MIN_TIMESTAMP,
            lateness: 0,
            last_flush_ms: None,
            late_events: 0,
            results_emitted: 0,
            results_filtered: 0,
        }
    }

    /// Whether this shard owns keys with `hash`.
    pub fn owns(&self, hash: u64) -> bool {
        hash % u64::from(self.spec.shards.max(1)) == u64::from(self.spec.shard)
    }

    /// The coalescing interval, when updates are coalesced.
    pub fn every_ms(&self) -> Option<i64> {
        match self.spec.emit {
            EmitMode::OnClose => None,
            EmitMode::OnUpdate | EmitMode::Both => self.spec.emit_every_ms,
        }
    }

    /// What a change of a window does; `fired` = the window already fired (and is kept for
    /// lateness).
    pub fn on_change(&self, fired: bool) -> OnChange {
        match self.spec.emit {
            EmitMode::OnClose if fired => OnChange::Emit,
            EmitMode::OnClose => OnChange::Nothing,
            EmitMode::OnUpdate | EmitMode::Both => {
                if self.every_ms().is_some() {
                    OnChange::Pend
                } else {
                    OnChange::Emit
                }
            }
        }
    }

    /// What a window emits when the watermark makes it fire and/or be purged; `Some(is_final)`
    /// to emit. `pending` = it has a change not emitted yet.
    pub fn on_close(&self, fires: bool, purges: bool, pending: bool) -> Option<bool> {
        match self.spec.emit {
            EmitMode::OnClose | EmitMode::Both => {
                if purges {
                    Some(true)
                } else if fires {
                    Some(false)
                } else {
                    None
                }
            }
            EmitMode::OnUpdate => ((fires || purges) && pending).then_some(false),
        }
    }

    /// Builds a result.
    pub fn result(
        &self,
        key: Key,
        start: Timestamp,
        end: Timestamp,
        acc: &Accumulators,
        is_final: bool,
    ) -> WindowResult {
        WindowResult {
            schema: self.spec.schema.clone(),
            key,
            window_start: start,
            window_end: end,
            aggregates: self.spec.aggregates.finish(acc),
            is_final,
        }
    }

    /// Emits a result unless `having` rejects it.
    pub fn emit(&mut self, r: WindowResult, out: &mut dyn FnMut(Output)) {
        if let Some(h) = &self.spec.having {
            if !matches!(h.eval(&r), Ok(true)) {
                self.results_filtered += 1;
                return;
            }
        }
        self.results_emitted += 1;
        out(Output::Result(r));
    }

    /// Emits results in ascending window end, then key bytes, then window start.
    pub fn emit_sorted(&mut self, mut results: Vec<WindowResult>, out: &mut dyn FnMut(Output)) {
        results.sort_by(|a, b| {
            (a.window_end, &a.key, a.window_start).cmp(&(b.window_end, &b.key, b.window_start))
        });
        for r in results {
            self.emit(r, out);
        }
    }

    /// Counts a late event and sends it to the late output if configured; `seen` is the
    /// watermark it was late against.
    pub fn late(&mut self, rec: KeyedRecord, seen: Timestamp, out: &mut dyn FnMut(Output)) {
        self.late_events += 1;
        if self.spec.late_output {
            let record = rec.record;
            out(Output::Late(LateRecord {
                pipeline: self.spec.operator_id.clone(),
                fields: record.named_fields(self.spec.slots.names()),
                time: record.time,
                lateness_ms: seen.saturating_sub(record.time),
            }));
        }
    }

    /// Reads this shard's watermark from the store: its own entry, else the smallest one any
    /// shard stored (the shard count changed), else none.
    pub fn restore_watermark(&mut self) -> Result<(), StateError> {
        let own = layout::meta_key(&self.prefix, self.spec.shard);
        let mut own_w = None;
        let mut min_w: Option<Timestamp> = None;
        let mut err = None;
        let start = layout::kind_prefix(&self.prefix, layout::KIND_META);
        scan_prefix(&*self.store, Table::Windows, &start, &mut |k, v| {
            let mut r = Reader::new(v, Table::Windows);
            let w = r.version().and_then(|_| r.i64()).and_then(|w| {
                r.finish()?;
                Ok(w)
            });
            match w {
                Ok(w) => {
                    if k == own.as_slice() {
                        own_w = Some(w);
                    }
                    min_w = Some(min_w.map_or(w, |m: i64| m.min(w)));
                    true
                }
                Err(e) => {
                    err = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        self.watermark = own_w.or(min_w).unwrap_or(MIN_TIMESTAMP);
        self.saved_watermark = self.watermark;
        Ok(())
    }

    /// Writes the watermark if it moved since the last snapshot.
    pub fn snapshot_watermark(&mut self, batch: &mut StateBatch) {
        if self.watermark != self.saved_watermark {
            let mut v = vec![layout::VERSION];
            v.extend_from_slice(&self.watermark.to_be_bytes());
            batch.put(
                Table::Windows,
                layout::meta_key(&self.prefix, self.spec.shard),
                v,
            );
            self.saved_watermark = self.watermark;
        }
    }
}
