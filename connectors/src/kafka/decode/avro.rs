//! Avro in the Confluent wire format: schema lookup (mapping file, schema registry), datum
//! decoding into slots, and the matching encoder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{Name, RecordSchema, ResolvedSchema};
use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use compact_str::CompactString;
use weir_engine::event::decode::parse_time;
use weir_engine::event::{Fields, Value};
use weir_engine::topology::TimeFormat;

/// The Confluent wire format's header: magic byte 0 and a 4-byte big-endian schema id.
const HEADER_LEN: usize = 5;
/// How long a registry that could not be reached is left alone before it is asked again.
const RETRY_UNREACHABLE: Duration = Duration::from_secs(5);
/// How long an id the registry does not know is remembered as unknown.
const RETRY_UNKNOWN: Duration = Duration::from_secs(60);
/// The longest a registry request may take: decoding runs inside a source poll, which must
/// return quickly.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(2);

/// The schema id of a Confluent-framed payload and the datum after the header.
fn split_header(payload: &[u8]) -> Result<(u32, &[u8]), String> {
    let (header, datum) = payload.split_first_chunk::<HEADER_LEN>().ok_or_else(|| {
        format!(
            "the payload has {} bytes, fewer than the 5-byte Confluent Avro header \
                 (magic byte 0 + schema id)",
            payload.len()
        )
    })?;
    let [magic, id @ ..] = *header;
    if magic != 0 {
        return Err(format!(
            "bad magic byte {magic} (a Confluent Avro payload starts with 0); is the topic \
             really Avro?"
        ));
    }
    Ok((u32::from_be_bytes(id), datum))
}

/// Reads a schema-id mapping file and returns each id with the path of its schema (relative
/// paths resolved against the mapping file's directory).
pub(super) fn load_mapping(path: &Path) -> Result<Vec<(u32, PathBuf)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let entries = parse_mapping(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let mut out = Vec::with_capacity(entries.len());
    for (id, file) in entries {
        let file = dir.join(file);
        // Parsed here too so that `validate` reports a broken schema file.
        read_schema(&file).map_err(|e| format!("schema id {id}: {e}"))?;
        out.push((id, file));
    }
    Ok(out)
}

fn read_schema(file: &Path) -> Result<Schema, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    Schema::parse_str(&text).map_err(|e| format!("{}: not an Avro schema: {e}", file.display()))
}

/// Parses the mapping text: a JSON object, a YAML flow mapping or a YAML block mapping of
/// schema ids to paths.
pub(super) fn parse_mapping(text: &str) -> Result<Vec<(u32, String)>, String> {
    let mut entries: Vec<(u32, String)> = Vec::new();
    let mut add = |key: &str, value: &str, line: usize| -> Result<(), String> {
        let key = unquote(key.trim())?;
        let id: u32 = key.parse().map_err(|_| {
            format!("line {line}: the key `{key}` is not a schema id (a non-negative integer)")
        })?;
        let value = unquote(value.trim())?;
        if value.is_empty() {
            return Err(format!("line {line}: schema id {id} has no file"));
        }
        if entries.iter().any(|(i, _)| *i == id) {
            return Err(format!("line {line}: schema id {id} appears twice"));
        }
        entries.push((id, value));
        Ok(())
    };
    let body = strip_comments(text);
    let trimmed = body.trim();
    if let Some(inner) = trimmed.strip_prefix('{') {
        if let Ok(map) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text) {
            for (key, value) in map {
                let file = value
                    .as_str()
                    .ok_or_else(|| format!("schema id `{key}`: the file must be a string"))?;
                add(&key, file, 1)?;
            }
            return Ok(entries);
        }
        let inner = inner
            .strip_suffix('}')
            .ok_or("a mapping that starts with `{` must end with `}`")?;
        for item in inner.split(',').filter(|s| !s.trim().is_empty()) {
            let (k, v) = item
                .split_once(':')
                .ok_or_else(|| format!("expected `<id>: <file>`, found `{}`", item.trim()))?;
            add(k, v, 1)?;
        }
        return Ok(entries);
    }
    for (n, line) in body.lines().enumerate() {
        let line_no = n + 1;
        let l = line.trim();
        if l.is_empty() || l == "---" {
            continue;
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| format!("line {line_no}: expected `<id>: <file>`, found `{l}`"))?;
        add(k, v, line_no)?;
    }
    if entries.is_empty() {
        return Err("the mapping is empty".into());
    }
    Ok(entries)
}

