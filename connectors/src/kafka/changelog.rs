//! A task's checkpoint replica in a compacted changelog topic: partition `i` of
//! `<job>-changelog` holds task `pi`'s state.
//!
//! Every checkpoint batch is one transaction of a producer whose `transactional.id` belongs to
//! the task (`weir.<job>.changelog.<task>`): a new owner's `init_transactions` aborts what a
//! dead owner left open and fences a zombie, whose next batch then fails as
//! [`FleetError::Fenced`]. Readers use `read_committed`, so a restore sees whole batches only.
//!
//! Records: key = table byte ‖ state key, value = state value, a delete is a tombstone; a
//! range delete is a record keyed `0xFF ‖ table byte ‖ start length (u32) ‖ start ‖ end`.
//! Replaying the log in order rebuilds the store, and stays right under compaction: compaction
//! only drops a record when a later one has the same key, which supersedes it.
//!
//! Values above [`CHUNK_BYTES`] (an epoch's staged outputs after a long catch-up) are split,
//! because brokers refuse records above ~1 MB: chunk records keyed `0xFE ‖ table byte ‖ index
//! (u32) ‖ state key` come first, then the state key's record with a placeholder value and a
//! `weir.chunks` header giving the count. A restore assembles the value from the chunks seen
//! since; if one is missing, compaction removed it because a later version rewrote it, and
//! that later version supersedes this one. Chunks of a key that is deleted or rewritten
//! smaller get tombstones, so they do not pile up.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use weir_engine::checkpoint::{Epoch, Progress, COMMITTED_KEY, PREPARED_KEY};
use weir_engine::runtime::fleet::{CheckpointReplica, FleetError};
use weir_engine::state::{BatchOp, StateBatch, StateStore, Table};

use super::client::SetDefault;
use super::client::{
    drain, init_transactions, is_fenced, is_retryable, serve_deliveries, ClosedInBackground,
    EofAwareContext, DRAIN_TIMEOUT, REQUEST_TIMEOUT,
};

/// Marks a range-delete record key.
const RANGE_MARK: u8 = 0xFF;
/// Marks a chunk record key.
const CHUNK_MARK: u8 = 0xFE;
/// The largest value written as one record.
pub const CHUNK_BYTES: usize = 512 * 1024;
/// The header of a chunked value's record: its chunk count (u32, big-endian).
const CHUNKS_HEADER: &str = "weir.chunks";
/// Operations copied per local write during a restore.
const RESTORE_BATCH: usize = 10_000;
/// How long a transaction commit may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

fn table_byte(table: Table) -> u8 {
    Table::ALL.iter().position(|t| *t == table).unwrap_or(0) as u8
}

fn table_of(byte: u8) -> Option<Table> {
    Table::ALL.get(byte as usize).copied()
}

/// One changelog record decoded.
#[derive(Debug, PartialEq, Eq)]
enum LogOp<'a> {
    Put(Table, &'a [u8], &'a [u8]),
    Delete(Table, &'a [u8]),
    DeleteRange(Table, &'a [u8], &'a [u8]),
    /// Chunk `index` of a large value of the state key (`None`: the chunk's tombstone).
    Chunk(Vec<u8>, u32, Option<&'a [u8]>),
    /// A large value made of this many chunks, written just before.
    Chunked(Table, &'a [u8], u32),
}

fn decode_record<'a>(
    key: &'a [u8],
    value: Option<&'a [u8]>,
    chunks: Option<u32>,
) -> Result<LogOp<'a>, String> {
    let bad = || format!("malformed changelog record key ({} bytes)", key.len());
    let (&first, rest) = key.split_first().ok_or_else(bad)?;
    if first == CHUNK_MARK {
        if rest.len() < 5 || table_of(rest[0]).is_none() {
            return Err(bad());
        }
        let index = u32::from_be_bytes(rest[1..5].try_into().map_err(|_| bad())?);
        let mut owner = vec![rest[0]];
        owner.extend_from_slice(&rest[5..]);
        return Ok(LogOp::Chunk(owner, index, value));
    }
    if first == RANGE_MARK {
        let (&t, rest) = rest.split_first().ok_or_else(bad)?;
        let table = table_of(t).ok_or_else(bad)?;
        if rest.len() < 4 {
            return Err(bad());
        }
        let (len, rest) = rest.split_at(4);
        let len = u32::from_be_bytes(len.try_into().map_err(|_| bad())?) as usize;
        if rest.len() < len {
            return Err(bad());
        }
        let (start, end) = rest.split_at(len);
        return Ok(LogOp::DeleteRange(table, start, end));
    }
    let table = table_of(first).ok_or_else(bad)?;
    Ok(match (value, chunks) {
        (Some(_), Some(n)) => LogOp::Chunked(table, rest, n),
        (Some(v), None) => LogOp::Put(table, rest, v),
        (None, _) => LogOp::Delete(table, rest),
    })
}

