//! A source task: reads one partition, applies the pipeline's record steps, tracks the
//! partition's watermark, and routes records to their key's shard.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::checkpoint::{Epoch, PartitionCheckpoint};
use crate::event::{DeadLetter, Key, KeyedRecord, Output, Record, Timestamp, Value, MAX_TIMESTAMP};
use crate::time::{Admission, PartitionWatermark};

use super::exchange;
use super::messages::{CoordMessage, ShardMessage, SourceAck, SourceControl};
use super::metrics::JobMetrics;
use super::plan::{PipelinePlan, Rejection};
use super::shard_task::InlineShard;
use super::source::{PollStatus, SourceBatch, SourceError, SourcePartition};
use super::staging::{SinkIndex, Staging};
use super::wall_clock_ms;

/// Records per poll and per shard batch.
const BATCH: usize = 1024;

/// How a source task reaches one shard of a pipeline.
pub(crate) enum ShardLink {
    /// A shard task on a thread of its own.
    Channel(Sender<ShardMessage>),
    /// The pipeline's one shard, fed by this source task alone: run on its thread.
    Inline(Box<InlineShard>),
}

/// One pipeline fed by a source task: its plan and a link to each of its shards.
pub(crate) struct Route {
    pub plan: Arc<PipelinePlan>,
    pub shards: Vec<ShardLink>,
    /// Records waiting to be sent, per shard.
    pending: Vec<Vec<KeyedRecord>>,
    /// For a windowless pipeline (no shards): the sinks its events go to.
    event_sinks: Vec<SinkIndex>,
    /// For stage 1 of a repartitioned pipeline (no shards): where its records go instead.
    exchange: Option<ExchangeRoute>,
}

/// Stage 1 of a repartitioned pipeline: records are staged for the exchange sink.
pub(crate) struct ExchangeRoute {
    /// The exchange sink.
    pub sink: SinkIndex,
    /// The exchange's partition count.
    pub partitions: u32,
    /// For each field of the stage-2 pipeline (in its slot order), the slot of this source.
    pub projection: Vec<usize>,
    /// This task's upstream index: its input partition's index in the source.
    pub upstream: u32,
}

impl Route {
    pub fn new(plan: Arc<PipelinePlan>, shards: Vec<ShardLink>) -> Self {
        let pending = shards.iter().map(|_| Vec::new()).collect();
        Route {
            plan,
            shards,
            pending,
            event_sinks: Vec::new(),
            exchange: None,
        }
    }

    /// Stage 1 of a repartitioned pipeline: prepared records are staged for the exchange.
    pub fn exchange(plan: Arc<PipelinePlan>, exchange: ExchangeRoute) -> Self {
        Route {
            plan,
            shards: Vec::new(),
            pending: Vec::new(),
            event_sinks: Vec::new(),
            exchange: Some(exchange),
        }
    }

    /// A route for a windowless pipeline: events are staged by the source task itself.
    pub fn stateless(plan: Arc<PipelinePlan>, event_sinks: Vec<SinkIndex>) -> Self {
        Route {
            plan,
            shards: Vec::new(),
            pending: Vec::new(),
            event_sinks,
            exchange: None,
        }
    }

    fn send(&mut self, shard: usize, msg: ShardMessage) -> Result<(), SourceError> {
        match self.shards.get_mut(shard) {
            Some(ShardLink::Channel(tx)) => tx
                .send(msg)
                .map_err(|_| SourceError::Fatal("shard task is gone".into())),
            Some(ShardLink::Inline(inline)) => inline.handle(msg),
            None => Ok(()),
        }
    }

    fn flush(&mut self) -> Result<(), SourceError> {
        for shard in 0..self.pending.len() {
            if !self.pending[shard].is_empty() {
                let full = std::mem::replace(&mut self.pending[shard], Vec::with_capacity(BATCH));
                self.send(shard, ShardMessage::Records(full))?;
            }
        }
        Ok(())
    }

    fn broadcast(&mut self, msg: &ShardMessage) -> Result<(), SourceError> {
        for shard in 0..self.shards.len() {
            self.send(shard, clone_control(msg))?;
        }
        Ok(())
    }

    /// Runs the processing-time work of the shards on this thread.
    fn tick(&mut self) -> Result<(), SourceError> {
        for link in self.shards.iter_mut() {
            if let ShardLink::Inline(inline) = link {
                inline.tick()?;
            }
        }
        Ok(())
    }

