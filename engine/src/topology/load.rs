//! Loading `topology.yaml`: environment interpolation, parsing component by component, and
//! validation. Every problem is reported at once, each with its YAML path.

use std::collections::HashSet;
use std::path::Path;

use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_path_to_error::Segment;
use serde_yaml::{Mapping, Value};

use super::env::{display_path, interpolate, key_text, Substitution};
use super::{
    AggregateConfig, AggregateFunction, CheckpointConfig, ComputeSpec, ConfigIssue,
    ConnectorCatalog, Duration, EmitMode, EmitSpec, EventTimeSpec, FleetSpec, ParallelismConfig,
    PipelineSpec, SinkSpec, SourceSpec, StateConfig, StepSpec, Topology, WatermarkConfig,
    WindowSpec,
};
use crate::expr::{RecordExpr, ResultPredicate};

/// Result fields that aggregates may not be named after.
const RESERVED_RESULT_FIELDS: &[&str] = &["window_start", "window_end", "is_final"];

/// The shortest checkpoint interval accepted.
const MIN_CHECKPOINT_INTERVAL_MS: u64 = 10;

const TOPOLOGY_FIELDS: &[&str] = &[
    "name",
    "sources",
    "pipelines",
    "sinks",
    "state",
    "checkpoint",
    "parallelism",
    "fleet",
];

const PIPELINE_FIELDS: &[&str] = &[
    "source",
    "steps",
    "key_by",
    "window",
    "aggregates",
    "select",
    "having",
    "emit",
    "sinks",
    "late_output",
    "repartition",
];

const WINDOW_TYPES: &[&str] = &["tumbling", "sliding", "session", "count"];

/// Reads and loads the topology file at `path`; see [`load_str`].
pub fn load_file(
    path: &Path,
    catalog: &dyn ConnectorCatalog,
) -> Result<Topology, Vec<ConfigIssue>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigIssue {
            path: "(file)".into(),
            message: format!("cannot read {}: {e}", path.display()),
        }]
    })?;
    load_str(&text, catalog)
}

/// Loads a topology from YAML text, substituting `${VAR}` and `${VAR:-default}` from the
/// process environment, and validates it completely: every problem found is returned, each
/// with the dotted YAML path it concerns. Connector options are checked by `catalog`.
pub fn load_str(yaml: &str, catalog: &dyn ConnectorCatalog) -> Result<Topology, Vec<ConfigIssue>> {
    load_str_with_env(yaml, catalog, &|name| std::env::var(name).ok())
}

