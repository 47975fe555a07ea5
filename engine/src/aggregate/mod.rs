//! Mergeable aggregates. INTERFACE STUB — implemented by the aggregate work package.

use std::sync::Arc;

use compact_str::CompactString;

use crate::event::Record;
use crate::topology::AggregateFunction;

/// One aggregate of a pipeline, with its input resolved to a record slot.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledAggregate {
    /// Output name.
    pub name: CompactString,
    /// The function.
    pub function: AggregateFunction,
    /// Slot of the input field in [`Record::fields`]; `None` only for `count`.
    pub slot: Option<usize>,
    /// Quantile for `percentile`.
    pub q: f64,
    /// Size for `top_n`.
    pub n: u32,
}

/// Failure to decode stored accumulators.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode accumulators: {0}")]
pub struct AggregateError(pub String);

/// The accumulators of one (key, window or pane): one per aggregate, in declaration order.
#[derive(Debug, Clone, PartialEq)]
pub struct Accumulators {
    _private: (),
}

/// A pipeline's aggregates; cheap to clone.
#[derive(Debug, Clone)]
pub struct Aggregates {
    specs: Arc<[CompiledAggregate]>,
}

impl Aggregates {
    /// Builds the set.
    pub fn new(specs: Vec<CompiledAggregate>) -> Self {
        Aggregates { specs: specs.into() }
    }

    /// The aggregate specs.
    pub fn specs(&self) -> &[CompiledAggregate] {
        &self.specs
    }

    /// Empty accumulators.
    pub fn create(&self) -> Accumulators {
        unimplemented!()
    }

    /// Adds one record.
    pub fn update(&self, _acc: &mut Accumulators, _record: &Record) {
        unimplemented!()
    }

    /// Merges `from` into `into`; merge is associative and commutative.
    pub fn merge(&self, _into: &mut Accumulators, _from: &Accumulators) {
        unimplemented!()
    }

    /// The aggregate values, in declaration order.
    pub fn finish(&self, _acc: &Accumulators) -> Vec<serde_json::Value> {
        unimplemented!()
    }

    /// Appends the versioned binary encoding of `acc` to `buf`.
    pub fn encode(&self, _acc: &Accumulators, _buf: &mut Vec<u8>) {
        unimplemented!()
    }

    /// Decodes bytes written by [`Aggregates::encode`].
    pub fn decode(&self, _bytes: &[u8]) -> Result<Accumulators, AggregateError> {
        unimplemented!()
    }

    /// Approximate heap bytes held by `acc` beyond its inline size (for the memory budget).
    pub fn heap_size(&self, _acc: &Accumulators) -> usize {
        unimplemented!()
    }
}