fn chunk_key(owner: &[u8], index: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(5 + owner.len());
    key.push(CHUNK_MARK);
    key.push(owner[0]);
    key.extend_from_slice(&index.to_be_bytes());
    key.extend_from_slice(&owner[1..]);
    key
}

fn range_key(table: Table, start: &[u8], end: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(6 + start.len() + end.len());
    key.push(RANGE_MARK);
    key.push(table_byte(table));
    key.extend_from_slice(&(start.len() as u32).to_be_bytes());
    key.extend_from_slice(start);
    key.extend_from_slice(end);
    key
}

fn state_key(table: Table, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(table_byte(table));
    k.extend_from_slice(key);
    k
}

fn fleet_error(what: &str, e: &KafkaError) -> FleetError {
    if is_fenced(e) {
        FleetError::Fenced(format!("changelog: {what}: {e}"))
    } else if is_retryable(e) {
        FleetError::Retryable(format!("changelog: {what}: {e}"))
    } else {
        FleetError::Fatal(format!("changelog: {what}: {e}"))
    }
}

/// Task `task`'s replica in partition `partition` of `topic`.
pub struct ChangelogReplica {
    topic: String,
    partition: i32,
    task: String,
    producer: BaseProducer,
    reader_config: ClientConfig,
    /// State keys (table byte ‖ key) whose value is chunked in the log, with their chunk count.
    chunked: Mutex<BTreeMap<Vec<u8>, u32>>,
}

/// Called with each changelog record's key, value (`None`: a tombstone) and chunk count (the
/// `weir.chunks` header).
type RecordVisitor<'a> =
    dyn FnMut(&[u8], Option<&[u8]>, Option<u32>) -> Result<(), FleetError> + 'a;

