//! Key and member patterns: text with `{name}` placeholders, filled from each output.

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer};
use weir_engine::event::{Output, Value, WindowResult};

/// A pattern such as `feed:user:{user_id}`. `{name}` is replaced by the output's value of
/// `name` (see [`Vars`]); `{{` and `}}` are literal braces, so `feed:{{{user_id}}}` renders as
/// `feed:{42}`, a Redis Cluster hash tag.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Name(String),
}

impl Pattern {
    /// Parses `text`; the error says what is wrong and how to write a literal brace.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => {
                                return Err(format!(
                                    "unclosed `{{` in pattern `{text}`; write `{{{{` for a literal brace"
                                ))
                            }
                            Some(c) => name.push(c),
                        }
                    }
                    if name.is_empty() {
                        return Err(format!(
                            "empty placeholder `{{}}` in pattern `{text}`; write `{{{{}}}}` for literal braces"
                        ));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Name(name));
                }
                '}' => {
                    return Err(format!(
                        "unmatched `}}` in pattern `{text}`; write `}}}}` for a literal brace"
                    ))
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        if parts.is_empty() {
            return Err("empty pattern".to_string());
        }
        Ok(Pattern {
            text: text.to_string(),
            parts,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The placeholder names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Name(n) => Some(n.as_str()),
            Part::Text(_) => None,
        })
    }

    /// The pattern filled from `vars`, or the first placeholder name `vars` has no value for.
    pub fn render(&self, vars: &Vars<'_>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Name(n) => match vars.get(n) {
                    Some(v) => out.push_str(&v),
                    None => return Err(n.clone()),
                },
            }
        }
        Ok(out)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.text)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Pattern::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Pattern {
    fn schema_name() -> Cow<'static, str> {
        "RedisPattern".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "description": "Text with `{name}` placeholders filled from each output: result key fields, aggregates, `pipeline`, `window_start`, `window_end`; or event fields, `pipeline`, `event_time`. `{{` and `}}` are literal braces (Redis hash tags: `feed:{{{user_id}}}`)."
        })
    }
}

/// The values an output offers to patterns, rendered as text.
///
/// - window result: its key fields, its aggregates, `pipeline`, `window_start`,
///   `window_end` (epoch ms);
/// - event: its fields, `pipeline`, `event_time` (epoch ms);
/// - late event or dead letter: the members of its JSON form ([`Output::to_json`]).
///
/// Strings are used as they are, numbers and booleans in their JSON form, arrays and objects
/// as compact JSON; `null` (or an absent field) counts as missing.
pub enum Vars<'a> {
    /// A window result, with its decoded key values.
    Result(&'a WindowResult, Vec<Value>),
    /// An event of a windowless pipeline.
    Event(&'a weir_engine::event::EventRecord),
    /// Any other output, by its JSON members.
    Json(serde_json::Map<String, serde_json::Value>),
}

impl<'a> Vars<'a> {
    /// The values `output` offers.
    pub fn of(output: &'a Output) -> Vars<'a> {
        match output {
            Output::Result(r) => Vars::Result(r, r.key.values().unwrap_or_default()),
            Output::Event(e) => Vars::Event(e),
            other => match other.to_json() {
                serde_json::Value::Object(map) => Vars::Json(map),
                _ => Vars::Json(serde_json::Map::new()),
            },
        }
    }

    /// The text of `name`, if the output has a non-null value for it.
    pub fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        match self {
            Vars::Result(r, key_values) => {
                if let Some(i) = r.schema.key_fields.iter().position(|f| f == name) {
                    return key_values.get(i).and_then(value_text);
                }
                if let Some(i) = r.schema.aggregate_names.iter().position(|a| a == name) {
                    return r.aggregates.get(i).and_then(json_text);
                }
                match name {
                    "pipeline" => Some(Cow::Borrowed(r.schema.pipeline.as_str())),
                    "window_start" => Some(Cow::Owned(r.window_start.to_string())),
                    "window_end" => Some(Cow::Owned(r.window_end.to_string())),
                    _ => None,
                }
            }
            Vars::Event(e) => match e.field(name) {
                Some(v) => value_text(v),
                None => match name {
                    "pipeline" => Some(Cow::Borrowed(e.pipeline.as_str())),
                    "event_time" => Some(Cow::Owned(e.time.to_string())),
                    _ => None,
                },
            },
            Vars::Json(map) => map.get(name).and_then(json_text),
        }
    }
}

fn value_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::Null => None,
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Value::Int(i) => Some(Cow::Owned(i.to_string())),
        Value::Float(f) => Some(Cow::Owned(f.to_string())),
        Value::Str(s) => Some(Cow::Borrowed(s.as_str())),
    }
}

