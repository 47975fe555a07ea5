//! Options of a `mongodb` sink and their checks.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use weir_engine::topology::{ConfigIssue, Duration};

use crate::parse_options;

/// The collection that holds every sink's epoch fences, in the sink's database.
pub const FENCE_COLLECTION: &str = "weir_fences";

/// Top-level fields of a rollup document that counters may not be named after.
const ROLLUP_RESERVED: &[&str] = &[
    "_id",
    "entity",
    "day",
    "count",
    "sums",
    "latest",
    "updated_at",
    "weir_applied",
];

/// What a `mongodb` sink writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MongoSinkMode {
    /// One document per window result in a time-series collection: the time field is the
    /// window end, the meta field holds the key fields and the pipeline, the aggregates are
    /// top-level fields.
    Timeseries,
    /// One document per event of a pipeline without a window (`select`): the time field is the
    /// event time, the selected fields are top-level (or in the meta field, see `meta_fields`).
    /// A time-series collection when a `timeseries` block is given, else an ordinary one.
    Events,
    /// One document per entity and UTC day (`_id: "<entity>|<YYYY-MM-DD>"`), updated in place
    /// with counters, sums and the latest events.
    Rollup,
}

/// How MongoDB buckets a time-series collection; pick the one closest to the interval between
/// consecutive documents of one series (e.g. the window slide).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// Documents seconds apart (MongoDB's default).
    #[default]
    Seconds,
    /// Documents minutes apart.
    Minutes,
    /// Documents hours apart.
    Hours,
}

impl Granularity {
    /// The name MongoDB uses for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Seconds => "seconds",
            Granularity::Minutes => "minutes",
            Granularity::Hours => "hours",
        }
    }
}

/// The time-series options of the collection. The sink creates the collection with them when
/// it is missing, and refuses to start when an existing collection has other ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeseriesConfig {
    /// The field holding each document's time as a BSON date (`timeField`).
    #[serde(default = "default_time_field")]
    pub time_field: String,
    /// The field holding what identifies a series (`metaField`): key fields, the pipeline and
    /// Weir's `weir: {job, sink, task, epoch}` tag.
    #[serde(default = "default_meta_field")]
    pub meta_field: String,
    /// Bucketing granularity.
    #[serde(default)]
    pub granularity: Granularity,
    /// Delete documents this long after their time (`expireAfterSeconds`, whole seconds).
    /// Kept forever when absent.
    #[serde(default)]
    pub expire_after: Option<Duration>,
}

impl Default for TimeseriesConfig {
    fn default() -> Self {
        TimeseriesConfig {
            time_field: default_time_field(),
            meta_field: default_meta_field(),
            granularity: Granularity::default(),
            expire_after: None,
        }
    }
}

fn default_time_field() -> String {
    "ts".into()
}

fn default_meta_field() -> String {
    "meta".into()
}

/// Index fields in the order given, each with its direction (`1` ascending, `-1` descending).
/// The order is kept: it matters for compound indexes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IndexKeys(pub Vec<(String, i64)>);

impl Serialize for IndexKeys {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de> Deserialize<'de> for IndexKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeysVisitor;
        impl<'de> Visitor<'de> for KeysVisitor {
            type Value = IndexKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of field name to 1 or -1, e.g. `{meta.user: 1, ts: -1}`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IndexKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, i64>()? {
                    keys.push((k, v));
                }
                Ok(IndexKeys(keys))
            }
        }
        d.deserialize_map(KeysVisitor)
    }
}

impl JsonSchema for IndexKeys {
    fn schema_name() -> Cow<'static, str> {
        "IndexKeys".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "additionalProperties": {"enum": [1, -1]},
            "minProperties": 1,
            "description": "Index fields in order, each `1` (ascending) or `-1` (descending)."
        })
    }
}

/// A secondary index the sink creates on its collection (if it does not exist yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    /// The indexed fields, e.g. `{meta.user: 1, ts: -1}`.
    pub keys: IndexKeys,
    /// Whether the index rejects duplicate keys (not allowed on time-series collections).
    #[serde(default)]
    pub unique: bool,
}