impl ChangelogReplica {
    /// Opens the replica, fencing any earlier owner of the task (their open batch is aborted).
    pub fn open(
        client: &ClientConfig,
        job: &str,
        task: &str,
        topic: &str,
        partition: i32,
    ) -> Result<ChangelogReplica, FleetError> {
        let mut producer_config = client.clone();
        producer_config
            .set("transactional.id", format!("weir.{job}.changelog.{task}"))
            .set("enable.idempotence", "true")
            .set_default("linger.ms", "5")
            .set_default("queue.buffering.max.messages", "1000000")
            .set_default("compression.type", "lz4");
        let producer: BaseProducer = producer_config
            .create()
            .map_err(|e| FleetError::Fatal(format!("changelog producer: {e}")))?;
        init_transactions(&producer, topic, TXN_TIMEOUT)
            .map_err(|e| fleet_error("initialise transactions", &e))?;
        let mut reader_config = client.clone();
        // librdkafka assigns partitions only to a consumer with a group; this one never
        // joins it or commits.
        reader_config
            .set("group.id", format!("weir.{job}.restore"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            // Else an offset the broker refuses sends the reader to the end, and the restore
            // would miss state without a word.
            .set("auto.offset.reset", "error")
            .set_default("fetch.max.bytes", "52428800")
            .set_default("max.partition.fetch.bytes", "16777216");
        Ok(ChangelogReplica {
            topic: topic.to_string(),
            partition,
            task: task.to_string(),
            producer,
            reader_config,
            chunked: Mutex::default(),
        })
    }

    /// Reads the partition from `from` (or the start) to its end, calling `visit` with each
    /// record's key and value in order. Returns the start offset used.
    fn read(
        &self,
        from_end: Option<i64>,
        visit: &mut RecordVisitor<'_>,
    ) -> Result<(i64, i64), FleetError> {
        // Asked through the producer, connected since `open`: a task of an empty log (every
        // task of a new job) then creates no reader at all. A producer's queries are
        // read_committed, as the reader's: `high` is the last stable offset.
        let (low, high) = self
            .producer
            .client()
            .fetch_watermarks(&self.topic, self.partition, REQUEST_TIMEOUT)
            .map_err(|e| fleet_error("read the watermarks", &e))?;
        let start = match from_end {
            Some(n) => (high - n).max(low),
            None => low,
        };
        if start >= high {
            return Ok((start, low));
        }
        // Closed in the background: a task start reads twice (progress, then restore).
        let consumer: ClosedInBackground<BaseConsumer<EofAwareContext>> = self
            .reader_config
            .create_with_context(EofAwareContext)
            .map(ClosedInBackground::new)
            .map_err(|e| FleetError::Fatal(format!("changelog reader: {e}")))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, self.partition, Offset::Offset(start))
            .map_err(|e| FleetError::Fatal(e.to_string()))?;
        consumer
            .assign(&tpl)
            .map_err(|e| fleet_error("assign the partition", &e))?;
        let deadline_idle = Duration::from_secs(30);
        let mut last_progress = Instant::now();
        loop {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    last_progress = Instant::now();
                    let chunks = m.headers().and_then(|h| {
                        h.iter()
                            .find(|h| h.key == CHUNKS_HEADER)
                            .and_then(|h| h.value)
                            .and_then(|v| <[u8; 4]>::try_from(v).ok())
                            .map(u32::from_be_bytes)
                    });
                    visit(m.key().unwrap_or_default(), m.payload(), chunks)?;
                    if m.offset() + 1 >= high {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => return Err(fleet_error("read", &e)),
                None if last_progress.elapsed() > deadline_idle => {
                    return Err(FleetError::Retryable(format!(
                        "changelog {}/{}: no progress for 30 s while reading",
                        self.topic, self.partition
                    )))
                }
                None => {}
            }
        }
        Ok((start, low))
    }
}

fn epoch_value(value: Option<&[u8]>) -> Option<Epoch> {
    value
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map(Epoch::from_be_bytes)
}

impl CheckpointReplica for ChangelogReplica {
    fn progress(&self) -> Result<Progress, FleetError> {
        // The epoch keys are rewritten by every checkpoint, so they sit near the end of the
        // log: read a growing tail until both are found or the whole log was read.
        let prepared_key = state_key(Table::Meta, PREPARED_KEY);
        let committed_key = state_key(Table::Meta, COMMITTED_KEY);
        let mut tail = 256i64;
        loop {
            let mut progress = Progress::default();
            let (mut seen_prepared, mut seen_committed) = (false, false);
            let (start, low) = self.read(Some(tail), &mut |key, value, _| {
                if key == prepared_key.as_slice() {
                    progress.prepared = epoch_value(value);
                    seen_prepared = true;
                } else if key == committed_key.as_slice() {
                    progress.committed = epoch_value(value);
                    seen_committed = true;
                }
                Ok(())
            })?;
            if (seen_prepared && seen_committed) || start <= low {
                return Ok(progress);
            }
            tail = tail.saturating_mul(8);
        }
    }

