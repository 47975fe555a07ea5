//! Expressions in [CEL](https://cel.dev): record filters and computed fields (`steps:`), and
//! `having:` predicates over window results.
//!
//! An expression is parsed once, when the topology is loaded; evaluation binds the fields the
//! expression names straight from the record, without building a map of all fields.
//!
//! Available beyond the CEL standard library (`size`, `contains`, `startsWith`, `endsWith`,
//! `int()`, `double()`, `string()`, comprehension macros such as `exists` and `map`): the
//! `strings` extension (`lowerAscii`, `upperAscii`, `replace`, `split`, `substring`, `trim`,
//! `indexOf`, `join`, ...), the `math` extension (`math.greatest`, `math.least`, `math.abs`,
//! `math.round`, ...) and the `lists` extension.

mod convert;
mod idents;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use cel::common::types::CelInt;
use cel::common::value::CowVal;
use cel::context::VariableResolver;
use cel::{Context, Env, Program};

use crate::event::{FieldSlots, Record, Value, WindowResult};

/// An expression error: at compile time (syntax) or evaluation time (types).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ExprError(pub String);

/// The shared CEL environment: building it registers hundreds of overloads, so it is built once
/// per process and shared by every expression and evaluation.
fn environment() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        // The extensions only add overloads that the standard library does not declare, so
        // registering them cannot fail; were that to change, expressions would merely lack them.
        let _ = env.add_extension(cel::extensions::strings);
        let _ = env.add_extension(cel::extensions::math);
        let _ = env.add_extension(cel::extensions::lists);
        Arc::new(env)
    })
}

/// Parses `source` into a program and the names it reads.
fn compile_program(source: &str) -> Result<(Program, Vec<String>), ExprError> {
    if source.trim().is_empty() {
        return Err(ExprError("empty expression".into()));
    }
    // The parser is third-party code run on user input: a panic in it must become an error,
    // not take the process down.
    let parsed = catch_unwind(AssertUnwindSafe(|| environment().compile(source)))
        .map_err(|_| ExprError(format!("cannot parse expression `{source}`")))?;
    let program = parsed.map_err(|errors| {
        let parts: Vec<String> = errors
            .errors
            .iter()
            .map(|e| {
                let msg = e.msg.strip_prefix("Syntax error: ").unwrap_or(&e.msg);
                format!("{}:{}: {msg}", e.pos.0, e.pos.1)
            })
            .collect();
        ExprError(format!("syntax error at {}", parts.join("; ")))
    })?;
    let names = idents::free_identifiers(program.expression());
    Ok((program, names))
}

/// Runs `program` with `resolver` supplying its variables.
fn execute(program: &Program, resolver: &dyn VariableResolver) -> Result<cel::Value, ExprError> {
    let mut context = Context::with_env(Arc::clone(environment()));
    context.set_variable_resolver(resolver);
    match catch_unwind(AssertUnwindSafe(|| program.execute(&context))) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(ExprError(e.to_string())),
        Err(_) => Err(ExprError(
            "expression evaluation failed unexpectedly".into(),
        )),
    }
}

/// Bound for fields a record lacks.
static NULL: Value = Value::Null;

/// A CEL expression over a record's fields, compiled once per topology.
///
/// Field names are CEL identifiers: `amount > 100.0 && country == "DE"`. A field the record
/// lacks (or that is JSON `null`) is `null` in the expression.
pub struct RecordExpr {
    program: Program,
    fields: Vec<String>,
    /// Slot of each of `fields` in the [`FieldSlots`] given to [`RecordExpr::bind`].
    slots: Option<Vec<Option<usize>>>,
}

impl std::fmt::Debug for RecordExpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordExpr")
            .field("fields", &self.fields)
            .finish_non_exhaustive()
    }
}

impl RecordExpr {
    /// Compiles `source`.
    pub fn compile(source: &str) -> Result<Self, ExprError> {
        let (program, fields) = compile_program(source)?;
        Ok(RecordExpr {
            program,
            fields,
            slots: None,
        })
    }

    /// Names of the record fields the expression reads, in order of first use. Variables bound
    /// inside the expression (`xs.exists(x, x > 1)`) and type names (`int`) are not included.
    pub fn referenced_fields(&self) -> Vec<String> {
        self.fields.clone()
    }

    /// Looks up the slots of the referenced fields once, so that later evaluations with the
    /// same `slots` do not search them by name. Optional: evaluating with other slots than the
    /// bound ones still gives the right answer, only by name lookup.
    pub fn bind(&mut self, slots: &FieldSlots) {
        self.slots = Some(self.fields.iter().map(|f| slots.get(f)).collect());
    }

