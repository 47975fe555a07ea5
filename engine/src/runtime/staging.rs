//! Per-task staging of outputs: each producing task encodes its outputs for each sink into a
//! buffer that becomes part of the epoch's staged bytes.

use crate::event::Output;

use super::sink::SinkEncoder;

/// Index of a sink in the job's sink list.
pub(crate) type SinkIndex = usize;

/// One task's encoders and buffers, one per sink of the job.
pub(crate) struct Staging {
    encoders: Vec<Box<dyn SinkEncoder>>,
    buffers: Vec<Vec<u8>>,
}

impl Staging {
    pub fn new(encoders: Vec<Box<dyn SinkEncoder>>) -> Self {
        let buffers = encoders.iter().map(|_| Vec::new()).collect();
        Staging { encoders, buffers }
    }

    /// Encodes `output` for `sink`.
    pub fn stage(&mut self, sink: SinkIndex, output: &Output) {
        if let (Some(enc), Some(buf)) = (self.encoders.get_mut(sink), self.buffers.get_mut(sink)) {
            enc.encode(output, buf);
        }
    }

    /// The staged bytes of `sink`, for outputs staged without an encoder (exchange items).
    pub fn buffer(&mut self, sink: SinkIndex) -> Option<&mut Vec<u8>> {
        self.buffers.get_mut(sink)
    }

    /// Takes the staged bytes of every sink, by sink index (empty for sinks with nothing).
    pub fn take(&mut self) -> Vec<Vec<u8>> {
        self.buffers.iter_mut().map(std::mem::take).collect()
    }
}