    fn restore(&self, store: &dyn StateStore) -> Result<u64, FleetError> {
        let started = Instant::now();
        let mut batch = StateBatch::default();
        let mut records = 0u64;
        let flush = |batch: &mut StateBatch| -> Result<(), FleetError> {
            store
                .write(std::mem::take(batch))
                .map_err(|e| FleetError::Fatal(format!("restore into the local store: {e}")))
        };
        let mut pending: HashMap<Vec<u8>, Vec<Option<Vec<u8>>>> = HashMap::new();
        let mut chunked = BTreeMap::new();
        self.read(None, &mut |key, value, chunks| {
            match decode_record(key, value, chunks).map_err(FleetError::Fatal)? {
                // Most logs hold no chunked value: skip building the lookup key then.
                LogOp::Put(t, k, v) => {
                    if !chunked.is_empty() {
                        chunked.remove(&state_key(t, k));
                    }
                    batch.put(t, k, v)
                }
                LogOp::Delete(t, k) => {
                    if !chunked.is_empty() {
                        chunked.remove(&state_key(t, k));
                    }
                    batch.delete(t, k)
                }
                LogOp::DeleteRange(t, s, e) => {
                    let (lo, hi) = (state_key(t, s), state_key(t, e));
                    chunked.retain(|k: &Vec<u8>, _| *k < lo || *k >= hi);
                    batch.delete_range(t, s, e)
                }
                LogOp::Chunk(owner, index, data) => {
                    let parts = pending.entry(owner).or_default();
                    if parts.len() <= index as usize {
                        parts.resize(index as usize + 1, None);
                    }
                    parts[index as usize] = data.map(<[u8]>::to_vec);
                }
                LogOp::Chunked(t, k, n) => {
                    let owner = state_key(t, k);
                    let parts = pending.remove(&owner).unwrap_or_default();
                    let complete = parts.len() >= n as usize
                        && parts[..n as usize].iter().all(Option::is_some);
                    if complete {
                        let value: Vec<u8> = parts[..n as usize]
                            .iter()
                            .flatten()
                            .flatten()
                            .copied()
                            .collect();
                        batch.put(t, k, value);
                        chunked.insert(owner, n);
                    }
                    // Else compaction dropped a chunk that a later version rewrote; that
                    // later version supersedes this one.
                }
            }
            records += 1;
            if batch.ops.len() >= RESTORE_BATCH {
                flush(&mut batch)?;
            }
            Ok(())
        })?;
        flush(&mut batch)?;
        *self.chunked.lock().unwrap_or_else(|e| e.into_inner()) = chunked;
        tracing::info!(
            task = %self.task,
            records,
            restore_ms = started.elapsed().as_millis() as u64,
            "changelog replayed"
        );
        Ok(records)
    }

