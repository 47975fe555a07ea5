//! A shard: owns one slice of a pipeline's keys and their window state, aligns checkpoint
//! barriers across its inputs, and stages its outputs for the epoch. A shard runs on a thread
//! of its own ([`ShardTask`]), or, when its one input is one source task's, on that source
//! task's thread ([`InlineShard`]): the same work without a channel and a thread between them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender};

use crate::checkpoint::Epoch;
use crate::event::{KeyedRecord, Output, Timestamp};
use crate::state::{StateBatch, StateError};
use crate::time::WatermarkHolder;

use super::messages::{CoordMessage, ShardAck, ShardMessage};
use super::metrics::JobMetrics;
use super::operator::Operator;
use super::source::SourceError;
use super::staging::{SinkIndex, Staging};
use super::wall_clock_ms;

/// How often rate-limited `on_update` results are flushed.
const PROCESSING_TICK: Duration = Duration::from_millis(20);

/// What a shard owns, wherever it runs: its operator and the outputs it stages.
pub(crate) struct Shard {
    /// Index of the shard in the job (the coordinator's index of its acks).
    pub task: usize,
    pub operator: Box<dyn Operator>,
    pub staging: Staging,
    pub result_sinks: Vec<SinkIndex>,
    pub late_sink: Option<SinkIndex>,
    pub coordinator: Sender<CoordMessage>,
    pub metrics: Arc<JobMetrics>,
}

/// Stages one operator output for its sinks.
fn emit(
    out: Output,
    staging: &mut Staging,
    result_sinks: &[SinkIndex],
    late_sink: Option<SinkIndex>,
    metrics: &JobMetrics,
) {
    match &out {
        Output::Result(_) => {
            JobMetrics::add(&metrics.results_out, 1);
            for &s in result_sinks {
                staging.stage(s, &out);
            }
        }
        Output::Late(_) => {
            JobMetrics::add(&metrics.late_events, 1);
            if let Some(s) = late_sink {
                staging.stage(s, &out);
            }
        }
        Output::DeadLetter(_) | Output::Event(_) => {}
    }
}

impl Shard {
    /// Runs `f` on the operator with an output callback that stages what it emits.
    fn with_outputs<R>(
        &mut self,
        f: impl FnOnce(&mut dyn Operator, &mut dyn FnMut(Output)) -> R,
    ) -> R {
        let Shard {
            operator,
            staging,
            result_sinks,
            late_sink,
            metrics,
            ..
        } = self;
        f(operator.as_mut(), &mut |o| {
            emit(o, staging, result_sinks, *late_sink, metrics)
        })
    }

    /// Adds one record to the operator.
    fn process(&mut self, rec: KeyedRecord) -> Result<(), StateError> {
        self.with_outputs(|op, out| op.process(rec, out))
    }

    /// Advances the operator's event time to `watermark`.
    fn advance_watermark(&mut self, watermark: Timestamp) -> Result<(), StateError> {
        self.with_outputs(|op, out| op.advance_watermark(watermark, out))
    }

    /// Emits what is due at the current processing time.
    fn on_processing_time(&mut self) -> Result<(), StateError> {
        self.with_outputs(|op, out| op.on_processing_time(wall_clock_ms(), out))
    }

    /// Handles `msg` from input `input` (its watermark kept in `holder`): records go to the
    /// operator and a watermark advances it when it moves the minimum over the inputs. A
    /// barrier is returned for the caller to align and acknowledge.
    fn receive(
        &mut self,
        holder: &mut WatermarkHolder,
        input: usize,
        msg: ShardMessage,
    ) -> Result<Option<Epoch>, StateError> {
        let moved = match msg {
            ShardMessage::Records(records) => {
                for rec in records {
                    self.process(rec)?;
                }
                None
            }
            ShardMessage::Watermark(wm) => holder.update(input, wm),
            ShardMessage::Idle(idle) => holder.set_idle(input, idle),
            ShardMessage::Barrier(epoch) => return Ok(Some(epoch)),
        };
        if let Some(w) = moved {
            self.advance_watermark(w)?;
        }
        Ok(None)
    }

    /// Acknowledges `epoch` to the coordinator with the state changes and outputs since the
    /// last acknowledgement. `Ok(false)`: the coordinator is gone.
    fn ack(&mut self, epoch: Epoch, watermark: Timestamp) -> Result<bool, StateError> {
        let mut state = StateBatch::default();
        self.operator.snapshot(&mut state)?;
        let stats = self.operator.stats();
        let ack = ShardAck {
            epoch,
            task: self.task,
            state,
            staged: self.staging.take(),
            open_windows: stats.open_windows,
            watermark,
        };
        Ok(self.coordinator.send(CoordMessage::Shard(ack)).is_ok())
    }
}