    /// Queues `record` (checked by the plan) for its key's shard, or adds it to the shard at
    /// once when the shard runs on this thread.
    fn push(&mut self, record: Record, partition_watermark: Timestamp) -> Result<(), SourceError> {
        if let [ShardLink::Inline(inline)] = self.shards.as_mut_slice() {
            // The key is built once and hashed from its bytes: there is no shard to choose.
            let mut key = Key::default();
            self.plan.set_key(&record, &mut key);
            let keyed = KeyedRecord {
                key_hash: key.stable_hash(),
                key,
                record,
                partition_watermark,
            };
            return inline.process(keyed);
        }
        let key_hash = self.plan.key_hash(&record);
        let shard = (key_hash % self.shards.len().max(1) as u64) as usize;
        if let Some(buf) = self.pending.get_mut(shard) {
            buf.push(KeyedRecord {
                key: Key::default(),
                key_hash,
                record,
                partition_watermark,
            });
            // The key is set in the queued record itself rather than moved in after.
            if let Some(queued) = buf.last_mut() {
                self.plan.set_key(&queued.record, &mut queued.key);
            }
            if buf.len() >= BATCH {
                let full = std::mem::replace(buf, Vec::with_capacity(BATCH));
                self.send(shard, ShardMessage::Records(full))?;
            }
        }
        Ok(())
    }
}

/// Reads one partition of a source for every pipeline that uses the source.
pub(crate) struct SourceTask {
    pub task: usize,
    pub source: String,
    pub routes: Vec<Route>,
    pub partition: Box<dyn SourcePartition>,
    pub watermark: PartitionWatermark,
    pub staging: Staging,
    pub dead_letter: Option<SinkIndex>,
    pub control: Receiver<SourceControl>,
    pub coordinator: Sender<CoordMessage>,
    pub metrics: Arc<JobMetrics>,
    /// Scratch buffer for exchange values.
    pub value: Vec<u8>,
}

impl SourceTask {
    /// Runs until told to stop. Errors are reported to the coordinator.
    pub fn run(mut self) {
        if let Err(e) = self.run_inner() {
            let _ = self.coordinator.send(CoordMessage::Failed(format!(
                "source `{}` partition `{}`: {e}",
                self.source,
                self.partition.id()
            )));
        }
    }

