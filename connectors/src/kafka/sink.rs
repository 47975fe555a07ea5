//! The Kafka sink: one transactional producer per (job, sink, task); each checkpoint epoch is
//! one transaction.
//!
//! The epoch fence lives in the same transaction: `send_offsets_to_transaction` commits offset
//! `E` for the fence group `weir.<job>.<sink>.<task>` on partition 0 of the sink's topic.
//! Offsets of a transaction become visible only when it commits, so the fence reads "epoch E
//! landed" exactly when E's records did. A re-commit of E after a crash finds the fence at E
//! and does nothing; a commit that failed midway is resolved by re-creating the producer
//! (`init_transactions` completes or aborts whatever the previous instance left open, and fences
//! a zombie with the same `transactional.id`) and reading the fence again.
//!
//! Connecting (the topic's check or creation, the producer's initialisation, the fence read)
//! starts when the sink is opened and runs on a thread of its own, so a task reads its input
//! meanwhile; the first commit waits for it. Nothing reaches the topic before that commit, so
//! the order that makes the fence sound (initialise, then read the fence, then produce) holds.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use weir_engine::checkpoint::Epoch;
use weir_engine::event::{Output, Value};
use weir_engine::runtime::exchange;
use weir_engine::runtime::{Sink, SinkEncoder, SinkError, SinkScope};

use super::client::SetDefault;
use super::client::{
    client_config, drain, ensure_topic, init_transactions, is_fenced, partition_counts,
    serve_deliveries, TopicError, TopicSpec, DRAIN_TIMEOUT, REQUEST_TIMEOUT,
};
use super::config::KafkaSinkConfig;

/// How long a transaction commit or abort may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// `transactional.id` and fence group of a sink in a scope.
pub fn fence_id(scope: &SinkScope, sink: &str) -> String {
    format!("weir.{}.{}.{}", scope.job, sink, scope.task)
}

/// Stages outputs as records: `[key len u32 | u32::MAX][key][value len u32][value]
/// [header count u16]([name len u16][name][value len u32][value])*`.
struct KafkaEncoder {
    key_fields: Vec<String>,
}

fn put_bytes(staged: &mut Vec<u8>, bytes: &[u8]) {
    staged.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    staged.extend_from_slice(bytes);
}

fn value_text(value: &Value, out: &mut String) {
    match value {
        Value::Null => {}
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(f) => out.push_str(&f.to_string()),
        Value::Str(s) => out.push_str(s),
    }
}

impl KafkaEncoder {
    /// The record key of `output`, if it has one.
    fn key(&self, output: &Output) -> Option<String> {
        let mut key = String::new();
        if self.key_fields.is_empty() {
            let Output::Result(r) = output else {
                return None;
            };
            for (i, v) in r.key.values().unwrap_or_default().iter().enumerate() {
                if i > 0 {
                    key.push(':');
                }
                value_text(v, &mut key);
            }
            return Some(key);
        }
        let json = output.to_json();
        for (i, name) in self.key_fields.iter().enumerate() {
            if i > 0 {
                key.push(':');
            }
            match json.get(name) {
                Some(serde_json::Value::String(s)) => key.push_str(s),
                Some(serde_json::Value::Null) | None => {}
                Some(other) => key.push_str(&other.to_string()),
            }
        }
        Some(key)
    }
}

impl SinkEncoder for KafkaEncoder {
    fn encode(&mut self, output: &Output, staged: &mut Vec<u8>) {
        match self.key(output) {
            Some(key) => put_bytes(staged, key.as_bytes()),
            None => staged.extend_from_slice(&u32::MAX.to_be_bytes()),
        }
        let mut headers: Vec<(&str, Vec<u8>)> = Vec::new();
        match output {
            Output::DeadLetter(d) => {
                put_bytes(staged, &d.raw);
                headers.push(("weir.error", d.error.as_bytes().to_vec()));
                headers.push(("weir.source", d.source.as_bytes().to_vec()));
                headers.push(("weir.partition", d.partition.as_bytes().to_vec()));
                headers.push(("weir.offset", d.offset.as_bytes().to_vec()));
            }
            other => {
                let value = serde_json::to_vec(&other.to_json()).unwrap_or_default();
                put_bytes(staged, &value);
                if let Output::Late(l) = other {
                    headers.push(("weir.late_ms", l.lateness_ms.to_string().into_bytes()));
                }
            }
        }
        staged.extend_from_slice(&(headers.len() as u16).to_be_bytes());
        for (name, value) in headers {
            staged.extend_from_slice(&(name.len() as u16).to_be_bytes());
            staged.extend_from_slice(name.as_bytes());
            put_bytes(staged, &value);
        }
    }
}