/// `text` without YAML comments (`#` at the start of a line or after a blank).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut end = line.len();
        let bytes = line.as_bytes();
        let mut quote: Option<u8> = None;
        for (i, &b) in bytes.iter().enumerate() {
            match quote {
                Some(q) if b == q => quote = None,
                Some(_) => {}
                None if b == b'"' || b == b'\'' => quote = Some(b),
                None if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) => {
                    end = i;
                    break;
                }
                None => {}
            }
        }
        out.push_str(line.get(..end).unwrap_or(line));
        out.push('\n');
    }
    out
}

/// A scalar without its quotes (`"…"` with JSON escapes, or `'…'`).
fn unquote(s: &str) -> Result<String, String> {
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        serde_json::from_str(s).map_err(|e| format!("bad quoted string {s}: {e}"))
    } else if s.len() >= 2 && s.starts_with('\'') && s.ends_with('\'') {
        Ok(s.get(1..s.len() - 1).unwrap_or("").replace("''", "'"))
    } else {
        Ok(s.to_owned())
    }
}

/// Checks a registry URL: plain `http://` with a host.
pub(super) fn check_registry_url(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        if url.starts_with("https://") {
            "https is not supported by this build's registry client; use an http:// URL (or \
             a mapping file in `schemas`)"
                .to_string()
        } else {
            format!("`{url}` is not an http:// URL")
        }
    })?;
    if rest.trim_end_matches('/').is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    Ok(())
}

/// A schema ready to decode with, and where the wanted fields are in its records.
struct Compiled {
    schema: Schema,
    /// Named types of the schema, to follow references while converting values.
    names: HashMap<Name, Schema>,
    /// `(slot, field index)` of each wanted field the record has.
    slots: Vec<(usize, usize)>,
    /// The time field's index, when the record has it.
    time: Option<usize>,
    /// Why messages with this schema cannot be decoded (not a record).
    unusable: Option<String>,
}

impl Compiled {
    fn new(
        id: u32,
        schema: Schema,
        wanted: &[(usize, CompactString)],
        time_field: Option<&str>,
    ) -> Self {
        let names = ResolvedSchema::try_from(&schema)
            .map(|r| {
                r.get_names()
                    .iter()
                    .map(|(n, s)| (n.clone(), (*s).clone()))
                    .collect()
            })
            .unwrap_or_default();
        let (slots, time, unusable) = match &schema {
            Schema::Record(RecordSchema { lookup, .. }) => (
                wanted
                    .iter()
                    .filter_map(|(slot, name)| lookup.get(name.as_str()).map(|i| (*slot, *i)))
                    .collect(),
                time_field.and_then(|f| lookup.get(f).copied()),
                None,
            ),
            other => (
                Vec::new(),
                None,
                Some(format!(
                    "schema id {id} is {}, not a record (the top-level value must be a record)",
                    kind(other)
                )),
            ),
        };
        Compiled {
            schema,
            names,
            slots,
            time,
            unusable,
        }
    }

    fn field_schema(&self, index: usize) -> Option<&Schema> {
        match &self.schema {
            Schema::Record(r) => r.fields.get(index).map(|f| &f.schema),
            _ => None,
        }
    }
}

/// A short name of a schema's type, for messages.
fn kind(schema: &Schema) -> String {
    let json = serde_json::to_value(schema).unwrap_or_default();
    match json.get("type") {
        Some(serde_json::Value::String(t)) => format!("a `{t}`"),
        _ => match json {
            serde_json::Value::String(t) => format!("a `{t}`"),
            serde_json::Value::Array(_) => "a union".into(),
            _ => "not a record".into(),
        },
    }
}

