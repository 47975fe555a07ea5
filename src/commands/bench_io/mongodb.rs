//! The `mongodb` section of `weir bench-io`: window results into a time-series collection by
//! the driver's `insert_many` and by Weir's `mongodb` sink.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use weir_connectors::mongodb::driver::bson::{doc, Bson, DateTime, Document};
use weir_connectors::mongodb::driver::sync::{Client, Database};
use weir_connectors::mongodb::{MongoSink, MongoSinkConfig};
use weir_engine::event::{Key, Output, ResultSchema, Value, WindowResult};
use weir_engine::runtime::{Sink, SinkScope};

use super::{BenchIoArgs, Measurement, RunNames, Section};

/// Window end of the first result: 2026-01-01T00:01:00Z.
const FIRST_WINDOW_END_MS: i64 = 1_767_225_660_000;

/// Writes the same window results both ways into a fresh database, then drops it.
pub(super) fn run(uri: &str, args: &BenchIoArgs, names: &RunNames) -> anyhow::Result<Measurement> {
    let client = Client::with_uri_str(uri).context("--mongodb is not a MongoDB URI")?;
    let db_name = format!("weir_bench_{}", names.id.replace('-', "_"));
    let db = client.database(&db_name);
    let outputs = window_results(args.docs, args.keys);
    let measured = measure(uri, &db, &db_name, &outputs, args.batch, names);
    let dropped = db.drop().run();
    let measured = measured?;
    dropped.context("cannot drop the benchmark database")?;
    Ok(measured)
}

/// `count` final results of a 1-minute tumbling window keyed by `user_id`, `keys` users per
/// window, with a count and a sum.
fn window_results(count: u64, keys: u64) -> Vec<Output> {
    let schema = Arc::new(ResultSchema {
        pipeline: "spend".into(),
        key_fields: vec!["user_id".into()],
        aggregate_names: vec!["events".into(), "spend".into()],
    });
    let keys = keys.max(1);
    (0..count)
        .map(|i| {
            let user = Value::Str(format!("user_{}", i % keys).into());
            let window_end = FIRST_WINDOW_END_MS + (i / keys) as i64 * 60_000;
            Output::Result(WindowResult {
                schema: schema.clone(),
                key: Key::from_values([&user]),
                window_start: window_end - 60_000,
                window_end,
                aggregates: vec![
                    serde_json::json!(i % 50 + 1),
                    serde_json::json!((i % 997) as f64 * 1.5),
                ],
                is_final: true,
            })
        })
        .collect()
}

/// The document the sink writes for `output` (without its epoch tag), built the plain way.
fn plain_document(output: &Output) -> Document {
    let Output::Result(r) = output else {
        return Document::new();
    };
    let mut meta = Document::new();
    for (name, value) in r
        .schema
        .key_fields
        .iter()
        .zip(r.key.values().unwrap_or_default())
    {
        if let Value::Str(s) = value {
            meta.insert(name.as_str(), s.as_str());
        }
    }
    meta.insert("pipeline", r.schema.pipeline.as_str());
    let mut doc = doc! { "ts": DateTime::from_millis(r.window_end), "meta": meta };
    for (name, value) in r.schema.aggregate_names.iter().zip(&r.aggregates) {
        let value = match value.as_i64() {
            Some(i) => Bson::Int64(i),
            None => value.as_f64().map_or(Bson::Null, Bson::Double),
        };
        doc.insert(name.as_str(), value);
    }
    doc.insert("window_start", DateTime::from_millis(r.window_start));
    doc.insert("is_final", r.is_final);
    doc
}

fn measure(
    uri: &str,
    db: &Database,
    db_name: &str,
    outputs: &[Output],
    batch: usize,
    names: &RunNames,
) -> anyhow::Result<Measurement> {
    eprintln!("  mongodb: driver insert_many ...");
    db.run_command(doc! {
        "create": "plain",
        "timeseries": {"timeField": "ts", "metaField": "meta", "granularity": "minutes"},
    })
    .run()
    .context("cannot create the baseline's time-series collection")?;
    let plain = db.collection::<Document>("plain");
    let started = Instant::now();
    for chunk in outputs.chunks(batch) {
        let docs: Vec<Document> = chunk.iter().map(plain_document).collect();
        plain
            .insert_many(docs)
            .ordered(false)
            .run()
            .context("insert_many failed")?;
    }
    let plain_time = started.elapsed();

    eprintln!("  mongodb: Weir's mongodb sink ...");
    let (epochs, weir_time) = weir_sink(uri, db_name, outputs, batch, names)?;

    for collection in ["plain", "weir"] {
        let n = db
            .collection::<Document>(collection)
            .count_documents(doc! {})
            .run()?;
        anyhow::ensure!(
            n == outputs.len() as u64,
            "{collection} holds {n} documents, not {}: the measurement is void",
            outputs.len()
        );
    }
    let docs = outputs.len() as f64;
    Ok(Measurement {
        section: Section::Mongodb.name(),
        baseline: format!("insert_many unordered, batches of {batch}"),
        weir: format!(
            "Weir's mongodb sink, mode timeseries: encoder + commit of one epoch per {batch} \
             (fenced)"
        ),
        unit: "docs",
        baseline_per_s: docs / plain_time.as_secs_f64(),
        weir_per_s: docs / weir_time.as_secs_f64(),
        floor: Some(0.70),
        detail: format!("{} documents, {epochs} epochs", outputs.len()),
    })
}

/// Encodes the outputs with the sink's encoder and commits them, `batch` per epoch, as the
/// coordinator does; returns the epochs and the time from the first encode to the last commit
/// (collection creation in `recover` excluded, as for the baseline).
fn weir_sink(
    uri: &str,
    db_name: &str,
    outputs: &[Output],
    batch: usize,
    names: &RunNames,
) -> anyhow::Result<(u64, Duration)> {
    let options = serde_json::json!({
        "uri": uri,
        "database": db_name,
        "collection": "weir",
        "mode": "timeseries",
        "timeseries": {"granularity": "minutes"},
    });
    let options = options.as_object().cloned().unwrap_or_default();
    let config = MongoSinkConfig::from_options("sinks.series", &options).map_err(|issues| {
        let list: Vec<String> = issues.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("invalid sink options: {}", list.join("; "))
    })?;
    let scope = SinkScope::main(&format!("bench-io-{}", names.id));
    let mut sink = MongoSink::open("series", &scope, &config)?;
    sink.recover(None)?;
    let mut encoder = sink.encoder();
    let mut staged = Vec::new();
    let mut epochs = 0;
    let started = Instant::now();
    for chunk in outputs.chunks(batch) {
        staged.clear();
        for output in chunk {
            encoder.encode(output, &mut staged);
        }
        epochs += 1;
        sink.commit(epochs, &staged)?;
    }
    Ok((epochs, started.elapsed()))
}