/// One staged record, borrowed from the staged bytes.
struct StagedRecord<'a> {
    key: Option<&'a [u8]>,
    value: &'a [u8],
    headers: Vec<(&'a str, &'a [u8])>,
}

/// Reads the records [`KafkaEncoder`] staged. Malformed framing is an error (the staged bytes
/// were written by this binary, so it means corruption).
fn read_staged(mut bytes: &[u8]) -> Result<Vec<StagedRecord<'_>>, SinkError> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], SinkError> {
        if bytes.len() < n {
            return Err(SinkError::Fatal(
                "staged Kafka records are truncated".into(),
            ));
        }
        let (head, tail) = bytes.split_at(n);
        *bytes = tail;
        Ok(head)
    }
    fn take_u32(bytes: &mut &[u8]) -> Result<u32, SinkError> {
        Ok(u32::from_be_bytes(
            take(bytes, 4)?.try_into().unwrap_or_default(),
        ))
    }
    fn take_u16(bytes: &mut &[u8]) -> Result<u16, SinkError> {
        Ok(u16::from_be_bytes(
            take(bytes, 2)?.try_into().unwrap_or_default(),
        ))
    }
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let key_len = take_u32(&mut bytes)?;
        let key = if key_len == u32::MAX {
            None
        } else {
            Some(take(&mut bytes, key_len as usize)?)
        };
        let value_len = take_u32(&mut bytes)? as usize;
        let value = take(&mut bytes, value_len)?;
        let count = take_u16(&mut bytes)?;
        let mut headers = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let name_len = take_u16(&mut bytes)? as usize;
            let name = std::str::from_utf8(take(&mut bytes, name_len)?)
                .map_err(|_| SinkError::Fatal("staged header name is not UTF-8".into()))?;
            let len = take_u32(&mut bytes)? as usize;
            headers.push((name, take(&mut bytes, len)?));
        }
        records.push(StagedRecord {
            key,
            value,
            headers,
        });
    }
    Ok(records)
}

/// A transactional producer and the fence it keeps.
pub struct KafkaSink {
    /// The sink's settings and fence reader, shared with the thread that connects.
    connector: Arc<Connector>,
    /// The producer; `None` until connected, and after a failure until it is re-created.
    producer: Option<BaseProducer>,
    /// The connection [`KafkaSink::open`] started; taken by the first commit.
    connecting: Option<JoinHandle<Result<Connection, SinkError>>>,
    /// Whether the topic passed its check (or was created); until then every connection
    /// checks it first.
    topic_checked: bool,
    /// The last epoch known to have landed.
    fence: Option<Epoch>,
    /// For an exchange sink: the topic's partition count. Staged bytes are then exchange items
    /// with explicit target partitions (see `weir_engine::runtime::exchange`).
    exchange: Option<u32>,
}

/// An initialised producer and the fence read after its initialisation.
struct Connection {
    producer: BaseProducer,
    fence: Option<Epoch>,
}

/// A sink's settings and what connecting needs, shared with the thread that connects.
struct Connector {
    name: String,
    txn_id: String,
    config: KafkaSinkConfig,
    /// The client settings of the topic check.
    base: ClientConfig,
    /// The settings of the sink's transactional producers.
    producer_config: ClientConfig,
    /// A consumer of the fence group: reads the fence, and gives the group's metadata to
    /// `send_offsets_to_transaction`.
    fence_reader: BaseConsumer,
}

