//! Event time and watermarks. INTERFACE STUB — implemented by the time work package.

use crate::event::Timestamp;
use crate::topology::WatermarkConfig;

/// Whether an event was admitted by its partition's watermark tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Admitted.
    Accepted,
    /// Further ahead of the wall clock than `max_future_skew`; quarantine it.
    FutureSkew {
        /// How far ahead of the wall clock it was, in ms.
        ahead_ms: i64,
    },
}

/// The watermark of one input partition: bounded out-of-orderness, idleness, future skew.
#[derive(Debug, Clone)]
pub struct PartitionWatermark {
    _private: (),
}

impl PartitionWatermark {
    /// A tracker with no event seen.
    pub fn new(_config: &WatermarkConfig) -> Self {
        unimplemented!()
    }
    /// Observes an event time read at wall-clock `now_ms`.
    pub fn observe(&mut self, _time: Timestamp, _now_ms: i64) -> Admission {
        unimplemented!()
    }
    /// The current watermark (max event time seen − max_out_of_orderness); monotone.
    pub fn watermark(&self) -> Timestamp {
        unimplemented!()
    }
    /// Whether the partition has been silent longer than `idle_timeout` at `now_ms`.
    pub fn is_idle(&self, _now_ms: i64) -> bool {
        unimplemented!()
    }
    /// State to persist with the partition's position.
    pub fn snapshot(&self) -> Vec<u8> {
        unimplemented!()
    }
    /// Restores state written by `snapshot`.
    pub fn restore(&mut self, _bytes: &[u8]) -> Result<(), String> {
        unimplemented!()
    }
}

/// The watermark of a multi-input operator: the minimum over inputs that are not idle.
#[derive(Debug, Clone)]
pub struct WatermarkHolder {
    _private: (),
}

impl WatermarkHolder {
    /// `inputs` inputs, each at the minimum watermark.
    pub fn new(_inputs: usize) -> Self {
        unimplemented!()
    }
    /// Records input `input`'s watermark; returns the combined watermark if it advanced.
    pub fn update(&mut self, _input: usize, _watermark: Timestamp) -> Option<Timestamp> {
        unimplemented!()
    }
    /// Marks an input idle (ignored by the minimum) or active again.
    pub fn set_idle(&mut self, _input: usize, _idle: bool) -> Option<Timestamp> {
        unimplemented!()
    }
    /// The combined watermark (never decreases).
    pub fn watermark(&self) -> Timestamp {
        unimplemented!()
    }
}