/// What the registry said about an id that could not be used.
struct Failure {
    at: Instant,
    retry_after: Duration,
    message: String,
}

/// A schema registry client (plain HTTP).
struct Registry {
    base: String,
    agent: ureq::Agent,
}

impl Registry {
    fn new(url: &str) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(REGISTRY_TIMEOUT))
            .http_status_as_error(false)
            .build();
        Registry {
            base: url.trim_end_matches('/').to_owned(),
            agent: ureq::Agent::new_with_config(config),
        }
    }

    /// The schema text of `id`; `Err((message, retry_after))` on failure.
    fn fetch(&self, id: u32) -> Result<String, (String, Duration)> {
        let url = format!("{}/schemas/ids/{id}", self.base);
        let unreachable = |e: String| (format!("schema registry {url}: {e}"), RETRY_UNREACHABLE);
        let mut reply = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| unreachable(e.to_string()))?;
        let status = reply.status().as_u16();
        let body = reply
            .body_mut()
            .read_to_string()
            .map_err(|e| unreachable(e.to_string()))?;
        if status == 404 {
            return Err((
                format!(
                    "schema id {id} is unknown to the schema registry at {}",
                    self.base
                ),
                RETRY_UNKNOWN,
            ));
        }
        if status != 200 {
            let text: String = body.chars().take(200).collect();
            return Err(unreachable(format!("HTTP {status}: {text}")));
        }
        let json: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| unreachable(format!("the reply is not JSON: {e}")))?;
        if let Some(t) = json.get("schemaType").and_then(|t| t.as_str()) {
            if t != "AVRO" {
                return Err((
                    format!("schema id {id} is a {t} schema, not Avro"),
                    RETRY_UNKNOWN,
                ));
            }
        }
        json.get("schema")
            .and_then(|s| s.as_str())
            .map(str::to_owned)
            .ok_or_else(|| unreachable("the reply has no `schema` string".into()))
    }
}

/// Decodes Confluent-framed Avro payloads into the slots of one pipeline.
pub(super) struct AvroPayloadDecoder {
    /// Schemas ready to use, by id.
    compiled: HashMap<u32, Compiled>,
    registry: Option<Registry>,
    /// Ids that failed recently (registry only).
    failures: HashMap<u32, Failure>,
    /// `(slot, field name)` of the payload fields the pipeline wants.
    wanted: Vec<(usize, CompactString)>,
    /// The event-time field, when it is a payload field.
    time_field: Option<CompactString>,
}

impl AvroPayloadDecoder {
    /// Loads the mapping file of `config` (errors start with `prefix`, e.g.
    /// `sources.events.avro`).
    pub(super) fn new(
        config: &super::AvroConfig,
        prefix: &str,
        wanted: Vec<(usize, CompactString)>,
        time_field: Option<CompactString>,
    ) -> Result<Self, String> {
        if config.schemas.is_none() && config.registry.is_none() {
            return Err(format!(
                "{prefix}: set `schemas` (a file mapping schema ids to .avsc files) or \
                 `registry` (a schema-registry URL)"
            ));
        }
        let mut compiled = HashMap::new();
        if let Some(path) = &config.schemas {
            for (id, file) in load_mapping(path).map_err(|e| format!("{prefix}.schemas: {e}"))? {
                let schema = read_schema(&file)
                    .map_err(|e| format!("{prefix}.schemas: schema id {id}: {e}"))?;
                compiled.insert(
                    id,
                    Compiled::new(id, schema, &wanted, time_field.as_deref()),
                );
            }
        }
        let registry = match &config.registry {
            Some(url) => {
                check_registry_url(url).map_err(|e| format!("{prefix}.registry: {e}"))?;
                Some(Registry::new(url))
            }
            None => None,
        };
        Ok(AvroPayloadDecoder {
            compiled,
            registry,
            failures: HashMap::new(),
            wanted,
            time_field,
        })
    }