    /// The slot holding field number `i` of `self.fields` under `slots`.
    fn slot_of(&self, i: usize, slots: &FieldSlots) -> Option<usize> {
        let name = self.fields.get(i)?;
        if let Some(bound) = &self.slots {
            if let Some(Some(slot)) = bound.get(i) {
                if slots.names().get(*slot).is_some_and(|n| n == name) {
                    return Some(*slot);
                }
            }
        }
        slots.get(name)
    }

    /// Evaluates over `record`, whose fields are named by `slots`. The result must be an int,
    /// uint (that fits an int), double, string, bool or null.
    pub fn eval(&self, slots: &FieldSlots, record: &Record) -> Result<Value, ExprError> {
        let value = self.run(slots, record)?;
        convert::to_field_value(value)
    }

    /// Evaluates as a filter: must yield a boolean.
    pub fn eval_bool(&self, slots: &FieldSlots, record: &Record) -> Result<bool, ExprError> {
        match self.run(slots, record)? {
            cel::Value::Bool(b) => Ok(b),
            other => Err(ExprError(format!(
                "expected a bool, got {} {}",
                other.type_of(),
                convert::describe(&other)
            ))),
        }
    }

    fn run(&self, slots: &FieldSlots, record: &Record) -> Result<cel::Value, ExprError> {
        let vars = RecordVars {
            expr: self,
            slots,
            record,
        };
        execute(&self.program, &vars)
    }
}

/// Supplies a record's fields to an evaluation, by reference.
struct RecordVars<'a> {
    expr: &'a RecordExpr,
    slots: &'a FieldSlots,
    record: &'a Record,
}

impl VariableResolver for RecordVars<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let i = self.expr.fields.iter().position(|f| f == variable)?;
        let value = self
            .expr
            .slot_of(i, self.slots)
            .and_then(|slot| self.record.fields.get(slot))
            .unwrap_or(&NULL);
        Some(convert::field_to_cel(value))
    }
}

/// A `having:` predicate over a window result, compiled once per topology.
///
/// It sees the key fields and aggregates by name, `window_start` and `window_end` (epoch
/// milliseconds, ints) and `is_final`. Aggregates that are lists or objects (`top_n`) are CEL
/// lists and maps.
pub struct ResultPredicate {
    program: Program,
    names: Vec<String>,
}

impl std::fmt::Debug for ResultPredicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultPredicate")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl ResultPredicate {
    /// Compiles `source`.
    pub fn compile(source: &str) -> Result<Self, ExprError> {
        let (program, names) = compile_program(source)?;
        Ok(ResultPredicate { program, names })
    }

    /// Names the predicate reads: key fields, aggregate names, `window_start`, `window_end`,
    /// `is_final` (used by validation to catch misspelled names).
    pub fn referenced_names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// Evaluates over a result (key fields, aggregates, window_start, window_end).
    pub fn eval(&self, result: &WindowResult) -> Result<bool, ExprError> {
        let key_values = result
            .key
            .values()
            .ok_or_else(|| ExprError("the result's key cannot be decoded".into()))?;
        let vars = ResultVars {
            result,
            key_values: &key_values,
        };
        match execute(&self.program, &vars)? {
            cel::Value::Bool(b) => Ok(b),
            other => Err(ExprError(format!(
                "`having` must yield a bool, got {} {}",
                other.type_of(),
                convert::describe(&other)
            ))),
        }
    }
}

/// Supplies a window result's fields to an evaluation.
struct ResultVars<'a> {
    result: &'a WindowResult,
    key_values: &'a [Value],
}

impl VariableResolver for ResultVars<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let schema = &self.result.schema;
        if let Some(i) = schema.key_fields.iter().position(|n| n == variable) {
            let value = self.key_values.get(i).unwrap_or(&NULL);
            return Some(convert::field_to_cel(value));
        }
        if let Some(i) = schema.aggregate_names.iter().position(|n| n == variable) {
            let value = self.result.aggregates.get(i)?;
            return Some(convert::json_to_cel(value));
        }
        match variable {
            "window_start" => Some(CowVal::owned(CelInt::from(self.result.window_start))),
            "window_end" => Some(CowVal::owned(CelInt::from(self.result.window_end))),
            "is_final" => Some(CowVal::owned(cel::common::types::CelBool::from(
                self.result.is_final,
            ))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
