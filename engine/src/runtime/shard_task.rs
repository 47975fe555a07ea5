//! A shard task: owns one slice of a pipeline's keys and their window state, aligns
//! checkpoint barriers across its inputs, and stages its outputs for the epoch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender};

use crate::checkpoint::Epoch;
use crate::event::Output;
use crate::state::{StateBatch, StateError};
use crate::time::WatermarkHolder;

use super::messages::{CoordMessage, ShardAck, ShardMessage};
use super::metrics::JobMetrics;
use super::operator::Operator;
use super::staging::{SinkIndex, Staging};
use super::wall_clock_ms;

/// How often rate-limited `on_update` results are flushed.
const PROCESSING_TICK: Duration = Duration::from_millis(20);

pub(crate) struct ShardTask {
    pub task: usize,
    pub operator: Box<dyn Operator>,
    pub inputs: Vec<Receiver<ShardMessage>>,
    pub staging: Staging,
    pub result_sinks: Vec<SinkIndex>,
    pub late_sink: Option<SinkIndex>,
    pub coordinator: Sender<CoordMessage>,
    pub metrics: Arc<JobMetrics>,
}

impl ShardTask {
    /// Runs until every input is disconnected. Errors are reported to the coordinator.
    pub fn run(mut self) {
        if let Err(e) = self.run_inner() {
            let _ = self.coordinator.send(CoordMessage::Failed(format!(
                "shard task {}: {e}",
                self.task
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
        let ShardTask {
            task,
            operator,
            inputs,
            staging,
            result_sinks,
            late_sink,
            coordinator,
            metrics,
        } = self;
        let mut emit = |out: Output, staging: &mut Staging| match &out {
            Output::Result(_) => {
                JobMetrics::add(&metrics.results_out, 1);
                for &s in result_sinks.iter() {
                    staging.stage(s, &out);
                }
            }
            Output::Late(_) => {
                JobMetrics::add(&metrics.late_events, 1);
                if let Some(s) = late_sink {
                    staging.stage(*s, &out);
                }
            }
            Output::DeadLetter(_) | Output::Event(_) => {}
        };

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
                    Ok(ShardMessage::Records(records)) => {
                        for rec in records {
                            operator.process(rec, &mut |o| emit(o, staging))?;
                        }
                    }
                    Ok(ShardMessage::Watermark(wm)) => {
                        if let Some(w) = holder.update(input, wm) {
                            operator.advance_watermark(w, &mut |o| emit(o, staging))?;
                        }
                    }
                    Ok(ShardMessage::Idle(idle)) => {
                        if let Some(w) = holder.set_idle(input, idle) {
                            operator.advance_watermark(w, &mut |o| emit(o, staging))?;
                        }
                    }
                    Ok(ShardMessage::Barrier(epoch)) => barrier_at[input] = Some(epoch),
                }
            }
            if last_tick.elapsed() >= PROCESSING_TICK {
                last_tick = Instant::now();
                operator.on_processing_time(wall_clock_ms(), &mut |o| emit(o, staging))?;
            }
            // Aligned: every connected input has delivered the same barrier.
            let epoch = barrier_at.iter().flatten().next().copied();
            if let Some(epoch) = epoch {
                let aligned = (0..n).all(|i| !connected[i] || barrier_at[i] == Some(epoch));
                if aligned {
                    let mut state = StateBatch::default();
                    operator.snapshot(&mut state)?;
                    let stats = operator.stats();
                    let ack = ShardAck {
                        epoch,
                        task: *task,
                        state,
                        staged: staging.take(),
                        open_windows: stats.open_windows,
                        watermark: holder.watermark(),
                    };
                    if coordinator.send(CoordMessage::Shard(ack)).is_err() {
                        return Ok(());
                    }
                    barrier_at.iter_mut().for_each(|b| *b = None);
                }
            }
        }
    }
}