    /// The compiled schema of `id`, fetching it from the registry the first time.
    fn schema(&mut self, id: u32) -> Result<&Compiled, String> {
        if !self.compiled.contains_key(&id) {
            let Some(registry) = &self.registry else {
                return Err(format!(
                    "schema id {id} is not in the schema mapping file (and no registry is set)"
                ));
            };
            if let Some(f) = self.failures.get(&id) {
                if f.at.elapsed() < f.retry_after {
                    return Err(f.message.clone());
                }
            }
            let parsed = registry.fetch(id).and_then(|text| {
                Schema::parse_str(&text).map_err(|e| {
                    (
                        format!("schema id {id} from the registry is not a valid Avro schema: {e}"),
                        RETRY_UNKNOWN,
                    )
                })
            });
            match parsed {
                Ok(schema) => {
                    self.failures.remove(&id);
                    let c = Compiled::new(id, schema, &self.wanted, self.time_field.as_deref());
                    self.compiled.insert(id, c);
                }
                Err((message, retry_after)) => {
                    self.failures.insert(
                        id,
                        Failure {
                            at: Instant::now(),
                            retry_after,
                            message: message.clone(),
                        },
                    );
                    return Err(message);
                }
            }
        }
        self.compiled
            .get(&id)
            .ok_or_else(|| format!("schema id {id} is unknown"))
    }

    /// Decodes `payload` into `fields` (wanted slots only) and returns the value of the
    /// event-time field (`None` when the time is not a payload field or the record has no such
    /// field).
    pub(super) fn decode(
        &mut self,
        payload: &[u8],
        fields: &mut Fields,
    ) -> Result<Option<Value>, String> {
        let (id, mut datum) = split_header(payload)?;
        let c = self.schema(id)?;
        if let Some(why) = &c.unusable {
            return Err(why.clone());
        }
        let reader = GenericDatumReader::builder(&c.schema)
            .build()
            .map_err(|e| format!("schema id {id}: {e}"))?;
        let value = reader
            .read_value(&mut datum)
            .map_err(|e| format!("the Avro datum does not match schema id {id}: {e}"))?;
        if !datum.is_empty() {
            return Err(format!(
                "{} bytes left after the Avro datum of schema id {id} (wrong schema?)",
                datum.len()
            ));
        }
        let Avro::Record(mut record) = value else {
            return Err(format!("schema id {id}: the datum is not a record"));
        };
        let mut time = None;
        for &(slot, index) in &c.slots {
            let Some((_, v)) = record.get_mut(index) else {
                continue;
            };
            let v = std::mem::replace(v, Avro::Null);
            if let Some(f) = fields.get_mut(slot) {
                *f = to_value(v, c.field_schema(index), &c.names);
                if Some(index) == c.time {
                    time = Some(f.clone());
                }
            }
        }
        if let (Some(index), None) = (c.time, &time) {
            if let Some((_, v)) = record.get_mut(index) {
                let v = std::mem::replace(v, Avro::Null);
                time = Some(to_value(v, c.field_schema(index), &c.names));
            }
        }
        Ok(time)
    }
}

/// `schema` with a reference replaced by the named type it refers to.
fn resolve<'a>(schema: Option<&'a Schema>, names: &'a HashMap<Name, Schema>) -> Option<&'a Schema> {
    match schema {
        Some(Schema::Ref { name }) => names.get(name),
        other => other,
    }
}

/// The schema of branch `index` of a union schema.
fn branch<'a>(
    schema: Option<&'a Schema>,
    index: u32,
    names: &'a HashMap<Name, Schema>,
) -> Option<&'a Schema> {
    match resolve(schema, names) {
        Some(Schema::Union(u)) => resolve(u.variants().get(index as usize), names),
        _ => None,
    }
}

