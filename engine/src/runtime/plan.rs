//! Compiles a validated topology into what the tasks execute: field slots, record steps,
//! key extraction, type requirements and window operator specs.

use std::sync::Arc;

use compact_str::CompactString;

use crate::aggregate::{Aggregates, CompiledAggregate};
use crate::event::{EventRecord, FieldSlots, Key, Record, ResultSchema, Value};
use crate::expr::{ExprError, RecordExpr, ResultPredicate};
use crate::topology::{AggregateFunction, EmitMode, PipelineSpec, StepSpec, Topology};
use crate::window::WindowOperatorSpec;

/// A record-level step, compiled.
pub(crate) enum Step {
    /// Keep records for which the expression is true.
    Filter(RecordExpr),
    /// Set `slot` to the expression's value.
    Compute { slot: usize, expr: RecordExpr },
}

/// What a field must hold for a record to be processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requirement {
    /// Present and not null (key fields).
    Present,
    /// Numeric when present (inputs of numeric aggregates).
    NumericOrNull,
}

/// A pipeline compiled for execution.
pub(crate) struct PipelinePlan {
    pub name: String,
    pub slots: Arc<FieldSlots>,
    pub steps: Vec<Step>,
    pub key_slots: Vec<usize>,
    requirements: Vec<(usize, Requirement)>,
    /// The window operator; `None` for a windowless pipeline, which emits events instead.
    pub operator: Option<WindowOperatorSpec>,
    /// A windowless pipeline's `select` fields with their slots.
    pub select: Vec<(CompactString, usize)>,
    pub sinks: Vec<String>,
    pub late_output: Option<String>,
}

/// Why a record is rejected by a pipeline's steps or requirements.
pub(crate) enum Rejection {
    /// Filtered out: not an error.
    Filtered,
    /// Goes to the dead-letter output with this reason.
    Invalid(String),
}

impl PipelinePlan {
    /// Compiles pipeline `name` of `topology` for a worker with `shards` shards and a share of
    /// the memory budget. `slots` is shared by every pipeline of the same source (records are
    /// decoded once for all of them); call [`PipelinePlan::set_slots`] once all are compiled.
    pub fn compile(
        topology: &Topology,
        name: &str,
        spec: &PipelineSpec,
        slots: &mut FieldSlots,
        shards: u32,
        memory_budget_bytes: usize,
    ) -> Result<PipelinePlan, ExprError> {
        let key_slots: Vec<usize> = spec.key_by.iter().map(|f| slots.slot(f)).collect();
        let mut requirements: Vec<(usize, Requirement)> = key_slots
            .iter()
            .map(|&s| (s, Requirement::Present))
            .collect();

        // Compute outputs get slots before the expressions so an aggregate over a computed field
        // reads the computed value; expression inputs are collected from every step.
        let mut steps = Vec::with_capacity(spec.steps.len());
        for step in &spec.steps {
            match step {
                StepSpec::Filter(src) => {
                    let expr = RecordExpr::compile(src)?;
                    for f in expr.referenced_fields() {
                        slots.slot(&f);
                    }
                    steps.push(Step::Filter(expr));
                }
                StepSpec::Compute(c) => {
                    let expr = RecordExpr::compile(&c.expr)?;
                    for f in expr.referenced_fields() {
                        slots.slot(&f);
                    }
                    let slot = slots.slot(&c.name);
                    steps.push(Step::Compute { slot, expr });
                }
            }
        }

        let mut aggregates = Vec::with_capacity(spec.aggregates.len());
        for agg in &spec.aggregates {
            let slot = agg.field.as_deref().map(|f| slots.slot(f));
            if let (Some(s), true) = (
                slot,
                matches!(
                    agg.function,
                    AggregateFunction::Sum | AggregateFunction::Avg | AggregateFunction::Percentile
                ),
            ) {
                requirements.push((s, Requirement::NumericOrNull));
            }
            aggregates.push(CompiledAggregate {
                name: agg.name.as_str().into(),
                function: agg.function,
                slot,
                q: agg.q.unwrap_or(0.5),
                n: agg.n.unwrap_or(10),
            });
        }
        requirements.sort_unstable_by_key(|r| r.0);
        requirements.dedup();

        let schema = Arc::new(ResultSchema {
            pipeline: name.into(),
            key_fields: spec.key_by.iter().map(|k| k.as_str().into()).collect(),
            aggregate_names: spec
                .aggregates
                .iter()
                .map(|a| a.name.as_str().into())
                .collect(),
        });
        let having = match &spec.having {
            Some(src) => Some(Arc::new(ResultPredicate::compile(src)?)),
            None => None,
        };
        let select = spec
            .select
            .iter()
            .map(|f| (CompactString::from(f.as_str()), slots.slot(f)))
            .collect();
        let slots = Arc::new(slots.clone());
        let operator = spec.window.as_ref().map(|window| WindowOperatorSpec {
            operator_id: format!("{}/{}", topology.name, name).into(),
            schema,
            slots: slots.clone(),
            window: window.clone(),
            aggregates: Aggregates::new(aggregates),
            emit: spec.emit.mode,
            emit_every_ms: match spec.emit.mode {
                EmitMode::OnClose => None,
                _ => spec.emit.every.map(|d| d.as_millis_i64()),
            },
            having,
            late_output: spec.late_output.is_some(),
            shard: 0,
            shards,
            memory_budget_bytes,
        });
        Ok(PipelinePlan {
            name: name.to_string(),
            slots,
            steps,
            key_slots,
            requirements,
            operator,
            select,
            sinks: spec.sinks.clone(),
            late_output: spec.late_output.clone(),
        })
    }

