//! Conversions between Weir's values and CEL's.

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::types::{CelBool, CelDouble, CelInt, CelNull, CelString, CelUInt};
use cel::common::value::{CowVal, Val};

use super::ExprError;
use crate::event::Value;

/// A record field as a CEL value; strings are borrowed, not copied.
pub(super) fn field_to_cel(value: &Value) -> CowVal<'_, '_> {
    match value {
        Value::Null => CowVal::owned(CelNull),
        Value::Bool(b) => CowVal::owned(CelBool::from(*b)),
        Value::Int(i) => CowVal::owned(CelInt::from(*i)),
        Value::Float(f) => CowVal::owned(CelDouble::from(*f)),
        Value::Str(s) => CowVal::owned(CelString::from(s.as_str())),
    }
}

/// A JSON value (an aggregate) as a CEL value.
pub(super) fn json_to_cel(value: &serde_json::Value) -> CowVal<'_, '_> {
    match value {
        serde_json::Value::Null => CowVal::owned(CelNull),
        serde_json::Value::Bool(b) => CowVal::owned(CelBool::from(*b)),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                CowVal::owned(CelInt::from(i))
            } else if let Some(u) = n.as_u64() {
                CowVal::owned(CelUInt::from(u))
            } else {
                CowVal::owned(CelDouble::from(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        serde_json::Value::String(s) => CowVal::owned(CelString::from(s.as_str())),
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
            let boxed: Result<Box<dyn Val>, _> = json_to_value(value).try_into();
            match boxed {
                Ok(b) => CowVal::Owned(b),
                Err(_) => CowVal::owned(CelNull),
            }
        }
    }
}

fn json_to_value(value: &serde_json::Value) -> cel::Value {
    match value {
        serde_json::Value::Null => cel::Value::Null,
        serde_json::Value::Bool(b) => cel::Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                cel::Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                cel::Value::UInt(u)
            } else {
                cel::Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(items) => {
            cel::Value::List(Arc::new(items.iter().map(json_to_value).collect()))
        }
        serde_json::Value::Object(map) => {
            let entries: HashMap<String, cel::Value> = map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect();
            cel::Value::from(entries)
        }
    }
}

/// A CEL result as a record field value.
pub(super) fn to_field_value(value: cel::Value) -> Result<Value, ExprError> {
    match value {
        cel::Value::Null => Ok(Value::Null),
        cel::Value::Bool(b) => Ok(Value::Bool(b)),
        cel::Value::Int(i) => Ok(Value::Int(i)),
        cel::Value::UInt(u) => i64::try_from(u).map(Value::Int).map_err(|_| {
            ExprError(format!(
                "result {u}u is too large for a 64-bit signed integer"
            ))
        }),
        cel::Value::Float(f) => Ok(Value::Float(f)),
        cel::Value::String(s) => Ok(Value::Str(s.as_str().into())),
        other => Err(ExprError(format!(
            "expected an int, uint, double, string, bool or null result, got {} {}",
            other.type_of(),
            describe(&other)
        ))),
    }
}

/// A short rendering of a value for error messages.
pub(super) fn describe(value: &cel::Value) -> String {
    let text = format!("{value:?}");
    const MAX: usize = 80;
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}