/// An Avro value as a field value (see the module documentation of `decode` for the rules).
fn to_value(v: Avro, schema: Option<&Schema>, names: &HashMap<Name, Schema>) -> Value {
    match v {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Bool(b),
        Avro::Int(i) | Avro::Date(i) | Avro::TimeMillis(i) => Value::Int(i64::from(i)),
        Avro::Long(i)
        | Avro::TimeMicros(i)
        | Avro::TimestampMillis(i)
        | Avro::TimestampMicros(i)
        | Avro::TimestampNanos(i)
        | Avro::LocalTimestampMillis(i)
        | Avro::LocalTimestampMicros(i)
        | Avro::LocalTimestampNanos(i) => Value::Int(i),
        Avro::Float(f) => Value::Float(f64::from(f)),
        Avro::Double(f) => Value::Float(f),
        Avro::Bytes(b) | Avro::Fixed(_, b) => Value::Str(CompactString::from_utf8_lossy(&b)),
        Avro::String(s) | Avro::Enum(_, s) => Value::Str(s.into()),
        Avro::Uuid(u) => Value::Str(u.hyphenated().to_string().into()),
        Avro::Union(i, inner) => to_value(*inner, branch(schema, i, names), names),
        Avro::Decimal(d) => decimal(&d, scale(schema, names)),
        Avro::BigDecimal(d) => Value::Str(d.to_string().into()),
        v @ (Avro::Array(_) | Avro::Map(_) | Avro::Record(_) | Avro::Duration(_)) => {
            let json = to_json(v, schema, names);
            Value::Str(serde_json::to_string(&json).unwrap_or_default().into())
        }
    }
}

fn scale(schema: Option<&Schema>, names: &HashMap<Name, Schema>) -> usize {
    match resolve(schema, names) {
        Some(Schema::Decimal(d)) => d.scale,
        _ => 0,
    }
}

/// A decimal as exact text when its unscaled value fits 128 bits, else an approximate float.
pub(super) fn decimal(d: &apache_avro::Decimal, scale: usize) -> Value {
    let bytes: Vec<u8> = <Vec<u8>>::try_from(d).unwrap_or_default();
    if bytes.len() <= 16 {
        let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
        let mut word = [if negative { 0xff } else { 0 }; 16];
        if let Some(tail) = word.get_mut(16 - bytes.len()..) {
            tail.copy_from_slice(&bytes);
        }
        let unscaled = i128::from_be_bytes(word);
        let digits = unscaled.unsigned_abs().to_string();
        let sign = if negative { "-" } else { "" };
        let text = if scale == 0 {
            format!("{sign}{digits}")
        } else if digits.len() > scale {
            let (int, frac) = digits.split_at(digits.len() - scale);
            format!("{sign}{int}.{frac}")
        } else {
            format!("{sign}0.{}{digits}", "0".repeat(scale - digits.len()))
        };
        return Value::Str(text.into());
    }
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut x = 0f64;
    for b in &bytes {
        let b = if negative { !b } else { *b };
        x = x * 256.0 + f64::from(b);
    }
    if negative {
        x = -(x + 1.0);
    }
    Value::Float(x / 10f64.powi(i32::try_from(scale).unwrap_or(i32::MAX)))
}

/// An Avro value as JSON: bytes as lossy text, decimals as text, non-finite floats as null,
/// map keys sorted.
fn to_json(v: Avro, schema: Option<&Schema>, names: &HashMap<Name, Schema>) -> serde_json::Value {
    use serde_json::Value as J;
    let schema = resolve(schema, names);
    match v {
        Avro::Array(items) => {
            let item_schema = match schema {
                Some(Schema::Array(a)) => Some(&*a.items),
                _ => None,
            };
            J::Array(
                items
                    .into_iter()
                    .map(|i| to_json(i, item_schema, names))
                    .collect(),
            )
        }
        Avro::Map(map) => {
            let value_schema = match schema {
                Some(Schema::Map(m)) => Some(&*m.types),
                _ => None,
            };
            let mut entries: Vec<(String, Avro)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            J::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, to_json(v, value_schema, names)))
                    .collect(),
            )
        }
        Avro::Record(fields) => {
            let field_schemas = match schema {
                Some(Schema::Record(r)) => Some(&r.fields),
                _ => None,
            };
            J::Object(
                fields
                    .into_iter()
                    .enumerate()
                    .map(|(i, (k, v))| {
                        let s = field_schemas.and_then(|f| f.get(i)).map(|f| &f.schema);
                        (k, to_json(v, s, names))
                    })
                    .collect(),
            )
        }
        Avro::Duration(d) => serde_json::json!({
            "months": u32::from(d.months()),
            "days": u32::from(d.days()),
            "millis": u32::from(d.millis()),
        }),
        Avro::Union(i, inner) => to_json(*inner, branch(schema, i, names), names),
        scalar => to_value(scalar, schema, names).to_json(),
    }
}