impl Connector {
    /// A new transactional producer, not yet initialised.
    fn producer(&self) -> Result<BaseProducer, SinkError> {
        self.producer_config
            .create()
            .map_err(|e| SinkError::Fatal(format!("sink `{}`: {e}", self.name)))
    }

    /// Checks (or creates) the topic unless `topic_checked`, initialises `producer` (fencing
    /// older instances with the same `transactional.id` and settling their open transaction),
    /// then reads the fence.
    fn connect(
        &self,
        producer: BaseProducer,
        topic_checked: bool,
    ) -> Result<Connection, SinkError> {
        if !topic_checked {
            self.check_topic()?;
        }
        init_transactions(&producer, &self.config.topic, TXN_TIMEOUT)
            .map_err(|e| self.error("initialise transactions", &e))?;
        let fence = read_fence(&self.fence_reader, &self.config.topic)
            .map_err(|e| self.error("read the epoch fence", &e))?;
        Ok(Connection { producer, fence })
    }

    /// The error of a failed Kafka call: fatal when a newer instance fenced this one,
    /// retryable otherwise.
    fn error(&self, what: &str, e: &KafkaError) -> SinkError {
        let text = format!("sink `{}`: cannot {what}: {e}", self.name);
        if is_fenced(e) {
            SinkError::Fatal(format!(
                "{text} (another worker took this task over with transactional.id {})",
                self.txn_id
            ))
        } else {
            SinkError::Retryable(text)
        }
    }

    /// The topic exists (created with `create_partitions` if set and missing).
    fn check_topic(&self) -> Result<(), SinkError> {
        let name = &self.name;
        match self.config.create_partitions {
            Some(partitions) => ensure_topic(
                &self.base,
                &TopicSpec {
                    name: self.config.topic.clone(),
                    partitions,
                    compacted: false,
                    replication: self.config.replication_factor,
                },
            ),
            None => {
                partition_counts(&self.base, std::slice::from_ref(&self.config.topic)).map(drop)
            }
        }
        .map_err(|e| match e {
            TopicError::Missing(m) => SinkError::Fatal(format!(
                "sinks.{name}.topic: {m} (create it, or set `create_partitions`)"
            )),
            TopicError::Unavailable(m) => SinkError::Retryable(format!("sink `{name}`: {m}")),
        })
    }
}

/// The fence partition of `topic`: where the fence group's offset is the last epoch landed.
fn fence_partition(topic: &str) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    tpl
}

/// The last epoch that landed in `topic`, as the fence group of `fence_reader` records it.
fn read_fence(fence_reader: &BaseConsumer, topic: &str) -> Result<Option<Epoch>, KafkaError> {
    let committed = fence_reader.committed_offsets(fence_partition(topic), REQUEST_TIMEOUT)?;
    Ok(committed
        .find_partition(topic, 0)
        .and_then(|p| match p.offset() {
            Offset::Offset(o) if o > 0 => Some(o as Epoch),
            _ => None,
        }))
}

/// The encoder of an exchange sink: stage 1 writes exchange items itself; outputs never reach
/// an exchange sink.
struct NoEncoder;

impl SinkEncoder for NoEncoder {
    fn encode(&mut self, _output: &Output, _staged: &mut Vec<u8>) {}
}

impl KafkaSink {
    /// Prepares the producer settings and starts connecting on a thread of its own (see the
    /// module documentation); the first commit waits for the connection and reports its
    /// errors, a topic that does not exist without `create_partitions` among them.
    pub fn open(
        name: &str,
        scope: &SinkScope,
        config: &KafkaSinkConfig,
    ) -> Result<KafkaSink, SinkError> {
        let base = client_config(&config.brokers, &config.settings);
        let txn_id = fence_id(scope, name);
        let mut producer_config = base.clone();
        producer_config
            .set("transactional.id", &txn_id)
            .set("enable.idempotence", "true")
            .set(
                "transaction.timeout.ms",
                config.transaction_timeout_ms.to_string(),
            )
            .set_default("linger.ms", "5")
            .set_default("queue.buffering.max.messages", "1000000");
        let mut fence_config = base.clone();
        fence_config
            .set("group.id", &txn_id)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        let fence_reader: BaseConsumer = fence_config
            .create()
            .map_err(|e| SinkError::Fatal(format!("sink `{name}`: {e}")))?;
        let connector = Arc::new(Connector {
            name: name.to_string(),
            txn_id,
            config: config.clone(),
            base,
            producer_config,
            fence_reader,
        });
        let producer = connector.producer()?;
        let started = connector.clone();
        let connecting = std::thread::Builder::new()
            .name(format!("weir-sink-{name}"))
            .spawn(move || started.connect(producer, false))
            .map_err(|e| SinkError::Fatal(format!("sink `{name}`: cannot start a thread: {e}")))?;
        Ok(KafkaSink {
            connector,
            producer: None,
            connecting: Some(connecting),
            topic_checked: false,
            fence: None,
            exchange: None,
        })
    }