/// Options of a `mongodb` sink.
///
/// Every mode is exactly-once: `timeseries` and `events` documents carry a
/// `weir: {job, sink, task, epoch}` tag in their meta field and a fence document per
/// (job, sink, task) in the database's `weir_fences` collection records the last committed
/// epoch; `rollup` documents record the last epoch each task applied to them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MongoSinkConfig {
    /// Connection string, `mongodb://…` or `mongodb+srv://…`, with credentials and options
    /// (use `${MONGODB_URI}`-style interpolation for secrets). Unless it sets them, server
    /// selection and connection attempts time out after 10 s.
    pub uri: String,
    /// The database.
    pub database: String,
    /// The collection; created when missing.
    pub collection: String,
    /// What to write: `timeseries` (window results), `events` (raw events) or `rollup`
    /// (per-entity daily documents).
    pub mode: MongoSinkMode,
    /// Time-series collection options (`timeseries` and `events` modes). Optional in
    /// `timeseries` mode (defaults apply); in `events` mode the collection is an ordinary one
    /// without it (documents then use the default `ts` and `meta` field names).
    #[serde(default)]
    pub timeseries: Option<TimeseriesConfig>,
    /// Secondary indexes to create.
    #[serde(default)]
    pub indexes: Vec<IndexConfig>,
    /// `events` mode: selected fields stored inside the meta field rather than at the top
    /// level (what identifies a series, e.g. `[user_id]`).
    #[serde(default)]
    pub meta_fields: Vec<String>,
    /// `rollup` mode (required): the event field (or key field of a window result) whose
    /// value identifies the entity.
    #[serde(default)]
    pub entity_field: Option<String>,
    /// `rollup` mode: counters by value, as `name: field`; each event adds 1 to
    /// `<name>.<value of field>` (dots and a leading `$` in the value become `_`, a missing
    /// value counts as `null`). Every document also has a total `count`.
    #[serde(default)]
    pub counters: BTreeMap<String, String>,
    /// `rollup` mode: numeric fields summed into `sums.<field>`; non-numeric values are not
    /// added.
    #[serde(default)]
    pub sum_fields: Vec<String>,
    /// `rollup` mode: keep the latest N events (by event time within an epoch, then by
    /// arrival) in a `latest` array.
    #[serde(default)]
    pub latest: Option<u32>,
}

impl MongoSinkConfig {
    /// Parses and checks the sink's options without any I/O; every issue's path starts with
    /// `prefix` (e.g. `sinks.metrics`), all issues are returned at once.
    pub fn from_options(
        prefix: &str,
        options: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, Vec<ConfigIssue>> {
        let config: MongoSinkConfig = parse_options(prefix, options)?;
        let issues = config.check(prefix);
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(issues)
        }
    }

    /// Whether the collection is a time-series collection.
    pub fn is_timeseries(&self) -> bool {
        match self.mode {
            MongoSinkMode::Timeseries => true,
            MongoSinkMode::Events => self.timeseries.is_some(),
            MongoSinkMode::Rollup => false,
        }
    }

    /// The time-series options in effect (defaults in `timeseries` mode without a block);
    /// `None` for an ordinary collection.
    pub fn timeseries_options(&self) -> Option<TimeseriesConfig> {
        if self.is_timeseries() {
            Some(self.timeseries.clone().unwrap_or_default())
        } else {
            None
        }
    }

    /// The field documents keep their time in.
    pub fn time_field(&self) -> String {
        self.timeseries
            .as_ref()
            .map_or_else(default_time_field, |t| t.time_field.clone())
    }

    /// The field documents keep their meta data (and Weir's tag) in.
    pub fn meta_field(&self) -> String {
        self.timeseries
            .as_ref()
            .map_or_else(default_meta_field, |t| t.meta_field.clone())
    }

    fn check(&self, prefix: &str) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let mut issue = |field: &str, message: String| {
            issues.push(ConfigIssue {
                path: format!("{prefix}.{field}"),
                message,
            })
        };

        // The driver's error never echoes the string, which may hold a password.
        if let Err(e) = mongodb::options::ConnectionString::parse(&self.uri) {
            issue(
                "uri",
                format!(
                    "not a MongoDB connection string (`mongodb://host:port/...` or \
                     `mongodb+srv://...`): {}",
                    e.kind
                ),
            );
        }
        if let Some(problem) = database_name_problem(&self.database) {
            issue("database", problem);
        }
        if let Some(problem) = collection_name_problem(&self.collection) {
            issue("collection", problem);
        }

