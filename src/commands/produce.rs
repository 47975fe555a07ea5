//! `weir produce`: generated events to a Kafka topic, keyed by user (or key), with the event
//! time as the message timestamp, as JSON or Confluent-framed Avro.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use weir_connectors::generator::{write_events, GeneratorConfig, OutputFormat, Shape};
use weir_connectors::kafka::block_on;
use weir_connectors::kafka::decode::rdkafka;
use weir_connectors::kafka::decode::AvroEncoder;
use weir_engine::event::decode::JsonDecoder;
use weir_engine::event::{FieldSlots, Value};
use weir_engine::runtime::DecodeContext;
use weir_engine::topology::{EventTimeSpec, TimeFormat};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::generate::ShapeArg;

/// How long the final flush may take before undelivered events count as failed.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(300);

/// Arguments of `weir produce`.
#[derive(Args)]
pub struct ProduceArgs {
    /// Bootstrap brokers, `HOST:PORT[,HOST:PORT...]`.
    #[arg(long)]
    pub brokers: String,
    /// The topic to write to.
    #[arg(long)]
    pub topic: String,
    /// Number of events.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Events per second (wall clock); unlimited when absent. With a rate, event times start
    /// now and follow the wall clock.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Payload format.
    #[arg(long, value_enum, default_value = "json")]
    pub format: PayloadArg,
    /// Event shape (`activity` is keyed by `user_id`, `bench` by `key`).
    #[arg(long, value_enum, default_value = "activity")]
    pub shape: ShapeArg,
    /// Avro: the schema id written in each payload (and looked up in `--schemas`).
    #[arg(long, default_value_t = 1)]
    pub schema_id: u32,
    /// Avro: the mapping file of schema ids to .avsc files.
    #[arg(long, default_value = "schemas/avro/ids.yaml")]
    pub schemas: PathBuf,
    /// With `--create-topic`: partitions of the new topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// With `--create-topic`: replication factor of the new topic.
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i32,
    /// Create the topic if it does not exist.
    #[arg(long)]
    pub create_topic: bool,
    /// Distinct keys (bench) or users (activity).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Event times are jittered back by up to this many ms (out-of-order input).
    #[arg(long, default_value_t = 0)]
    pub max_out_of_orderness_ms: u64,
    /// Share of late events (0..1): pushed back 10 minutes in event time.
    #[arg(long, default_value_t = 0.0)]
    pub late_ratio: f64,
    /// Share of malformed events (0..1); with Avro they are sent as raw JSON (no framing).
    #[arg(long, default_value_t = 0.0)]
    pub malformed_ratio: f64,
    /// Event time of the first event (RFC 3339). Default: now with `--rate`; otherwise early
    /// enough that the last event is about now (brokers delete records whose timestamps are
    /// older than the topic's retention, 7 days by default).
    #[arg(long)]
    pub start_time: Option<String>,
    /// Seed of the deterministic event sequence.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// A librdkafka setting, `KEY=VALUE` (repeatable), e.g. `-X compression.type=lz4`.
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    pub config: Vec<String>,
}

/// Payload formats on the command line.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PayloadArg {
    /// One JSON object per message.
    Json,
    /// Confluent wire format: magic byte 0, 4-byte schema id, Avro binary datum.
    Avro,
}

/// Counts delivery reports.
#[derive(Default)]
struct Deliveries {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
}

/// The client settings: brokers, then defaults, then `-X` overrides.
fn client_config(args: &ProduceArgs) -> anyhow::Result<ClientConfig> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &args.brokers);
    config.set("linger.ms", "5");
    for pair in &args.config {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("-X {pair}: expected KEY=VALUE"))?;
        config.set(k.trim(), v.trim());
    }
    Ok(config)
}

fn create_topic(args: &ProduceArgs, config: &ClientConfig) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        config.create().context("cannot create the admin client")?;
    let topic = NewTopic::new(
        &args.topic,
        args.partitions,
        TopicReplication::Fixed(args.replication_factor),
    );
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = block_on(admin.create_topics([&topic], &options))
        .with_context(|| format!("cannot create topic `{}`", args.topic))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, partitions = args.partitions, "created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::info!(topic = %args.topic, "exists already")
            }
            Err((name, code)) => bail!("cannot create topic `{name}`: {code}"),
        }
    }
    Ok(())
}

/// Publishes each JSON line written to it as one message.
struct Publisher<'a> {
    producer: &'a BaseProducer<Deliveries>,
    topic: &'a str,
    decoder: JsonDecoder,
    key_slot: usize,
    avro: Option<(AvroEncoder, FieldSlots)>,
    /// Bytes after the last complete line.
    pending: Vec<u8>,
    payload: Vec<u8>,
    sent: u64,
    rate: Option<f64>,
    started: Instant,
}

impl Publisher<'_> {
    fn publish(&mut self, line: &[u8]) -> io::Result<()> {
        // A malformed event may not decode: it goes without key and timestamp.
        let record = self.decoder.decode(line).ok();
        let key: Option<Vec<u8>> = record
            .as_ref()
            .and_then(|r| r.fields.get(self.key_slot))
            .and_then(|v| match v {
                Value::Str(s) => Some(s.as_bytes().to_vec()),
                Value::Null => None,
                other => Some(other.to_json().to_string().into_bytes()),
            });
        let payload: &[u8] = match (&self.avro, &record) {
            (Some((encoder, slots)), Some(r)) => {
                self.payload.clear();
                let field = |name: &str| slots.get(name).and_then(|s| r.fields.get(s));
                match encoder.encode(field, &mut self.payload) {
                    Ok(()) => &self.payload,
                    Err(_) => line,
                }
            }
            _ => line,
        };
        if let Some(rate) = self.rate {
            let due = self.started + Duration::from_secs_f64(self.sent as f64 / rate);
            loop {
                let now = Instant::now();
                if now >= due {
                    break;
                }
                self.producer.poll(due - now);
            }
        }
        let mut message = BaseRecord::to(self.topic).payload(payload);
        if let Some(k) = &key {
            message = message.key(k.as_slice());
        }
        if let Some(r) = &record {
            message = message.timestamp(r.time);
        }
        loop {
            match self.producer.send(message) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), m)) => {
                    message = m;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => return Err(io::Error::other(format!("cannot send: {e}"))),
            }
        }
        self.sent += 1;
        if self.sent % 1024 == 0 {
            self.producer.poll(Duration::ZERO);
        }
        Ok(())
    }
}