/// Encodes records as Confluent-framed Avro with one schema (magic byte 0, the schema id,
/// the datum): the producing side of what [`MessageDecoder`](super::MessageDecoder) reads.
#[derive(Debug)]
pub struct AvroEncoder {
    id: u32,
    schema: Schema,
    names: HashMap<Name, Schema>,
}

impl AvroEncoder {
    /// The encoder of schema `id` in a mapping file (see
    /// [`AvroConfig::schemas`](super::AvroConfig::schemas)). Fails when the file cannot be
    /// read, has no such id, or the schema is not a record.
    pub fn from_mapping(mapping: &Path, id: u32) -> Result<Self, String> {
        let file = load_mapping(mapping)?
            .into_iter()
            .find(|(i, _)| *i == id)
            .map(|(_, f)| f)
            .ok_or_else(|| format!("{}: has no schema id {id}", mapping.display()))?;
        Self::new(id, read_schema(&file)?)
    }

    /// The encoder of schema `id` given as Avro schema JSON. Fails when it is not a valid
    /// record schema.
    pub fn from_schema_json(id: u32, json: &str) -> Result<Self, String> {
        Self::new(
            id,
            Schema::parse_str(json).map_err(|e| format!("not an Avro schema: {e}"))?,
        )
    }

    fn new(id: u32, schema: Schema) -> Result<Self, String> {
        if !matches!(schema, Schema::Record(_)) {
            return Err(format!("schema id {id} is {}, not a record", kind(&schema)));
        }
        let names = ResolvedSchema::try_from(&schema)
            .map_err(|e| format!("schema id {id}: {e}"))?
            .get_names()
            .iter()
            .map(|(n, s)| (n.clone(), (*s).clone()))
            .collect();
        Ok(AvroEncoder { id, schema, names })
    }

    /// The names of the record's fields, in schema order.
    pub fn field_names(&self) -> Vec<&str> {
        match &self.schema {
            Schema::Record(r) => r.fields.iter().map(|f| f.name.as_str()).collect(),
            _ => Vec::new(),
        }
    }

    /// Appends one framed record to `out`, taking each field's value from `field(name)`
    /// (`None` is null). Values are converted to the field's type: integers to any numeric
    /// or integer logical type, strings to `string`/`bytes`/`enum` (a symbol)/`uuid`, and
    /// timestamps given as text (RFC 3339 or epoch numbers) to `timestamp-millis`/`-micros`;
    /// a union takes its first branch that fits. On error `out` is left as it was.
    pub fn encode<'v>(
        &self,
        field: impl Fn(&str) -> Option<&'v Value>,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let Schema::Record(r) = &self.schema else {
            return Err(format!("schema id {} is not a record", self.id));
        };
        let mut values = Vec::with_capacity(r.fields.len());
        for f in &r.fields {
            let v = field(&f.name).unwrap_or(&Value::Null);
            let a = to_avro(v, &f.schema, &self.names)
                .map_err(|e| format!("field `{}`: {e}", f.name))?;
            values.push((f.name.clone(), a));
        }
        let writer = GenericDatumWriter::builder(&self.schema)
            .build()
            .map_err(|e| e.to_string())?;
        let start = out.len();
        out.push(0);
        out.extend_from_slice(&self.id.to_be_bytes());
        if let Err(e) = writer.write_value(out, Avro::Record(values)) {
            out.truncate(start);
            return Err(format!("schema id {}: {e}", self.id));
        }
        Ok(())
    }
}