    /// The exchange sink of a repartitioned pipeline: the same transactional, fenced epoch
    /// commits, producing exchange items to their target partitions of `config.topic`, which
    /// must have (or is created with) `partitions` partitions.
    pub fn open_exchange(
        name: &str,
        scope: &SinkScope,
        config: &KafkaSinkConfig,
        partitions: u32,
    ) -> Result<KafkaSink, SinkError> {
        let mut sink = KafkaSink::open(name, scope, config)?;
        sink.exchange = Some(partitions);
        Ok(sink)
    }

    /// Queues `record`, waiting while the producer's queue is full.
    fn send<'a>(
        &self,
        producer: &BaseProducer,
        mut record: BaseRecord<'a, [u8], [u8]>,
    ) -> Result<(), SinkError> {
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    serve_deliveries(producer);
                }
                Err((e, _)) => return Err(self.error("produce", &e)),
            }
        }
    }

    /// Produces the exchange items in `staged`, markers to every partition.
    fn produce_exchange(
        &self,
        producer: &BaseProducer,
        partitions: u32,
        staged: &[u8],
    ) -> Result<(), SinkError> {
        let items = exchange::read_staged(staged).map_err(|e| {
            SinkError::Fatal(format!("sink `{}`: staged items: {e}", self.connector.name))
        })?;
        for item in items {
            let targets = match item.partition {
                Some(p) => p..p + 1,
                None => 0..partitions,
            };
            for partition in targets {
                let mut record: BaseRecord<'_, [u8], [u8]> =
                    BaseRecord::to(&self.connector.config.topic)
                        .payload(item.value)
                        .partition(partition as i32);
                if !item.key.is_empty() {
                    record = record.key(item.key);
                }
                self.send(producer, record)?;
            }
        }
        Ok(())
    }

    fn error(&self, what: &str, e: &KafkaError) -> SinkError {
        self.connector.error(what, e)
    }

    /// Makes `self.producer` an initialised producer with the fence read after it: the
    /// connection `open` started, else a new one (after a failure the old producer may be
    /// fenced, so it is never reused).
    fn connect(&mut self) -> Result<(), SinkError> {
        self.producer = None;
        let connection = match self.connecting.take() {
            Some(started) => started.join().unwrap_or_else(|_| {
                Err(SinkError::Retryable(format!(
                    "sink `{}`: the connecting thread panicked",
                    self.connector.name
                )))
            }),
            None => self
                .connector
                .connect(self.connector.producer()?, self.topic_checked),
        }?;
        self.topic_checked = true;
        self.fence = connection.fence;
        self.producer = Some(connection.producer);
        Ok(())
    }

    /// Produces `staged` and the fence for `epoch` in one transaction.
    fn transaction(
        &self,
        producer: &BaseProducer,
        epoch: Epoch,
        staged: &[u8],
    ) -> Result<(), SinkError> {
        producer
            .begin_transaction()
            .map_err(|e| self.error("begin a transaction", &e))?;
        if let Some(partitions) = self.exchange {
            self.produce_exchange(producer, partitions, staged)?;
        } else {
            for record in &read_staged(staged)? {
                let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
                for (name, value) in &record.headers {
                    headers = headers.insert(Header {
                        key: name,
                        value: Some(*value),
                    });
                }
                let mut base: BaseRecord<'_, [u8], [u8]> =
                    BaseRecord::to(&self.connector.config.topic)
                        .payload(record.value)
                        .headers(headers);
                if let Some(key) = record.key {
                    base = base.key(key);
                }
                self.send(producer, base)?;
            }
        }
        let mut fence = TopicPartitionList::new();
        fence
            .add_partition_offset(
                &self.connector.config.topic,
                0,
                Offset::Offset(epoch as i64),
            )
            .map_err(|e| SinkError::Fatal(e.to_string()))?;
        let group = self
            .connector
            .fence_reader
            .group_metadata()
            .ok_or_else(|| SinkError::Fatal("no group metadata for the epoch fence".into()))?;
        producer
            .send_offsets_to_transaction(&fence, &group, TXN_TIMEOUT)
            .map_err(|e| self.error("add the epoch fence to the transaction", &e))?;
        drain(producer, DRAIN_TIMEOUT);
        producer
            .commit_transaction(TXN_TIMEOUT)
            .map_err(|e| self.error("commit the transaction", &e))
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        // A connection still being made would initialise its producer after this sink is gone,
        // and could fence the next owner of the task, which may start right after.
        if let Some(connecting) = self.connecting.take() {
            let _ = connecting.join();
        }
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.connector.name
    }

    fn encoder(&self) -> Box<dyn SinkEncoder> {
        if self.exchange.is_some() {
            return Box::new(NoEncoder);
        }
        Box::new(KafkaEncoder {
            key_fields: self.connector.config.key.clone(),
        })
    }

    fn recover(&mut self, _committed: Option<Epoch>) -> Result<(), SinkError> {
        // Aborted transactions are invisible to read_committed readers: nothing to clean. The
        // connection `open` started goes on; the first commit waits for it.
        Ok(())
    }

    fn commit(&mut self, epoch: Epoch, staged: &[u8]) -> Result<(), SinkError> {
        if self.producer.is_none() {
            self.connect()?;
        }
        if self.fence.is_some_and(|f| f >= epoch) {
            return Ok(());
        }
        let Some(producer) = self.producer.take() else {
            return Err(SinkError::Retryable("producer unavailable".into()));
        };
        match self.transaction(&producer, epoch, staged) {
            Ok(()) => {
                self.fence = Some(epoch);
                self.producer = Some(producer);
                Ok(())
            }
            Err(e) => {
                // In doubt: the next attempt re-creates the producer, which settles the
                // transaction, and reads the fence again before producing anything.
                let _ = producer.abort_transaction(Duration::from_secs(5));
                let retryable = matches!(e, SinkError::Retryable(_));
                tracing::warn!(sink = %self.connector.name, epoch, error = %e, retryable, "Kafka transaction failed");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use compact_str::CompactString;
    use weir_engine::event::{DeadLetter, EventRecord};

    #[test]
    fn staged_records_round_trip() {
        let mut encoder = KafkaEncoder {
            key_fields: vec!["user".into()],
        };
        let mut staged = Vec::new();
        let event = Output::Event(EventRecord {
            pipeline: "p".into(),
            time: 5,
            fields: vec![(CompactString::from("user"), Value::Str("u1".into()))],
        });
        encoder.encode(&event, &mut staged);
        let dead = Output::DeadLetter(DeadLetter {
            source: "in".into(),
            partition: "events/3".into(),
            offset: "17".into(),
            raw: b"{not json".to_vec(),
            error: "bad".into(),
        });
        encoder.encode(&dead, &mut staged);
        let records = read_staged(&staged).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].key, Some(&b"u1"[..]));
        let value: serde_json::Value = serde_json::from_slice(records[0].value).unwrap();
        assert_eq!(value["user"], "u1");
        assert_eq!(records[1].value, b"{not json");
        assert!(records[1]
            .headers
            .contains(&("weir.partition", &b"events/3"[..])));
        assert!(records[1].headers.contains(&("weir.offset", &b"17"[..])));
        assert!(read_staged(&staged[..staged.len() - 1]).is_err());
    }
}
