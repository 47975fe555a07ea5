//! Expressions (CEL). INTERFACE STUB — implemented by the topology work package.

use crate::event::{FieldSlots, Record, Value, WindowResult};

/// An expression error: at compile time (syntax) or evaluation time (types).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ExprError(pub String);

/// A CEL expression over a record's fields, compiled once per topology.
pub struct RecordExpr {
    _private: (),
}

impl RecordExpr {
    /// Compiles `source`.
    pub fn compile(_source: &str) -> Result<Self, ExprError> {
        unimplemented!()
    }
    /// Names of the record fields the expression reads.
    pub fn referenced_fields(&self) -> Vec<String> {
        unimplemented!()
    }
    /// Evaluates over `record`, whose fields are named by `slots`.
    pub fn eval(&self, _slots: &FieldSlots, _record: &Record) -> Result<Value, ExprError> {
        unimplemented!()
    }
    /// Evaluates as a filter: must yield a boolean.
    pub fn eval_bool(&self, _slots: &FieldSlots, _record: &Record) -> Result<bool, ExprError> {
        unimplemented!()
    }
}

/// A `having:` predicate over a window result, compiled once per topology.
pub struct ResultPredicate {
    _private: (),
}

impl ResultPredicate {
    /// Compiles `source`.
    pub fn compile(_source: &str) -> Result<Self, ExprError> {
        unimplemented!()
    }
    /// Evaluates over a result (key fields, aggregates, window_start, window_end).
    pub fn eval(&self, _result: &WindowResult) -> Result<bool, ExprError> {
        unimplemented!()
    }
}
