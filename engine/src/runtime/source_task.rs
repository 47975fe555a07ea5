//! A source task: reads one partition, applies the pipeline's record steps, tracks the
//! partition's watermark, and routes records to their key's shard.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::checkpoint::{Epoch, PartitionCheckpoint};
use crate::event::{DeadLetter, KeyedRecord, Output};
use crate::time::{Admission, PartitionWatermark};

use super::messages::{CoordMessage, ShardMessage, SourceAck, SourceControl};
use super::metrics::JobMetrics;
use super::plan::{PipelinePlan, Rejection};
use super::source::{PollStatus, SourceBatch, SourceError, SourcePartition};
use super::staging::{SinkIndex, Staging};
use super::wall_clock_ms;

/// Records per poll and per shard batch.
const BATCH: usize = 1024;

pub(crate) struct SourceTask {
    pub task: usize,
    pub plan: Arc<PipelinePlan>,
    pub partition: Box<dyn SourcePartition>,
    pub watermark: PartitionWatermark,
    pub shards: Vec<Sender<ShardMessage>>,
    pub staging: Staging,
    pub dead_letter: Option<SinkIndex>,
    pub control: Receiver<SourceControl>,
    pub coordinator: Sender<CoordMessage>,
    pub metrics: Arc<JobMetrics>,
}

impl SourceTask {
    /// Runs until told to stop. Errors are reported to the coordinator.
    pub fn run(mut self) {
        if let Err(e) = self.run_inner() {
            let _ = self.coordinator.send(CoordMessage::Failed(format!(
                "source `{}` partition `{}`: {e}",
                self.plan.source,
                self.partition.id()
            )));
        }
    }

    fn run_inner(&mut self) -> Result<(), SourceError> {
        let shard_count = self.shards.len().max(1) as u64;
        let mut pending: Vec<Vec<KeyedRecord>> = (0..self.shards.len()).map(|_| Vec::new()).collect();
        let mut batch = SourceBatch::default();
        let mut ended = false;
        let mut idle = false;
        let mut sent_watermark = self.watermark.watermark();
        let mut in_flight: VecDeque<(Epoch, Vec<u8>)> = VecDeque::new();
        let mut backoff = Duration::from_millis(50);
        self.broadcast(ShardMessage::Watermark(sent_watermark))?;

        loop {
            // Control first: a barrier goes out at a record boundary, after everything read so far.
            let wait = if ended || idle { Duration::from_millis(20) } else { Duration::ZERO };
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
                        self.flush(&mut pending)?;
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
                                self.partition.on_committed(pos)?;
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
            JobMetrics::add(&self.metrics.events_in, (batch.records.len() + batch.dead_letters.len()) as u64);
            let mut dead = std::mem::take(&mut batch.dead_letters);
            for mut record in batch.records.drain(..) {
                let partition_watermark = self.watermark.watermark();
                if let Admission::FutureSkew { ahead_ms } = self.watermark.observe(record.time, now) {
                    dead.push(self.reject(&record, format!("event time is {ahead_ms} ms ahead of the wall clock (max_future_skew)")));
                    continue;
                }
                match self.plan.prepare(&mut record) {
                    Ok(key) => {
                        let key_hash = key.stable_hash();
                        let shard = (key_hash % shard_count) as usize;
                        if let Some(buf) = pending.get_mut(shard) {
                            buf.push(KeyedRecord { key, key_hash, record, partition_watermark });
                            if buf.len() >= BATCH {
                                let full = std::mem::replace(buf, Vec::with_capacity(BATCH));
                                self.send(shard, ShardMessage::Records(full))?;
                            }
                        }
                    }
                    Err(Rejection::Filtered) => JobMetrics::add(&self.metrics.events_filtered, 1),
                    Err(Rejection::Invalid(reason)) => dead.push(self.reject(&record, reason)),
                }
            }
            self.dead_letters(dead);

            match status {
                PollStatus::Data => {}
                PollStatus::Idle => {
                    self.flush(&mut pending)?;
                    if !idle && self.watermark.is_idle(now) {
                        idle = true;
                        self.broadcast(ShardMessage::Idle(true))?;
                    }
                    if !idle {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                PollStatus::End => {
                    self.flush(&mut pending)?;
                    self.watermark.mark_ended();
                    ended = true;
                    let _ = self.coordinator.send(CoordMessage::SourceEnded(self.task));
                }
            }
            let wm = self.watermark.watermark();
            if wm > sent_watermark {
                // Records before the watermark must reach the shards first.
                self.flush(&mut pending)?;
                sent_watermark = wm;
                self.broadcast(ShardMessage::Watermark(wm))?;
            }
        }
    }

    fn reject(&self, record: &crate::event::Record, error: String) -> DeadLetter {
        let fields: serde_json::Map<String, serde_json::Value> = self
            .plan
            .slots
            .names()
            .iter()
            .zip(record.fields.iter())
            .map(|(n, v)| (n.to_string(), v.to_json()))
            .collect();
        let mut raw = serde_json::to_vec(&fields).unwrap_or_default();
        raw.extend_from_slice(format!(" (event_time {})", record.time).as_bytes());
        DeadLetter {
            source: self.plan.source.as_str().into(),
            partition: self.partition.id().into(),
            offset: format!("{:?}", self.partition.position()).into(),
            raw,
            error,
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

    fn flush(&mut self, pending: &mut [Vec<KeyedRecord>]) -> Result<(), SourceError> {
        for (shard, buf) in pending.iter_mut().enumerate() {
            if !buf.is_empty() {
                let full = std::mem::replace(buf, Vec::with_capacity(BATCH));
                self.send(shard, ShardMessage::Records(full))?;
            }
        }
        Ok(())
    }

    fn send(&self, shard: usize, msg: ShardMessage) -> Result<(), SourceError> {
        match self.shards.get(shard) {
            Some(tx) => tx
                .send(msg)
                .map_err(|_| SourceError::Fatal("shard task is gone".into())),
            None => Ok(()),
        }
    }

    fn broadcast(&self, msg: ShardMessage) -> Result<(), SourceError> {
        let n = self.shards.len();
        let mut msg = Some(msg);
        for shard in 0..n {
            let m = if shard + 1 == n {
                msg.take()
            } else {
                msg.as_ref().map(clone_control)
            };
            if let Some(m) = m {
                self.send(shard, m)?;
            }
        }
        Ok(())
    }
}

fn clone_control(msg: &ShardMessage) -> ShardMessage {
    match msg {
        ShardMessage::Watermark(w) => ShardMessage::Watermark(*w),
        ShardMessage::Idle(b) => ShardMessage::Idle(*b),
        ShardMessage::Barrier(e) => ShardMessage::Barrier(*e),
        ShardMessage::Records(_) => ShardMessage::Records(Vec::new()),
    }
}
