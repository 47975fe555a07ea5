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
    client_config, drain, ensure_topic, is_fenced, partition_counts, serve_deliveries, warm_up,
    TopicError, TopicSpec, DRAIN_TIMEOUT, REQUEST_TIMEOUT,
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
    name: String,
    config: KafkaSinkConfig,
    txn_id: String,
    producer_config: ClientConfig,
    /// The producer; `None` after a failure until it is re-created.
    producer: Option<BaseProducer>,
    /// A producer created when the sink was opened, not yet initialised, connecting on a
    /// thread of its own while the job opens everything else, so the first
    /// `init_transactions` is quick.
    warm: Option<std::thread::JoinHandle<BaseProducer>>,
    fence_reader: BaseConsumer,
    /// The last epoch known to have landed.
    fence: Option<Epoch>,
    /// For an exchange sink: the topic's partition count. Staged bytes are then exchange items
    /// with explicit target partitions (see `weir_engine::runtime::exchange`).
    exchange: Option<u32>,
}

/// The encoder of an exchange sink: stage 1 writes exchange items itself; outputs never reach
/// an exchange sink.
struct NoEncoder;

impl SinkEncoder for NoEncoder {
    fn encode(&mut self, _output: &Output, _staged: &mut Vec<u8>) {}
}

impl KafkaSink {
    /// Checks (or creates) the topic and prepares the producer settings; connects in
    /// [`Sink::recover`].
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
        // Created first and connected while the job opens everything else: a transactional
        // producer asked to initialise before a broker connection is up waits for a retry
        // (seen: 0.5 s instead of 10 ms).
        let producer: BaseProducer = producer_config
            .create()
            .map_err(|e| SinkError::Fatal(format!("sink `{name}`: {e}")))?;
        match config.create_partitions {
            Some(partitions) => ensure_topic(
                &base,
                &TopicSpec {
                    name: config.topic.clone(),
                    partitions,
                    compacted: false,
                    replication: config.replication_factor,
                },
            ),
            None => partition_counts(&base, std::slice::from_ref(&config.topic)).map(drop),
        }
        .map_err(|e| match e {
            TopicError::Missing(m) => SinkError::Fatal(format!(
                "sinks.{name}.topic: {m} (create it, or set `create_partitions`)"
            )),
            TopicError::Unavailable(m) => SinkError::Retryable(format!("sink `{name}`: {m}")),
        })?;
        let warm = warm_up(producer, config.topic.clone());

        let mut fence_config = base;
        fence_config
            .set("group.id", &txn_id)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        let fence_reader: BaseConsumer = fence_config
            .create()
            .map_err(|e| SinkError::Fatal(format!("sink `{name}`: {e}")))?;
        Ok(KafkaSink {
            name: name.to_string(),
            config: config.clone(),
            txn_id,
            producer_config,
            producer: None,
            warm: Some(warm),
            fence_reader,
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
        let items = exchange::read_staged(staged)
            .map_err(|e| SinkError::Fatal(format!("sink `{}`: staged items: {e}", self.name)))?;
        for item in items {
            let targets = match item.partition {
                Some(p) => p..p + 1,
                None => 0..partitions,
            };
            for partition in targets {
                let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.config.topic)
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

    /// Creates the producer (fencing any older instance and settling its open transaction)
    /// and reads the fence.
    fn connect(&mut self) -> Result<(), SinkError> {
        self.producer = None;
        // After a failure the producer is always a new one: the failed one may be fenced.
        let producer: BaseProducer = match self.warm.take().and_then(|w| w.join().ok()) {
            Some(warm) => warm,
            None => self
                .producer_config
                .create()
                .map_err(|e| SinkError::Fatal(format!("sink `{}`: {e}", self.name)))?,
        };
        producer
            .init_transactions(TXN_TIMEOUT)
            .map_err(|e| self.error("initialise transactions", &e))?;
        self.fence = self.read_fence()?;
        self.producer = Some(producer);
        Ok(())
    }

    fn fence_partition(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.config.topic, 0);
        tpl
    }

    fn read_fence(&self) -> Result<Option<Epoch>, SinkError> {
        let committed = self
            .fence_reader
            .committed_offsets(self.fence_partition(), REQUEST_TIMEOUT)
            .map_err(|e| self.error("read the epoch fence", &e))?;
        Ok(committed
            .find_partition(&self.config.topic, 0)
            .and_then(|p| match p.offset() {
                Offset::Offset(o) if o > 0 => Some(o as Epoch),
                _ => None,
            }))
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
                let mut base: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.config.topic)
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
            .add_partition_offset(&self.config.topic, 0, Offset::Offset(epoch as i64))
            .map_err(|e| SinkError::Fatal(e.to_string()))?;
        let group = self
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

impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn encoder(&self) -> Box<dyn SinkEncoder> {
        if self.exchange.is_some() {
            return Box::new(NoEncoder);
        }
        Box::new(KafkaEncoder {
            key_fields: self.config.key.clone(),
        })
    }

    fn recover(&mut self, _committed: Option<Epoch>) -> Result<(), SinkError> {
        // Aborted transactions are invisible to read_committed readers: nothing to clean.
        self.connect()
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
                tracing::warn!(sink = %self.name, epoch, error = %e, retryable, "Kafka transaction failed");
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