/// A shard on a thread of its own, fed by channels from its inputs (one per source task).
pub(crate) struct ShardTask {
    pub shard: Shard,
    pub inputs: Vec<Receiver<ShardMessage>>,
}

impl ShardTask {
    /// Runs until every input is disconnected. Errors are reported to the coordinator.
    pub fn run(mut self) {
        if let Err(e) = self.run_inner() {
            let _ = self.shard.coordinator.send(CoordMessage::Failed(format!(
                "shard task {}: {e}",
                self.shard.task
            )));
        }
    }

    fn run_inner(&mut self) -> Result<(), StateError> {
        let n = self.inputs.len();
        let mut holder = WatermarkHolder::new(n);
        // The epoch whose barrier each input has delivered and that this shard has not acked yet.
        let mut barrier_at: Vec<Option<Epoch>> = vec![None; n];
        let mut connected = vec![true; n];
        let mut last_tick = Instant::now();
        let ShardTask { shard, inputs } = self;

        loop {
            let mut select = Select::new();
            let mut ready_inputs = Vec::with_capacity(n);
            for (i, rx) in inputs.iter().enumerate() {
                if connected[i] && barrier_at[i].is_none() {
                    select.recv(rx);
                    ready_inputs.push(i);
                }
            }
            if ready_inputs.is_empty() && connected.iter().all(|c| !c) {
                return Ok(());
            }
            if let Ok(op) = select.select_timeout(PROCESSING_TICK) {
                let idx = op.index();
                let input = ready_inputs[idx];
                match op.recv(&inputs[input]) {
                    Err(_) => connected[input] = false,
                    Ok(msg) => {
                        if let Some(epoch) = shard.receive(&mut holder, input, msg)? {
                            barrier_at[input] = Some(epoch);
                        }
                    }
                }
            }
            if last_tick.elapsed() >= PROCESSING_TICK {
                last_tick = Instant::now();
                shard.on_processing_time()?;
            }
            // Aligned: every connected input has delivered the same barrier.
            let epoch = barrier_at.iter().flatten().next().copied();
            if let Some(epoch) = epoch {
                let aligned = (0..n).all(|i| !connected[i] || barrier_at[i] == Some(epoch));
                if aligned {
                    if !shard.ack(epoch, holder.watermark())? {
                        return Ok(());
                    }
                    barrier_at.iter_mut().for_each(|b| *b = None);
                }
            }
        }
    }
}

/// A shard whose one input is one source task, run by that task on its own thread: each
/// message is handled when the source task would have sent it, so the shard sees the same
/// sequence a [`ShardTask`] with that one input would.
pub(crate) struct InlineShard {
    shard: Shard,
    holder: WatermarkHolder,
    last_tick: Instant,
}

impl InlineShard {
    /// Runs `shard` on its input's source task.
    pub fn new(shard: Shard) -> Self {
        InlineShard {
            shard,
            holder: WatermarkHolder::new(1),
            last_tick: Instant::now(),
        }
    }

    /// Adds one record.
    pub fn process(&mut self, rec: KeyedRecord) -> Result<(), SourceError> {
        self.shard.process(rec).map_err(|e| self.failed(e))
    }

    /// Handles `msg` as a [`ShardTask`] would on receiving it; a barrier is acknowledged at
    /// once (there is no other input to align with).
    pub fn handle(&mut self, msg: ShardMessage) -> Result<(), SourceError> {
        self.handle_inner(msg).map_err(|e| self.failed(e))
    }

    fn handle_inner(&mut self, msg: ShardMessage) -> Result<(), StateError> {
        if let Some(epoch) = self.shard.receive(&mut self.holder, 0, msg)? {
            // A coordinator that is gone is noticed by the source task's own ack.
            self.shard.ack(epoch, self.holder.watermark())?;
        }
        Ok(())
    }

    /// Emits what is due at processing time, at most once per tick; the source task calls it
    /// on every turn of its loop.
    pub fn tick(&mut self) -> Result<(), SourceError> {
        if self.last_tick.elapsed() >= PROCESSING_TICK {
            self.last_tick = Instant::now();
            self.shard
                .on_processing_time()
                .map_err(|e| self.failed(e))?;
        }
        Ok(())
    }

    /// A failure of the shard, reported as its own thread would report it.
    fn failed(&self, e: StateError) -> SourceError {
        SourceError::Fatal(format!("shard task {}: {e}", self.shard.task))
    }
}