    fn run_inner(&mut self) -> Result<(), SourceError> {
        let mut batch = SourceBatch::default();
        let mut ended = false;
        let mut idle = false;
        let mut sent_watermark = self.current_watermark(false);
        let mut in_flight: VecDeque<(Epoch, Vec<u8>)> = VecDeque::new();
        let mut backoff = Duration::from_millis(50);
        self.broadcast(ShardMessage::Watermark(sent_watermark))?;

        loop {
            self.routes.iter_mut().try_for_each(Route::tick)?;
            // Control first: a barrier goes out at a record boundary, after everything read so far.
            let wait = if ended || idle {
                Duration::from_millis(20)
            } else {
                Duration::ZERO
            };
            let msg = if wait.is_zero() {
                self.control.try_recv().ok()
            } else {
                match self.control.recv_timeout(wait) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                }
            };
            if let Some(msg) = msg {
                match msg {
                    SourceControl::Stop => return Ok(()),
                    SourceControl::Barrier(epoch) => {
                        self.flush()?;
                        self.stage_markers(ended, idle);
                        self.broadcast(ShardMessage::Barrier(epoch))?;
                        let position = self.partition.position();
                        in_flight.push_back((epoch, position.clone()));
                        let ack = SourceAck {
                            epoch,
                            task: self.task,
                            checkpoint: PartitionCheckpoint {
                                position,
                                watermark: self.watermark.snapshot(),
                            },
                            staged: self.staging.take(),
                            ended,
                        };
                        if self.coordinator.send(CoordMessage::Source(ack)).is_err() {
                            return Ok(());
                        }
                    }
                    SourceControl::Committed(epoch) => {
                        while let Some((e, pos)) = in_flight.front() {
                            if *e > epoch {
                                break;
                            }
                            if *e == epoch {
                                // Acknowledging is best effort: a failed acknowledgement is
                                // repeated by the next one, or after a restart by `seek`.
                                if let Err(e) = self.partition.on_committed(pos) {
                                    match e {
                                        SourceError::Retryable(reason) => tracing::warn!(
                                            partition = self.partition.id(),
                                            %reason,
                                            "acknowledging committed input failed; the next commit retries"
                                        ),
                                        fatal => return Err(fatal),
                                    }
                                }
                            }
                            in_flight.pop_front();
                        }
                    }
                }
                continue;
            }
            if ended {
                continue;
            }

            batch.clear();
            let status = match self.partition.poll(&mut batch, BATCH) {
                Ok(s) => {
                    backoff = Duration::from_millis(50);
                    s
                }
                Err(SourceError::Retryable(reason)) => {
                    tracing::warn!(partition = self.partition.id(), %reason, "source read failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let now = wall_clock_ms();
            if !batch.records.is_empty() && idle {
                idle = false;
                self.broadcast(ShardMessage::Idle(false))?;
            }
            let explicit = self.partition.watermark().is_some();
            if !explicit {
                // An exchange partition's records were counted when stage 1 read them.
                JobMetrics::add(
                    &self.metrics.events_in,
                    (batch.records.len() + batch.dead_letters.len()) as u64,
                );
            }
            let mut dead = std::mem::take(&mut batch.dead_letters);
            let last_route = self.routes.len().saturating_sub(1);
            let carried = std::mem::take(&mut batch.record_watermarks);
            for (i, record) in batch.records.drain(..).enumerate() {
                let partition_watermark = match carried.get(i) {
                    Some(w) => *w,
                    None if explicit => self.current_watermark(false),
                    None => self.watermark.watermark(),
                };
                if let Admission::FutureSkew { ahead_ms } = self.watermark.observe(record.time, now)
                {
                    let reason = format!(
                        "event time is {ahead_ms} ms ahead of the wall clock (max_future_skew)"
                    );
                    dead.push(self.reject(None, &record, reason));
                    continue;
                }
                // Each pipeline gets its own copy: steps may rewrite fields.
                let mut record = Some(record);
                for r in 0..self.routes.len() {
                    let mut rec = if r == last_route {
                        match record.take() {
                            Some(rec) => rec,
                            None => break,
                        }
                    } else {
                        match record.as_ref() {
                            Some(rec) => rec.clone(),
                            None => break,
                        }
                    };
                    match self.routes[r].plan.check(&mut rec) {
                        Ok(()) if self.routes[r].plan.operator.is_none() => {
                            let out = Output::Event(self.routes[r].plan.event(&rec));
                            JobMetrics::add(&self.metrics.results_out, 1);
                            for i in 0..self.routes[r].event_sinks.len() {
                                let sink = self.routes[r].event_sinks[i];
                                self.staging.stage(sink, &out);
                            }
                        }
                        Ok(()) if self.routes[r].exchange.is_some() => {
                            let mut key = Key::default();
                            self.routes[r].plan.set_key(&rec, &mut key);
                            self.stage_exchange(r, &key, &rec, partition_watermark);
                        }
                        Ok(()) => self.routes[r].push(rec, partition_watermark)?,
                        Err(Rejection::Filtered) => {
                            JobMetrics::add(&self.metrics.events_filtered, 1)
                        }
                        Err(Rejection::Invalid(reason)) => {
                            let pipeline = self.routes[r].plan.name.clone();
                            dead.push(self.reject(Some(&pipeline), &rec, reason));
                        }
                    }
                }
            }
            self.dead_letters(dead);

            match status {
                PollStatus::Data => {}
                PollStatus::Idle => {
                    self.flush()?;
                    if !idle && !explicit && self.watermark.is_idle(now) {
                        idle = true;
                        self.broadcast(ShardMessage::Idle(true))?;
                    }
                    if !idle {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                PollStatus::End => {
                    self.flush()?;
                    self.watermark.mark_ended();
                    ended = true;
                    let _ = self.coordinator.send(CoordMessage::SourceEnded(self.task));
                }
            }
            let wm = self.current_watermark(ended);
            if wm > sent_watermark {
                // Records before the watermark must reach the shards first.
                self.flush()?;
                sent_watermark = wm;
                self.broadcast(ShardMessage::Watermark(wm))?;
            }
        }
    }

    /// The partition's watermark: explicit if the partition reports one, else from event times.
    fn current_watermark(&self, ended: bool) -> Timestamp {
        if ended {
            return MAX_TIMESTAMP;
        }
        self.partition
            .watermark()
            .unwrap_or_else(|| self.watermark.watermark())
    }

    /// Stages a prepared record of route `r` for its exchange: target partition by key hash,
    /// the stage-2 fields, event time and the watermark it was read under.
    fn stage_exchange(&mut self, r: usize, key: &Key, record: &Record, partition_watermark: i64) {
        let Some(ex) = self.routes[r].exchange.as_ref() else {
            return;
        };
        let partition = exchange::exchange_partition(key.stable_hash(), ex.partitions);
        self.value.clear();
        exchange::encode_record(
            &mut self.value,
            record.time,
            partition_watermark,
            ex.projection
                .iter()
                .map(|&s| record.fields.get(s).unwrap_or(&Value::Null)),
        );
        if let Some(buf) = self.staging.buffer(ex.sink) {
            exchange::stage(buf, Some(partition), key.as_bytes(), &self.value);
        }
    }

    /// Stages this task's progress marker for every exchange partition of every repartitioned
    /// route; called at each barrier, after the records it covers.
    fn stage_markers(&mut self, ended: bool, idle: bool) {
        let watermark = self.current_watermark(ended);
        for r in 0..self.routes.len() {
            let Some(ex) = self.routes[r].exchange.as_ref() else {
                continue;
            };
            let marker = exchange::Marker {
                upstream: ex.upstream,
                watermark,
                ended,
                idle,
            };
            self.value.clear();
            exchange::encode_marker(&mut self.value, &marker);
            if let Some(buf) = self.staging.buffer(ex.sink) {
                exchange::stage(buf, None, &[], &self.value);
            }
        }
    }

    fn reject(
        &self,
        pipeline: Option<&str>,
        record: &crate::event::Record,
        error: String,
    ) -> DeadLetter {
        let slots = match self.routes.first() {
            Some(r) => &r.plan.slots,
            None => {
                return DeadLetter {
                    source: self.source.as_str().into(),
                    partition: self.partition.id().into(),
                    offset: String::new().into(),
                    raw: Vec::new(),
                    error,
                }
            }
        };
        let fields: serde_json::Map<String, serde_json::Value> = slots
            .names()
            .iter()
            .zip(record.fields.iter())
            .map(|(n, v)| (n.to_string(), v.to_json()))
            .collect();
        let mut raw = serde_json::to_vec(&fields).unwrap_or_default();
        raw.extend_from_slice(format!(" (event_time {})", record.time).as_bytes());
        DeadLetter {
            source: self.source.as_str().into(),
            partition: self.partition.id().into(),
            // Records are decoded a batch at a time; this is the position after the batch.
            offset: format!("before {}", hex(&self.partition.position())).into(),
            raw,
            error: match pipeline {
                Some(p) => format!("pipeline `{p}`: {error}"),
                None => error,
            },
        }
    }

    fn dead_letters(&mut self, dead: Vec<DeadLetter>) {
        if dead.is_empty() {
            return;
        }
        JobMetrics::add(&self.metrics.dead_letters, dead.len() as u64);
        for d in dead {
            match self.dead_letter {
                Some(sink) => self.staging.stage(sink, &Output::DeadLetter(d)),
                None => tracing::warn!(
                    source = %d.source, partition = %d.partition, offset = %d.offset, error = %d.error,
                    "rejected record (no dead_letter sink configured)"
                ),
            }
        }
    }

    fn flush(&mut self) -> Result<(), SourceError> {
        self.routes.iter_mut().try_for_each(Route::flush)
    }

    fn broadcast(&mut self, msg: ShardMessage) -> Result<(), SourceError> {
        self.routes.iter_mut().try_for_each(|r| r.broadcast(&msg))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn clone_control(msg: &ShardMessage) -> ShardMessage {
    match msg {
        ShardMessage::Watermark(w) => ShardMessage::Watermark(*w),
        ShardMessage::Idle(b) => ShardMessage::Idle(*b),
        ShardMessage::Barrier(e) => ShardMessage::Barrier(*e),
        ShardMessage::Records(_) => ShardMessage::Records(Vec::new()),
    }
}