    fn replicate(&self, batch: &StateBatch) -> Result<(), FleetError> {
        self.producer
            .begin_transaction()
            .map_err(|e| fleet_error("begin a transaction", &e))?;
        let result = self.produce_batch(batch).and_then(|()| {
            drain(&self.producer, DRAIN_TIMEOUT);
            self.producer
                .commit_transaction(TXN_TIMEOUT)
                .map_err(|e| fleet_error("commit the transaction", &e))
        });
        if let Err(e) = &result {
            if !matches!(e, FleetError::Fenced(_)) {
                // Replaying a batch is idempotent, so an in-doubt batch is simply sent again.
                let _ = self.producer.abort_transaction(Duration::from_secs(5));
            }
        }
        result
    }
}

impl ChangelogReplica {
    fn produce_batch(&self, batch: &StateBatch) -> Result<(), FleetError> {
        let mut chunked = self.chunked.lock().unwrap_or_else(|e| e.into_inner());
        for op in &batch.ops {
            match op {
                BatchOp::Put(t, k, v) => {
                    let key = state_key(*t, k);
                    let old = chunked.remove(&key).unwrap_or(0);
                    if v.len() <= CHUNK_BYTES {
                        self.drop_chunks(&key, 0, old)?;
                        self.send(&key, Some(v), None)?;
                    } else {
                        let parts: Vec<&[u8]> = v.chunks(CHUNK_BYTES).collect();
                        let n = parts.len() as u32;
                        for (i, part) in parts.into_iter().enumerate() {
                            self.send(&chunk_key(&key, i as u32), Some(part), None)?;
                        }
                        self.drop_chunks(&key, n, old)?;
                        self.send(&key, Some(b"chunked"), Some(n))?;
                        chunked.insert(key, n);
                    }
                }
                BatchOp::Delete(t, k) => {
                    let key = state_key(*t, k);
                    if let Some(old) = chunked.remove(&key) {
                        self.drop_chunks(&key, 0, old)?;
                    }
                    self.send(&key, None, None)?;
                }
                BatchOp::DeleteRange(t, s, e) => {
                    let (lo, hi) = (state_key(*t, s), state_key(*t, e));
                    let gone: Vec<(Vec<u8>, u32)> = chunked
                        .range(lo..hi)
                        .map(|(k, n)| (k.clone(), *n))
                        .collect();
                    for (key, n) in gone {
                        chunked.remove(&key);
                        self.drop_chunks(&key, 0, n)?;
                    }
                    self.send(&range_key(*t, s, e), Some(b"range"), None)?;
                }
            }
        }
        Ok(())
    }

    /// Tombstones chunks `from..to` of state key `key`.
    fn drop_chunks(&self, key: &[u8], from: u32, to: u32) -> Result<(), FleetError> {
        for i in from..to {
            self.send(&chunk_key(key, i), None, None)?;
        }
        Ok(())
    }

    /// Produces one record to the task's partition, waiting while the local queue is full.
    fn send(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        chunks: Option<u32>,
    ) -> Result<(), FleetError> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic)
            .partition(self.partition)
            .key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        if let Some(n) = chunks {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: CHUNKS_HEADER,
                value: Some(&n.to_be_bytes()),
            }));
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    serve_deliveries(&self.producer);
                }
                Err((e, _)) => return Err(fleet_error("produce", &e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_to_the_operations_they_encode() {
        let put = state_key(Table::Windows, b"k1");
        assert_eq!(
            decode_record(&put, Some(b"v"), None),
            Ok(LogOp::Put(Table::Windows, b"k1", b"v"))
        );
        assert_eq!(
            decode_record(&put, None, None),
            Ok(LogOp::Delete(Table::Windows, b"k1"))
        );
        let range = range_key(Table::Staged, b"\x00\x01", b"\x00\x09\xff");
        assert_eq!(
            decode_record(&range, Some(b"range"), None),
            Ok(LogOp::DeleteRange(
                Table::Staged,
                b"\x00\x01",
                b"\x00\x09\xff"
            ))
        );
        assert!(decode_record(&[], None, None).is_err());
        assert!(decode_record(&[RANGE_MARK, 2, 0, 0, 0, 9, 1], Some(b"range"), None).is_err());
        let chunk = chunk_key(&put, 3);
        assert_eq!(
            decode_record(&chunk, Some(b"part"), None),
            Ok(LogOp::Chunk(put.clone(), 3, Some(&b"part"[..])))
        );
        assert_eq!(
            decode_record(&put, Some(b""), Some(4)),
            Ok(LogOp::Chunked(Table::Windows, b"k1", 4))
        );
        assert!(decode_record(&[200, 1], Some(b"v"), None).is_err());
    }

    #[test]
    fn every_table_has_its_own_byte() {
        for (i, t) in Table::ALL.iter().enumerate() {
            assert_eq!(table_of(table_byte(*t)), Some(*t));
            assert_eq!(table_byte(*t) as usize, i);
        }
        assert_ne!(Table::ALL.len(), RANGE_MARK as usize);
    }
}