impl Write for Publisher<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        let mut start = 0;
        let pending = std::mem::take(&mut self.pending);
        while let Some(n) = pending.get(start..).and_then(|rest| memchr(b'\n', rest)) {
            let result = self.publish(pending.get(start..start + n).unwrap_or(&[]));
            start += n + 1;
            if let Err(e) = result {
                self.pending = pending;
                self.pending.drain(..start);
                return Err(e);
            }
        }
        self.pending = pending;
        self.pending.drain(..start);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn memchr(byte: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|b| *b == byte)
}

/// Publishes the events and prints a summary; exit code 1 when any delivery failed.
pub fn produce(args: ProduceArgs) -> anyhow::Result<ExitCode> {
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number of events per second, not {rate}");
        }
    }
    let shape = match args.shape {
        ShapeArg::Bench => Shape::Bench,
        ShapeArg::Activity => Shape::Activity,
    };
    let start_time = match (&args.start_time, args.rate) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(_)) => Some(
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .to_string(),
        ),
        // Historical event times would fall out of the topic's time-based retention (7 days
        // by default): the events end about now, at the generator's 1000 events/s of event time.
        (None, None) => {
            const TEN_YEARS_MS: u64 = 10 * 366 * 86_400_000;
            let span_ms = args.events.min(TEN_YEARS_MS) as i64; // one event per ms
            let start = chrono::Utc::now() - chrono::Duration::milliseconds(span_ms);
            Some(start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        }
    };
    let generator = GeneratorConfig {
        shape,
        count: Some(args.events),
        partitions: 1,
        keys: args.keys,
        events_per_second_of_event_time: args.rate,
        start_time,
        max_out_of_orderness_ms: args.max_out_of_orderness_ms,
        late_ratio: args.late_ratio,
        malformed_ratio: args.malformed_ratio,
        seed: args.seed,
        ..GeneratorConfig::default()
    };
    let generator = GeneratorConfig::from_options(
        "",
        serde_json::to_value(&generator)?
            .as_object()
            .context("generator config")?,
    )
    .map_err(|issues| {
        anyhow::anyhow!(issues
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "))
    })?;

    let avro = match args.format {
        PayloadArg::Json => None,
        PayloadArg::Avro => Some(
            AvroEncoder::from_mapping(&args.schemas, args.schema_id)
                .map_err(anyhow::Error::msg)
                .context("--schemas/--schema-id")?,
        ),
    };
    let key_field = match shape {
        Shape::Bench => "key",
        Shape::Activity => "user_id",
    };
    let mut slots = FieldSlots::default();
    let key_slot = slots.slot(key_field);
    if let Some(encoder) = &avro {
        for name in encoder.field_names() {
            slots.slot(name);
        }
    }
    let ctx = DecodeContext {
        source_name: "produce".into(),
        slots: Arc::new(slots.clone()),
        event_time: EventTimeSpec {
            field: shape.time_field().name().into(),
            format: TimeFormat::Auto,
            processing_time: false,
            source_timestamp: false,
        },
    };

    let config = client_config(&args)?;
    if args.create_topic {
        create_topic(&args, &config)?;
    }
    let producer: BaseProducer<Deliveries> = config
        .create_with_context(Deliveries::default())
        .context("cannot create the producer")?;
    let started = Instant::now();
    let mut publisher = Publisher {
        producer: &producer,
        topic: &args.topic,
        decoder: JsonDecoder::new(&ctx),
        key_slot,
        avro: avro.map(|a| (a, slots)),
        pending: Vec::new(),
        payload: Vec::with_capacity(256),
        sent: 0,
        rate: args.rate,
        started,
    };
    write_events(&generator, OutputFormat::Jsonl, &mut publisher)?;
    let sent = publisher.sent;
    let flushed = producer.flush(FLUSH_TIMEOUT);
    let seconds = started.elapsed().as_secs_f64();
    let deliveries = producer.context();
    let delivered = deliveries.delivered.load(Ordering::Relaxed);
    let failed = deliveries.failed.load(Ordering::Relaxed);
    let undelivered = sent.saturating_sub(delivered + failed);
    let partitions = producer
        .client()
        .fetch_metadata(Some(args.topic.as_str()), Duration::from_secs(5))
        .ok()
        .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
        .unwrap_or(0);
    let format = match args.format {
        PayloadArg::Json => "json",
        PayloadArg::Avro => "avro",
    };
    println!(
        "produced {delivered} events to `{}` ({format}, {partitions} partitions) in {seconds:.2} s: {:.0} events/s",
        args.topic,
        delivered as f64 / seconds.max(1e-9)
    );
    if failed > 0 || undelivered > 0 || flushed.is_err() {
        let first = deliveries
            .first_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or_else(|| "-".into());
        eprintln!(
            "error: {failed} events failed and {undelivered} were not delivered in time; \
             first error: {first}"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