/// [`load_str`] with environment variables looked up by `env` instead of in the process
/// environment (for tests, or to layer variables from elsewhere).
pub fn load_str_with_env(
    yaml: &str,
    catalog: &dyn ConnectorCatalog,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Topology, Vec<ConfigIssue>> {
    let mut root: Value = match serde_yaml::from_str(yaml) {
        Ok(v) => v,
        Err(e) => {
            return Err(vec![ConfigIssue {
                path: "(root)".into(),
                message: format!("not valid YAML: {e}"),
            }])
        }
    };
    if let Err(e) = root.apply_merge() {
        return Err(vec![ConfigIssue {
            path: "(root)".into(),
            message: format!("invalid `<<` merge: {e}"),
        }]);
    }
    let mut issues = Vec::new();
    let subs = interpolate(&mut root, env, &mut issues);
    let mut loader = Loader { issues, subs };
    let topology = loader.topology(&root, catalog);
    let mut issues = loader.issues;
    redact(&mut issues, &loader.subs);
    match topology {
        Some(t) if issues.is_empty() => Ok(t),
        _ => Err(issues),
    }
}

/// Collects issues while taking a YAML tree apart.
struct Loader {
    issues: Vec<ConfigIssue>,
    subs: Vec<Substitution>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn list(names: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let all: Vec<String> = names
        .into_iter()
        .map(|n| format!("`{}`", n.as_ref()))
        .collect();
    all.join(", ")
}

fn plain_list<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    let all: Vec<&str> = names.into_iter().map(String::as_str).collect();
    if all.is_empty() {
        "(none)".into()
    } else {
        all.join(", ")
    }
}

impl Loader {
    fn issue(&mut self, path: &str, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            path: display_path(path),
            message: message.into(),
        });
    }

    /// Deserializes `node` (at `path`) into `T`, reporting the first problem with its full
    /// path. A string substituted from one whole `${VAR}` is retried as the number or bool it
    /// spells where the model wants one.
    fn de<T: DeserializeOwned>(&mut self, node: &Value, path: &str) -> Option<T> {
        let mut patched: Option<Value> = None;
        let mut coerced: Vec<String> = Vec::new();
        loop {
            let current = patched.as_ref().unwrap_or(node);
            let err = match serde_path_to_error::deserialize::<_, T>(current) {
                Ok(v) => return Some(v),
                Err(e) => e,
            };
            let mut full = path.to_owned();
            for seg in err.path().iter() {
                match seg {
                    Segment::Seq { index: i } => full = index(&full, *i),
                    Segment::Map { key } | Segment::Enum { variant: key } => {
                        full = join(&full, key)
                    }
                    Segment::Unknown => {}
                }
            }
            let message = err.inner().to_string();
            if message.starts_with("invalid type: string") && !coerced.contains(&full) {
                let typed = self
                    .subs
                    .iter()
                    .find(|s| s.whole && s.path == full)
                    .and_then(|s| serde_yaml::from_str::<Value>(&s.text).ok())
                    .filter(|v| v.is_number() || v.is_bool());
                if let Some(typed) = typed {
                    let mut copy = current.clone();
                    if let Some(slot) = node_at(&mut copy, err.path().iter()) {
                        *slot = typed;
                        patched = Some(copy);
                        coerced.push(full);
                        continue;
                    }
                }
            }
            let (full, message) = polish(full, message);
            self.issue(&full, message);
            return None;
        }
    }

    /// `node` as a mapping, or an issue.
    fn mapping<'v>(&mut self, node: &'v Value, path: &str, what: &str) -> Option<&'v Mapping> {
        match node {
            Value::Mapping(m) => Some(m),
            other => {
                self.issue(
                    path,
                    format!("expected {what} (a mapping), found {}", kind(other)),
                );
                None
            }
        }
    }

    /// `node` as a sequence, or an issue.
    fn sequence<'v>(&mut self, node: &'v Value, path: &str) -> Option<&'v [Value]> {
        match node {
            Value::Sequence(s) => Some(s),
            other => {
                self.issue(path, format!("expected a list, found {}", kind(other)));
                None
            }
        }
    }

    fn topology(&mut self, root: &Value, catalog: &dyn ConnectorCatalog) -> Option<Topology> {
        let root = match root {
            Value::Null => {
                self.issue(
                    "",
                    "the topology is empty; expected `sources`, `pipelines` and `sinks`",
                );
                return None;
            }
            other => self.mapping(other, "", "the topology")?,
        };
        let section_names = |key: &str| -> Vec<String> {
            match root.get(key) {
                Some(Value::Mapping(m)) => m.keys().map(key_text).collect(),
                _ => Vec::new(),
            }
        };
        let source_types = match root.get("sources") {
            Some(Value::Mapping(m)) => m
                .iter()
                .filter_map(|(k, v)| {
                    let kind = v.get("type").and_then(Value::as_str)?;
                    Some((
                        key_text(k),
                        catalog.supports_repartition(kind),
                        kind.to_string(),
                    ))
                })
                .collect(),
            _ => Vec::new(),
        };
        let names = Names {
            sources: section_names("sources"),
            sinks: section_names("sinks"),
            source_types,
        };

        let mut ok = true;
        let mut name = None;
        let mut sources = None;
        let mut pipelines = None;
        let mut sinks = None;
        let mut state = Some(StateConfig::default());
        let mut checkpoint = Some(CheckpointConfig::default());
        let mut parallelism = Some(ParallelismConfig::default());
        let mut fleet = Some(None);
        for (k, v) in root {
            let key = key_text(k);
            match key.as_str() {
                "name" => name = self.de::<String>(v, "name"),
                "sources" => {
                    sources = self.section(v, "sources", "source", |l, n, v, p| {
                        l.source(n, v, p, &names, catalog)
                    })
                }
                "pipelines" => {
                    pipelines = self.section(v, "pipelines", "pipeline", |l, n, v, p| {
                        l.pipeline(n, v, p, &names)
                    })
                }
                "sinks" => {
                    sinks = self.section(v, "sinks", "sink", |l, n, v, p| l.sink(n, v, p, catalog))
                }
                "state" if !v.is_null() => state = self.de::<StateConfig>(v, "state"),
                "checkpoint" if !v.is_null() => {
                    checkpoint = self.de::<CheckpointConfig>(v, "checkpoint");
                    if let Some(c) = &checkpoint {
                        if c.interval.as_millis() < MIN_CHECKPOINT_INTERVAL_MS {
                            self.issue(
                                "checkpoint.interval",
                                format!(
                                    "checkpoint interval {} is too short; use at least {}",
                                    c.interval,
                                    Duration::from_millis(MIN_CHECKPOINT_INTERVAL_MS)
                                ),
                            );
                        }
                    }
                }
                "parallelism" if !v.is_null() => {
                    parallelism = self.de::<ParallelismConfig>(v, "parallelism");
                    if let Some(ParallelismConfig { shards: Some(0) }) = parallelism {
                        self.issue("parallelism.shards", "`shards` must be at least 1");
                    }
                }
                "fleet" if !v.is_null() => {
                    fleet = self.de::<FleetSpec>(v, "fleet").map(Some);
                    if let Some(Some(spec)) = &fleet {
                        let found = catalog.check_fleet(spec);
                        self.issues.extend(found);
                    }
                }
                "state" | "checkpoint" | "parallelism" | "fleet" => {}
                _ => {
                    ok = false;
                    self.issue(
                        &key,
                        format!(
                            "unknown field `{key}`, expected one of {}",
                            list(TOPOLOGY_FIELDS)
                        ),
                    );
                }
            }
        }
        for (section, what, present) in [
            ("sources", "source", root.contains_key("sources")),
            ("pipelines", "pipeline", root.contains_key("pipelines")),
            ("sinks", "sink", root.contains_key("sinks")),
        ] {
            let empty = match root.get(section) {
                Some(Value::Mapping(m)) => m.is_empty(),
                Some(Value::Null) | None => true,
                Some(_) => false,
            };
            if !present {
                self.issue(
                    section,
                    format!("required field `{section}` is missing; define at least one {what}"),
                );
            } else if empty {
                self.issue(
                    section,
                    format!("no {what} is defined; define at least one"),
                );
            }
        }
        if !ok {
            return None;
        }
        Some(Topology {
            name: match root.get("name") {
                Some(_) => name?,
                None => "weir".into(),
            },
            sources: sources?,
            pipelines: pipelines?,
            sinks: sinks?,
            state: state?,
            checkpoint: checkpoint?,
            parallelism: parallelism?,
            fleet: fleet?,
        })
    }

    /// Loads a named section (`sources`, `pipelines`, `sinks`) entry by entry.
    fn section<T>(
        &mut self,
        node: &Value,
        path: &str,
        what: &str,
        mut entry: impl FnMut(&mut Self, &str, &Value, &str) -> Option<T>,
    ) -> Option<IndexMap<String, T>> {
        if node.is_null() {
            return None;
        }
        let map = self.mapping(node, path, &format!("{what}s by name"))?;
        let mut out = IndexMap::new();
        let mut ok = true;
        for (k, v) in map {
            let name = key_text(k);
            let entry_path = join(path, &name);
            if name.trim().is_empty() {
                self.issue(&entry_path, format!("a {what} name must not be empty"));
                ok = false;
                continue;
            }
            match entry(self, &name, v, &entry_path) {
                Some(t) => {
                    out.insert(name, t);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn source(
        &mut self,
        name: &str,
        node: &Value,
        path: &str,
        names: &Names,
        catalog: &dyn ConnectorCatalog,
    ) -> Option<SourceSpec> {
        let map = self.mapping(node, path, "a source")?;
        let mut ok = true;
        let mut kind = None;
        let mut event_time = Some(EventTimeSpec::default());
        let mut watermark = Some(WatermarkConfig::default());
        let mut dead_letter = Some(None);
        let mut options = serde_json::Map::new();
        for (k, v) in map {
            let key = key_text(k);
            let p = join(path, &key);
            match key.as_str() {
                "type" => kind = self.de::<String>(v, &p),
                "event_time" => event_time = self.de::<EventTimeSpec>(v, &p),
                "watermark" => watermark = self.de::<WatermarkConfig>(v, &p),
                "dead_letter" => {
                    dead_letter = self.de::<Option<String>>(v, &p);
                    if let Some(Some(sink)) = &dead_letter {
                        self.check_sink_ref(sink, &p, names);
                    }
                }
                _ => match self.de::<serde_json::Value>(v, &p) {
                    Some(json) => {
                        options.insert(key, json);
                    }
                    None => ok = false,
                },
            }
        }
        if !map.contains_key("type") {
            self.missing(path, "type");
            ok = false;
        }
        let spec = SourceSpec {
            kind: kind?,
            event_time: event_time?,
            watermark: watermark?,
            dead_letter: dead_letter?,
            options,
        };
        if !ok {
            return None;
        }
        let found = catalog.check_source(name, &spec);
        let clean = found.is_empty();
        self.issues.extend(found);
        clean.then_some(spec)
    }

    fn sink(
        &mut self,
        name: &str,
        node: &Value,
        path: &str,
        catalog: &dyn ConnectorCatalog,
    ) -> Option<SinkSpec> {
        let map = self.mapping(node, path, "a sink")?;
        let mut ok = true;
        let mut kind = None;
        let mut options = serde_json::Map::new();
        for (k, v) in map {
            let key = key_text(k);
            let p = join(path, &key);
            if key == "type" {
                kind = self.de::<String>(v, &p);
            } else {
                match self.de::<serde_json::Value>(v, &p) {
                    Some(json) => {
                        options.insert(key, json);
                    }
                    None => ok = false,
                }
            }
        }
        if !map.contains_key("type") {
            self.missing(path, "type");
        }
        let spec = SinkSpec {
            kind: kind?,
            options,
        };
        if !ok {
            return None;
        }
        let found = catalog.check_sink(name, &spec);
        let clean = found.is_empty();
        self.issues.extend(found);
        clean.then_some(spec)
    }

    fn missing(&mut self, path: &str, field: &str) {
        self.issue(
            &join(path, field),
            format!("required field `{field}` is missing"),
        );
    }

    fn check_sink_ref(&mut self, sink: &str, path: &str, names: &Names) {
        if !names.sinks.iter().any(|s| s == sink) {
            self.issue(
                path,
                format!(
                    "sink `{sink}` is not defined; defined sinks: {}",
                    plain_list(&names.sinks)
                ),
            );
        }
    }

    fn pipeline(
        &mut self,
        _name: &str,
        node: &Value,
        path: &str,
        names: &Names,
    ) -> Option<PipelineSpec> {
        let map = self.mapping(node, path, "a pipeline")?;
        let mut ok = true;
        let mut source = None;
        let mut steps = Some(Vec::new());
        let mut key_by: Option<Vec<String>> = None;
        let mut window = None;
        let mut aggregates: Option<Vec<AggregateConfig>> = None;
        let mut select: Option<Vec<String>> = None;
        let mut having = Some(None);
        let mut emit = Some(EmitSpec::default());
        let mut sinks = None;
        let mut late_output = Some(None);
        let mut repartition = Some(false);
        for (k, v) in map {
            let key = key_text(k);
            let p = join(path, &key);
            match key.as_str() {
                "source" => {
                    source = self.de::<String>(v, &p);
                    if let Some(s) = &source {
                        if !names.sources.iter().any(|n| n == s) {
                            self.issue(
                                &p,
                                format!(
                                    "source `{s}` is not defined; defined sources: {}",
                                    plain_list(&names.sources)
                                ),
                            );
                        }
                    }
                }
                "steps" if v.is_null() => {}
                "steps" => steps = self.steps(v, &p),
                "key_by" => {
                    key_by = self.de::<Vec<String>>(v, &p);
                    if let Some(keys) = &key_by {
                        self.check_key_by(keys, &p);
                    }
                }
                "window" => window = self.window(v, &p),
                "aggregates" => aggregates = self.aggregates(v, &p),
                "select" => {
                    select = self.de::<Vec<String>>(v, &p);
                    if select.as_ref().is_some_and(Vec::is_empty) {
                        self.issue(&p, "`select` is empty; list the fields to pass on");
                    }
                }
                "having" => having = self.de::<Option<String>>(v, &p),
                "emit" if v.is_null() => {}
                "emit" => {
                    emit = self.de::<EmitSpec>(v, &p);
                    if let Some(e) = &emit {
                        self.check_emit(e, &p);
                    }
                }
                "sinks" => {
                    sinks = self.de::<Vec<String>>(v, &p);
                    if let Some(list) = &sinks {
                        if list.is_empty() {
                            self.issue(&p, "`sinks` is empty; name at least one sink");
                        }
                        for (i, sink) in list.iter().enumerate() {
                            self.check_sink_ref(sink, &index(&p, i), names);
                        }
                    }
                }
                "repartition" => repartition = self.de::<bool>(v, &p),
                "late_output" => {
                    late_output = self.de::<Option<String>>(v, &p);
                    if let Some(Some(sink)) = &late_output {
                        self.check_sink_ref(sink, &p, names);
                    }
                }
                _ => {
                    ok = false;
                    self.issue(
                        &p,
                        format!(
                            "unknown field `{key}`, expected one of {}",
                            list(PIPELINE_FIELDS)
                        ),
                    );
                }
            }
        }
        let windowed = map.contains_key("window");
        let required: &[&str] = if windowed {
            &["source", "key_by", "window", "aggregates", "sinks"]
        } else {
            &["source", "select", "sinks"]
        };
        for field in required {
            if !map.contains_key(*field) {
                self.missing(path, field);
            }
        }
        let windowed_only = [
            "key_by",
            "aggregates",
            "having",
            "emit",
            "late_output",
            "repartition",
        ];
        for field in windowed_only
            .iter()
            .filter(|f| !windowed && map.contains_key(**f))
        {
            self.issue(
                &join(path, field),
                format!(
                    "`{field}` needs a `window`; a pipeline without one passes events through \
                     with `select`"
                ),
            );
        }
        if windowed && map.contains_key("select") {
            self.issue(
                &join(path, "select"),
                "`select` is for pipelines without a `window`; windowed pipelines emit their \
                 key fields and aggregates",
            );
        }
        if let (Some(keys), Some(aggs)) = (&key_by, &aggregates) {
            self.check_aggregate_names(keys, aggs, path);
        }
        if let (Some(true), Some(src)) = (repartition, &source) {
            if let Some((_, false, kind)) = names.source_types.iter().find(|(n, ..)| n == src) {
                self.issue(
                    &join(path, "repartition"),
                    format!(
                        "`repartition` needs a source that can carry an internal topic (kafka); \
                         source `{src}` is of type `{kind}`"
                    ),
                );
            }
        }
        if let Some(Some(src)) = &having {
            let p = join(path, "having");
            match ResultPredicate::compile(src) {
                Err(e) => self.issue(&p, format!("invalid CEL expression: {e}")),
                Ok(pred) => {
                    if let (Some(keys), Some(aggs)) = (&key_by, &aggregates) {
                        let mut fields: Vec<&str> = Vec::new();
                        let all = keys.iter().map(String::as_str);
                        let all = all.chain(aggs.iter().map(|a| a.name.as_str()));
                        for f in all.chain(RESERVED_RESULT_FIELDS.iter().copied()) {
                            if !fields.contains(&f) {
                                fields.push(f);
                            }
                        }
                        for used in pred.referenced_names() {
                            if !fields.contains(&used.as_str()) {
                                self.issue(
                                    &p,
                                    format!(
                                        "`having` uses `{used}`, which is not a result field; \
                                         result fields: {}",
                                        list(&fields)
                                    ),
                                );
                            }
                        }
                    }
                }
            }
        }
        if !ok {
            return None;
        }
        Some(PipelineSpec {
            source: source?,
            steps: steps?,
            key_by: if windowed { key_by? } else { Vec::new() },
            window: if windowed { Some(window?) } else { None },
            aggregates: if windowed { aggregates? } else { Vec::new() },
            select: if windowed { Vec::new() } else { select? },
            having: having?,
            emit: emit?,
            sinks: sinks?,
            late_output: late_output?,
            repartition: repartition?,
        })
    }

    fn steps(&mut self, node: &Value, path: &str) -> Option<Vec<StepSpec>> {
        let items = self.sequence(node, path)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.step(item, &index(path, i)) {
                Some(step) => out.push(step),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// One step: a mapping with the single key `filter` or `compute` (or the YAML tag form
    /// `!filter ...`), read by hand so that each form gets a clear message.
    fn step(&mut self, node: &Value, path: &str) -> Option<StepSpec> {
        const EXPECTED: &str = "expected a step: `filter: <expr>` or `compute: {name, expr}`";
        let (kind, body) = match node {
            Value::Mapping(m) if m.len() == 1 => {
                let (k, v) = m.iter().next()?;
                (key_text(k), v)
            }
            Value::Mapping(m) => {
                let keys: Vec<String> = m.keys().map(key_text).collect();
                self.issue(
                    path,
                    format!(
                        "{EXPECTED}; a step has exactly one of them, found {}",
                        if keys.is_empty() {
                            "none".into()
                        } else {
                            list(&keys)
                        }
                    ),
                );
                return None;
            }
            Value::Tagged(t) => (
                t.tag.to_string().trim_start_matches('!').to_owned(),
                &t.value,
            ),
            other => {
                self.issue(path, format!("{EXPECTED}, found {}", kind(other)));
                return None;
            }
        };
        let p = join(path, &kind);
        match kind.as_str() {
            "filter" => {
                let src = self.de::<String>(body, &p)?;
                if let Err(e) = RecordExpr::compile(&src) {
                    self.issue(&p, format!("invalid CEL expression: {e}"));
                }
                Some(StepSpec::Filter(src))
            }
            "compute" => {
                let c = self.de::<ComputeSpec>(body, &p)?;
                if c.name.trim().is_empty() {
                    self.issue(&join(&p, "name"), "the field name must not be empty");
                }
                if let Err(e) = RecordExpr::compile(&c.expr) {
                    self.issue(&join(&p, "expr"), format!("invalid CEL expression: {e}"));
                }
                Some(StepSpec::Compute(c))
            }
            other => {
                self.issue(
                    &p,
                    format!("unknown step `{other}`, expected `filter` or `compute`"),
                );
                None
            }
        }
    }

    fn check_key_by(&mut self, keys: &[String], path: &str) {
        if keys.is_empty() {
            self.issue(path, "`key_by` is empty; list at least one field");
        }
        let mut seen = HashSet::new();
        for (i, k) in keys.iter().enumerate() {
            if k.trim().is_empty() {
                self.issue(&index(path, i), "a key field name must not be empty");
            } else if !seen.insert(k.as_str()) {
                self.issue(&index(path, i), format!("key field `{k}` is listed twice"));
            }
        }
    }

    fn check_emit(&mut self, emit: &EmitSpec, path: &str) {
        if let Some(every) = emit.every {
            let p = join(path, "every");
            if emit.mode == EmitMode::OnClose {
                self.issue(
                    &p,
                    "`every` applies only with `mode: on_update` or `mode: both`; \
                     remove it or change the mode",
                );
            } else if every.as_millis() == 0 {
                self.issue(&p, "`every` must be longer than 0ms");
            }
        }
    }

    /// Window kinds carry their fields beside `type`; they are read by hand so that a problem
    /// in one field is reported at that field's path.
    fn window(&mut self, node: &Value, path: &str) -> Option<WindowSpec> {
        let map = self.mapping(node, path, "a window")?;
        let type_path = join(path, "type");
        let Some(kind_node) = map.get("type") else {
            self.issue(
                &type_path,
                format!(
                    "required field `type` is missing; one of {}",
                    list(WINDOW_TYPES)
                ),
            );
            return None;
        };
        let kind = self.de::<String>(kind_node, &type_path)?;
        let mut rest = map.clone();
        rest.remove("type");
        let rest = Value::Mapping(rest);
        let positive = |l: &mut Self, d: Duration, field: &str, what: &str| {
            if d.as_millis() == 0 {
                l.issue(
                    &join(path, field),
                    format!("{what} must be longer than 0ms"),
                );
            }
        };
        match kind.as_str() {
            "tumbling" => {
                let w = self.de::<TumblingFields>(&rest, path)?;
                positive(self, w.size, "size", "window size");
                Some(WindowSpec::Tumbling {
                    size: w.size,
                    allowed_lateness: w.allowed_lateness,
                })
            }
            "sliding" => {
                let w = self.de::<SlidingFields>(&rest, path)?;
                positive(self, w.size, "size", "window size");
                positive(self, w.slide, "slide", "window slide");
                if w.slide > w.size {
                    self.issue(
                        &join(path, "slide"),
                        format!("window slide {} is larger than size {}", w.slide, w.size),
                    );
                }
                Some(WindowSpec::Sliding {
                    size: w.size,
                    slide: w.slide,
                    allowed_lateness: w.allowed_lateness,
                })
            }
            "session" => {
                let w = self.de::<SessionFields>(&rest, path)?;
                positive(self, w.gap, "gap", "session gap");
                Some(WindowSpec::Session {
                    gap: w.gap,
                    allowed_lateness: w.allowed_lateness,
                })
            }
            "count" => {
                let w = self.de::<CountFields>(&rest, path)?;
                if w.size == 0 {
                    self.issue(&join(path, "size"), "count window size must be at least 1");
                }
                Some(WindowSpec::Count { size: w.size })
            }
            other => {
                self.issue(
                    &type_path,
                    format!(
                        "unknown window type `{other}`, expected one of {}",
                        list(WINDOW_TYPES)
                    ),
                );
                None
            }
        }
    }

    fn aggregates(&mut self, node: &Value, path: &str) -> Option<Vec<AggregateConfig>> {
        let items = self.sequence(node, path)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = index(path, i);
            match self.de::<AggregateConfig>(item, &p) {
                Some(agg) => {
                    self.check_aggregate(&agg, &p);
                    out.push(agg);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn check_aggregate(&mut self, agg: &AggregateConfig, path: &str) {
        let f = agg.function;
        let fname = function_name(f);
        if agg.name.trim().is_empty() {
            self.issue(&join(path, "name"), "the aggregate name must not be empty");
        }
        if f != AggregateFunction::Count && agg.field.is_none() {
            self.issue(
                &join(path, "field"),
                format!("`{fname}` needs a `field` to aggregate"),
            );
        }
        if let Some(field) = &agg.field {
            if field.trim().is_empty() {
                self.issue(&join(path, "field"), "the field name must not be empty");
            }
        }
        match (f, agg.q) {
            (AggregateFunction::Percentile, None) => self.issue(
                &join(path, "q"),
                "`percentile` needs `q`, the quantile in [0, 1] (e.g. `q: 0.99`)",
            ),
            (AggregateFunction::Percentile, Some(q)) if !(0.0..=1.0).contains(&q) => {
                self.issue(&join(path, "q"), format!("`q` must be in [0, 1], got {q}"))
            }
            (AggregateFunction::Percentile, Some(_)) | (_, None) => {}
            (_, Some(_)) => self.issue(
                &join(path, "q"),
                format!("`q` applies only to `percentile`, not to `{fname}`"),
            ),
        }
        match (f, agg.n) {
            (AggregateFunction::TopN, None) => self.issue(
                &join(path, "n"),
                "`top_n` needs `n`, how many values to keep (e.g. `n: 10`)",
            ),
            (AggregateFunction::TopN, Some(0)) => {
                self.issue(&join(path, "n"), "`n` must be at least 1")
            }
            (AggregateFunction::TopN, Some(_)) | (_, None) => {}
            (_, Some(_)) => self.issue(
                &join(path, "n"),
                format!("`n` applies only to `top_n`, not to `{fname}`"),
            ),
        }
    }

    fn check_aggregate_names(&mut self, keys: &[String], aggs: &[AggregateConfig], path: &str) {
        for (i, agg) in aggs.iter().enumerate() {
            let p = join(&index(&join(path, "aggregates"), i), "name");
            let name = agg.name.as_str();
            if let Some(j) = aggs[..i].iter().position(|a| a.name == name) {
                self.issue(
                    &p,
                    format!("aggregate name `{name}` is already used by aggregates[{j}]"),
                );
            } else if keys.iter().any(|k| k == name) {
                self.issue(
                    &p,
                    format!(
                        "aggregate name `{name}` is also a `key_by` field; results would hold \
                         both under one name"
                    ),
                );
            } else if RESERVED_RESULT_FIELDS.contains(&name) {
                self.issue(
                    &p,
                    format!(
                        "aggregate name `{name}` is reserved for results; reserved: {}",
                        list(RESERVED_RESULT_FIELDS)
                    ),
                );
            }
        }
    }
}

/// The names of the defined sources and sinks, known before any is parsed so that references
/// to them are checked even when a definition is broken.
struct Names {
    sources: Vec<String>,
    sinks: Vec<String>,
    /// Each source with a readable `type`: whether it can repartition, and the type.
    source_types: Vec<(String, bool, String)>,
}

fn function_name(f: AggregateFunction) -> String {
    serde_json::to_value(f)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{f:?}"))
}

/// The fields of each window kind, beside `type` (mirrors [`WindowSpec`]; a test checks they
/// accept the same documents).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TumblingFields {
    size: Duration,
    #[serde(default)]
    allowed_lateness: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SlidingFields {
    size: Duration,
    slide: Duration,
    #[serde(default)]
    allowed_lateness: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionFields {
    gap: Duration,
    #[serde(default)]
    allowed_lateness: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CountFields {
    size: u64,
}

/// The node at `segments` below `value`.
fn node_at<'v, 's>(
    value: &'v mut Value,
    segments: impl Iterator<Item = &'s Segment>,
) -> Option<&'v mut Value> {
    let mut node = value;
    for seg in segments {
        while let Value::Tagged(t) = node {
            node = &mut t.value;
        }
        node = match seg {
            Segment::Seq { index } => node.as_sequence_mut()?.get_mut(*index)?,
            Segment::Map { key } | Segment::Enum { variant: key } => {
                node.as_mapping_mut()?.get_mut(key.as_str())?
            }
            Segment::Unknown => node,
        };
    }
    Some(node)
}

/// What a YAML node is, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Makes serde's messages read in the terms of the YAML file rather than the Rust types, and
/// points "missing field" and "unknown field" at the field itself.
fn polish(path: String, message: String) -> (String, String) {
    let mut message = message.replace("unit value", "null");
    while let Some(at) = message.find("expected struct ") {
        let rest = &message[at + "expected struct ".len()..];
        let end = rest
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .unwrap_or(rest.len());
        message = format!("{}expected a mapping{}", &message[..at], &rest[end..]);
    }
    while let Some(at) = message.find("expected enum ") {
        let rest = &message[at + "expected enum ".len()..];
        let end = rest
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .unwrap_or(rest.len());
        message = format!("{}expected a string{}", &message[..at], &rest[end..]);
    }
    let field_of = |prefix: &str| -> Option<String> {
        let rest = message.strip_prefix(prefix)?;
        let end = rest.find('`')?;
        Some(rest[..end].to_owned())
    };
    if let Some(field) = field_of("missing field `") {
        let p = join(&path, &field);
        return (p, format!("required field `{field}` is missing"));
    }
    if let Some(field) = field_of("unknown field `") {
        let last = path.rsplit('.').next().unwrap_or_default();
        if last != field {
            return (join(&path, &field), message);
        }
    }
    (path, message)
}

/// Takes values that came from the environment out of messages about the places they were
/// substituted in (connectors, or serde, may quote the offending value).
fn redact(issues: &mut [ConfigIssue], subs: &[Substitution]) {
    for issue in issues.iter_mut() {
        for sub in subs {
            let related = issue.path == sub.path
                || nested(&issue.path, &sub.path)
                || nested(&sub.path, &issue.path)
                || issue.path == "(root)";
            if !related {
                continue;
            }
            for secret in &sub.secrets {
                if issue.message.contains(secret.as_str()) {
                    issue.message = issue.message.replace(secret.as_str(), "<redacted>");
                }
            }
        }
    }
}

/// Whether `inner` is a path below `outer`.
fn nested(inner: &str, outer: &str) -> bool {
    inner.len() > outer.len()
        && inner.starts_with(outer)
        && matches!(inner.as_bytes()[outer.len()], b'.' | b'[')
}

#[cfg(test)]
mod tests;