/// A field value as an Avro value of `schema`.
fn to_avro(v: &Value, schema: &Schema, names: &HashMap<Name, Schema>) -> Result<Avro, String> {
    let mismatch = || Err(format!("cannot write {} as {}", v.to_json(), kind(schema)));
    let time_ms = || match v {
        Value::Int(i) => Ok(*i),
        Value::Str(_) | Value::Float(_) => {
            parse_time(v, TimeFormat::Auto).map_err(|e| format!("not a timestamp: {}", e.0))
        }
        _ => Err(format!("cannot write {} as a timestamp", v.to_json())),
    };
    Ok(match (schema, v) {
        (Schema::Ref { name }, _) => {
            let s = names
                .get(name)
                .ok_or_else(|| format!("unknown named type {name}"))?;
            return to_avro(v, s, names);
        }
        (Schema::Union(u), _) => {
            let mut last = None;
            for (i, s) in u.variants().iter().enumerate() {
                match to_avro(v, s, names) {
                    Ok(a) => return Ok(Avro::Union(i as u32, Box::new(a))),
                    Err(e) => last = Some(e),
                }
            }
            return Err(last.unwrap_or_else(|| "empty union".into()));
        }
        (Schema::Null, Value::Null) => Avro::Null,
        (_, Value::Null) => return Err(format!("no value, and {} is not nullable", kind(schema))),
        (Schema::Boolean, Value::Bool(b)) => Avro::Boolean(*b),
        (Schema::Int, Value::Int(i)) => {
            Avro::Int(i32::try_from(*i).map_err(|_| format!("{i} does not fit an int"))?)
        }
        (Schema::Long, Value::Int(i)) => Avro::Long(*i),
        (Schema::Float, Value::Int(i)) => Avro::Float(*i as f32),
        (Schema::Float, Value::Float(f)) => Avro::Float(*f as f32),
        (Schema::Double, Value::Int(i)) => Avro::Double(*i as f64),
        (Schema::Double, Value::Float(f)) => Avro::Double(*f),
        (Schema::String, Value::Str(s)) => Avro::String(s.to_string()),
        (Schema::String, Value::Int(_) | Value::Float(_) | Value::Bool(_)) => {
            Avro::String(v.to_json().to_string())
        }
        (Schema::Bytes, Value::Str(s)) => Avro::Bytes(s.as_bytes().to_vec()),
        (Schema::Enum(e), Value::Str(s)) => {
            let i = e
                .symbols
                .iter()
                .position(|sym| sym == s.as_str())
                .ok_or_else(|| format!("`{s}` is not a symbol of enum {}", e.name))?;
            Avro::Enum(i as u32, s.to_string())
        }
        (Schema::Uuid(_), Value::Str(s)) => Avro::Uuid(
            apache_avro::Uuid::parse_str(s).map_err(|e| format!("`{s}` is not a UUID: {e}"))?,
        ),
        (Schema::TimestampMillis, _) => Avro::TimestampMillis(time_ms()?),
        (Schema::LocalTimestampMillis, _) => Avro::LocalTimestampMillis(time_ms()?),
        (Schema::TimestampMicros, _) => Avro::TimestampMicros(
            time_ms()?
                .checked_mul(1000)
                .ok_or("timestamp out of range")?,
        ),
        (Schema::LocalTimestampMicros, _) => Avro::LocalTimestampMicros(
            time_ms()?
                .checked_mul(1000)
                .ok_or("timestamp out of range")?,
        ),
        (Schema::Date, Value::Int(i)) => {
            Avro::Date(i32::try_from(*i).map_err(|_| format!("{i} does not fit a date"))?)
        }
        (Schema::TimeMillis, Value::Int(i)) => Avro::TimeMillis(
            i32::try_from(*i).map_err(|_| format!("{i} does not fit time-millis"))?,
        ),
        (Schema::TimeMicros, Value::Int(i)) => Avro::TimeMicros(*i),
        _ => return mismatch(),
    })
}