        let rollup = self.mode == MongoSinkMode::Rollup;
        if rollup {
            if self.timeseries.is_some() {
                issue(
                    "timeseries",
                    "rollup documents are updated in place and cannot live in a time-series \
                     collection; remove `timeseries` or use mode `timeseries`/`events`"
                        .into(),
                );
            }
            match &self.entity_field {
                None => issue(
                    "entity_field",
                    "mode `rollup` needs the field that identifies the entity, e.g. \
                     `entity_field: user_id`"
                        .into(),
                ),
                Some(f) if f.is_empty() => issue("entity_field", "must not be empty".into()),
                Some(_) => {}
            }
            for (name, field) in &self.counters {
                let path = format!("counters.{name}");
                if let Some(problem) = field_name_problem(name) {
                    issue(&path, format!("counter name: {problem}"));
                } else if ROLLUP_RESERVED.contains(&name.as_str()) {
                    issue(
                        &path,
                        format!(
                            "`{name}` is a field of every rollup document; choose another \
                             counter name"
                        ),
                    );
                }
                if field.is_empty() {
                    issue(&path, "the counted field must not be empty".into());
                }
            }
            for (i, field) in self.sum_fields.iter().enumerate() {
                if field.is_empty() {
                    issue(&format!("sum_fields[{i}]"), "must not be empty".into());
                }
            }
            if self.latest == Some(0) {
                issue(
                    "latest",
                    "must be at least 1 (leave it out to keep no latest events)".into(),
                );
            }
        } else {
            if self.entity_field.is_some() {
                issue("entity_field", "only for mode `rollup`".into());
            }
            if !self.counters.is_empty() {
                issue("counters", "only for mode `rollup`".into());
            }
            if !self.sum_fields.is_empty() {
                issue("sum_fields", "only for mode `rollup`".into());
            }
            if self.latest.is_some() {
                issue("latest", "only for mode `rollup`".into());
            }
        }
        if self.mode != MongoSinkMode::Events && !self.meta_fields.is_empty() {
            issue(
                "meta_fields",
                "only for mode `events` (window results keep their key fields in the meta \
                 field already)"
                    .into(),
            );
        }

        if let Some(ts) = &self.timeseries {
            for (field, value) in [
                ("time_field", &ts.time_field),
                ("meta_field", &ts.meta_field),
            ] {
                let path = format!("timeseries.{field}");
                if let Some(problem) = field_name_problem(value) {
                    issue(&path, problem);
                } else if ["_id", "window_start", "is_final"].contains(&value.as_str()) {
                    issue(
                        &path,
                        format!("`{value}` is a field the sink writes itself"),
                    );
                }
            }
            if ts.time_field == ts.meta_field {
                issue(
                    "timeseries.meta_field",
                    "must differ from `time_field`".into(),
                );
            }
            if let Some(d) = ts.expire_after {
                if d.as_millis() < 1000 || d.as_millis() % 1000 != 0 {
                    issue(
                        "timeseries.expire_after",
                        format!(
                            "MongoDB expires documents in whole seconds; `{d}` is not a \
                             whole number of seconds of at least 1s"
                        ),
                    );
                }
            }
        }

        let timeseries = self.is_timeseries();
        for (i, index) in self.indexes.iter().enumerate() {
            if index.keys.0.is_empty() {
                issue(
                    &format!("indexes[{i}].keys"),
                    "must name at least one field".into(),
                );
            }
            for (field, direction) in &index.keys.0 {
                let path = format!("indexes[{i}].keys.{field}");
                if field.is_empty() || field.starts_with('$') {
                    issue(&path, "not a field name".into());
                }
                if *direction != 1 && *direction != -1 {
                    issue(
                        &path,
                        format!(
                            "direction must be 1 (ascending) or -1 (descending), not {direction}"
                        ),
                    );
                }
            }
            if index.unique && timeseries {
                issue(
                    &format!("indexes[{i}].unique"),
                    "time-series collections do not support unique indexes".into(),
                );
            }
        }
        issues
    }
}

/// Why `name` cannot be a top-level field name the sink writes, if it cannot.
fn field_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("must not be empty".into())
    } else if name.starts_with('$') {
        Some(format!(
            "`{name}` starts with `$`, which MongoDB reserves for operators"
        ))
    } else if name.contains('.') || name.contains('\0') {
        Some(format!(
            "`{name}` must not contain `.` (it would be read as a path)"
        ))
    } else {
        None
    }
}

fn database_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() >= 64 {
        return Some("MongoDB database names are shorter than 64 bytes".into());
    }
    name.chars()
        .find(|c| "/\\. \"$*<>:|?\0".contains(*c))
        .map(|c| format!("MongoDB database names cannot contain {c:?}"))
}