/// A JSON value as text: strings bare, `null` missing, anything else in its JSON form.
pub fn json_text(v: &serde_json::Value) -> Option<Cow<'_, str>> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(Cow::Borrowed(s.as_str())),
        other => Some(Cow::Owned(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use weir_engine::event::{EventRecord, Key, ResultSchema};

    use super::*;

    fn result() -> Output {
        let key_values = [Value::Str("shoes".into()), Value::Int(7)];
        Output::Result(WindowResult {
            schema: Arc::new(ResultSchema {
                pipeline: "views".into(),
                key_fields: vec!["product".into(), "shop".into()],
                aggregate_names: vec!["n".into(), "avg".into(), "none".into()],
            }),
            key: Key::from_values(key_values.iter()),
            window_start: 60_000,
            window_end: 120_000,
            aggregates: vec![5.into(), 2.5.into(), serde_json::Value::Null],
            is_final: true,
        })
    }

    fn render(pattern: &str, output: &Output) -> Result<String, String> {
        Pattern::parse(pattern).unwrap().render(&Vars::of(output))
    }

    #[test]
    fn results_offer_key_fields_aggregates_and_window() {
        let out = result();
        assert_eq!(
            render("views:{product}:{shop}:{window_start}", &out).unwrap(),
            "views:shoes:7:60000"
        );
        assert_eq!(
            render("{pipeline}/{window_end}/{n}/{avg}", &out).unwrap(),
            "views/120000/5/2.5"
        );
        assert_eq!(render("x:{none}", &out), Err("none".to_string()));
        assert_eq!(render("x:{nope}", &out), Err("nope".to_string()));
    }

    #[test]
    fn events_offer_fields_pipeline_and_time() {
        let out = Output::Event(EventRecord {
            pipeline: "activity".into(),
            time: 1234,
            fields: vec![
                ("user_id".into(), Value::Int(42)),
                ("event_id".into(), Value::Str("e-1".into())),
                ("gone".into(), Value::Null),
                ("ok".into(), Value::Bool(true)),
            ],
        });
        assert_eq!(render("feed:user:{user_id}", &out).unwrap(), "feed:user:42");
        assert_eq!(
            render("{pipeline}:{event_id}:{event_time}:{ok}", &out).unwrap(),
            "activity:e-1:1234:true"
        );
        assert_eq!(render("{gone}", &out), Err("gone".to_string()));
    }

    #[test]
    fn double_braces_are_literal() {
        let out = result();
        assert_eq!(
            render("top:{{{product}}}:{{x}}", &out).unwrap(),
            "top:{shoes}:{x}"
        );
        assert_eq!(render("{{}}", &out).unwrap(), "{}");
    }

    #[test]
    fn malformed_patterns_are_rejected() {
        for bad in ["a{b", "a}b", "{}", "", "{a{b}}", "x{"] {
            let err = Pattern::parse(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
        let p = Pattern::parse("a:{x}:{y}").unwrap();
        assert_eq!(p.names().collect::<Vec<_>>(), vec!["x", "y"]);
        assert_eq!(p.as_str(), "a:{x}:{y}");
    }

    #[test]
    fn dead_letters_offer_their_json_members() {
        let out = Output::DeadLetter(weir_engine::event::DeadLetter {
            source: "events".into(),
            partition: "p0".into(),
            offset: "17".into(),
            raw: b"{".to_vec(),
            error: "eof".into(),
        });
        assert_eq!(
            render("dlq:{source}:{partition}", &out).unwrap(),
            "dlq:events:p0"
        );
    }
}