    /// Sets the final slots of the pipeline's source.
    pub fn set_slots(&mut self, slots: Arc<FieldSlots>) {
        for step in self.steps.iter_mut() {
            match step {
                Step::Filter(expr) | Step::Compute { expr, .. } => expr.bind(&slots),
            }
        }
        if let Some(op) = self.operator.as_mut() {
            op.slots = slots.clone();
        }
        self.slots = slots;
    }

    /// A windowless pipeline's output for `record` (after [`PipelinePlan::check`]).
    pub fn event(&self, record: &Record) -> EventRecord {
        EventRecord {
            pipeline: self.name.as_str().into(),
            time: record.time,
            fields: self
                .select
                .iter()
                .map(|(name, slot)| {
                    let v = record.fields.get(*slot).cloned().unwrap_or(Value::Null);
                    (name.clone(), v)
                })
                .collect(),
        }
    }

    /// The hash of `record`'s key (after [`PipelinePlan::check`]): [`Key::stable_hash`] of
    /// the key [`PipelinePlan::set_key`] writes.
    pub fn key_hash(&self, record: &Record) -> u64 {
        Key::stable_hash_of(self.key_values(record))
    }

    /// Makes `key` `record`'s key (after [`PipelinePlan::check`]), reusing its room.
    pub fn set_key(&self, record: &Record, key: &mut Key) {
        key.set_values(self.key_values(record));
    }

    /// The `key_by` values of `record`, in order.
    fn key_values<'r>(&'r self, record: &'r Record) -> impl Iterator<Item = &'r Value> + 'r {
        self.key_slots
            .iter()
            .map(|&s| record.fields.get(s).unwrap_or(&Value::Null))
    }

    /// Runs the steps (filters, computed fields) and the required-field checks on `record`.
    pub fn check(&self, record: &mut Record) -> Result<(), Rejection> {
        // Decoders size `fields` to the slots they know; computed slots may be beyond that.
        if record.fields.len() < self.slots.len() {
            record.fields.resize(self.slots.len(), Value::Null);
        }
        for step in &self.steps {
            match step {
                Step::Filter(expr) => match expr.eval_bool(&self.slots, record) {
                    Ok(true) => {}
                    Ok(false) => return Err(Rejection::Filtered),
                    Err(e) => return Err(Rejection::Invalid(format!("filter failed: {e}"))),
                },
                Step::Compute { slot, expr } => match expr.eval(&self.slots, record) {
                    Ok(v) => {
                        if let Some(f) = record.fields.get_mut(*slot) {
                            *f = v;
                        }
                    }
                    Err(e) => {
                        let name = self.slots.names().get(*slot).map(|n| n.as_str());
                        return Err(Rejection::Invalid(format!(
                            "computing field `{}` failed: {e}",
                            name.unwrap_or("?")
                        )));
                    }
                },
            }
        }
        for &(slot, req) in &self.requirements {
            let value = record.fields.get(slot).unwrap_or(&Value::Null);
            let ok = match req {
                Requirement::Present => !matches!(value, Value::Null),
                Requirement::NumericOrNull => {
                    matches!(value, Value::Null | Value::Int(_) | Value::Float(_))
                }
            };
            if !ok {
                let name = self
                    .slots
                    .names()
                    .get(slot)
                    .map(|n| n.as_str())
                    .unwrap_or("?");
                return Err(Rejection::Invalid(match req {
                    Requirement::Present => format!("missing key field `{name}`"),
                    Requirement::NumericOrNull => {
                        format!("field `{name}` must be a number, got {value:?}")
                    }
                }));
            }
        }
        Ok(())
    }
}