fn collection_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("must not be empty".into())
    } else if name.contains('$') || name.contains('\0') {
        Some("MongoDB collection names cannot contain `$`".into())
    } else if name.starts_with("system.") {
        Some("`system.` collections belong to MongoDB".into())
    } else if name == FENCE_COLLECTION {
        Some(format!("`{FENCE_COLLECTION}` holds Weir's epoch fences"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<MongoSinkConfig, Vec<ConfigIssue>> {
        let serde_json::Value::Object(map) = json else {
            panic!("not an object")
        };
        MongoSinkConfig::from_options("sinks.m", &map)
    }

    fn paths(json: serde_json::Value) -> Vec<String> {
        parse(json)
            .unwrap_err()
            .into_iter()
            .map(|i| i.path)
            .collect()
    }

    #[test]
    fn defaults_and_index_key_order() {
        let c = parse(serde_json::json!({
            "uri": "mongodb://127.0.0.1:27017/?directConnection=true",
            "database": "weir", "collection": "metrics", "mode": "timeseries",
            "indexes": [{"keys": {"meta.user": 1, "ts": -1, "a": 1}}]
        }))
        .unwrap();
        let ts = c.timeseries_options().unwrap();
        assert_eq!(
            (ts.time_field.as_str(), ts.meta_field.as_str()),
            ("ts", "meta")
        );
        assert_eq!(ts.granularity, Granularity::Seconds);
        let names: Vec<&str> = c.indexes[0]
            .keys
            .0
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(names, ["meta.user", "ts", "a"]);
    }

    #[test]
    fn events_without_timeseries_block_are_an_ordinary_collection() {
        let c = parse(serde_json::json!({
            "uri": "mongodb://h", "database": "d", "collection": "c", "mode": "events",
            "meta_fields": ["user"]
        }))
        .unwrap();
        assert!(c.timeseries_options().is_none());
        assert_eq!(c.time_field(), "ts");
    }

    #[test]
    fn type_errors_carry_yaml_paths() {
        assert_eq!(
            paths(serde_json::json!({
                "uri": "mongodb://h", "database": "d", "collection": "c", "mode": "timeseries",
                "timeseries": {"granularity": "days"}
            })),
            ["sinks.m.timeseries.granularity"]
        );
        assert_eq!(
            paths(serde_json::json!({
                "uri": "mongodb://h", "database": "d", "collection": "c", "mode": "timeseries",
                "timeseries": {"time_feld": "t"}
            })),
            ["sinks.m.timeseries.time_feld"]
        );
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let mut p = paths(serde_json::json!({
            "uri": "http://h", "database": "a.b", "collection": "weir_fences",
            "mode": "timeseries",
            "timeseries": {"time_field": "t", "meta_field": "t", "expire_after": "1500ms"},
            "indexes": [{"keys": {"t": 2}, "unique": true}, {"keys": {}}],
            "entity_field": "user", "meta_fields": ["x"]
        }));
        p.sort();
        assert_eq!(
            p,
            [
                "sinks.m.collection",
                "sinks.m.database",
                "sinks.m.entity_field",
                "sinks.m.indexes[0].keys.t",
                "sinks.m.indexes[0].unique",
                "sinks.m.indexes[1].keys",
                "sinks.m.meta_fields",
                "sinks.m.timeseries.expire_after",
                "sinks.m.timeseries.meta_field",
                "sinks.m.uri",
            ]
        );
    }

    #[test]
    fn rollup_checks() {
        let mut p = paths(serde_json::json!({
            "uri": "mongodb://h", "database": "d", "collection": "c", "mode": "rollup",
            "timeseries": {}, "counters": {"count": "event_type", "a.b": "x"},
            "latest": 0
        }));
        p.sort();
        assert_eq!(
            p,
            [
                "sinks.m.counters.a.b",
                "sinks.m.counters.count",
                "sinks.m.entity_field",
                "sinks.m.latest",
                "sinks.m.timeseries",
            ]
        );
        let c = parse(serde_json::json!({
            "uri": "mongodb+srv://u:p@cluster.example.net/", "database": "d", "collection": "c",
            "mode": "rollup", "entity_field": "user", "counters": {"counts": "event_type"},
            "sum_fields": ["amount"], "latest": 5,
            "indexes": [{"keys": {"day": 1}, "unique": false}]
        }))
        .unwrap();
        assert!(!c.is_timeseries());
    }
}
