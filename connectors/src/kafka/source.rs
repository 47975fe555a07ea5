//! The Kafka source: one [`SourcePartition`] per topic partition, each with its own consumer
//! assigned to exactly that partition, reading `read_committed`.
//!
//! Positions are the next offset to read (8 bytes, big-endian) and are stored with the window
//! state, so a restart resumes exactly (as Arroyo does; the group's committed offsets are
//! progress reports for lag tools). Each partition runs in its own task; back-pressure is
//! natural because a task polls only when its pipeline has room, and librdkafka's prefetch
//! queue is bounded per partition (`queued.max.messages.kbytes`).

use std::time::Duration;

use compact_str::{format_compact, CompactString};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use weir_engine::event::{DeadLetter, Timestamp};
use weir_engine::runtime::exchange::{self, ExchangeMessage, UpstreamWatermarks};
use weir_engine::runtime::{
    DecodeContext, PartitionSelection, PollStatus, SourceBatch, SourceError, SourcePartition,
};

use super::client::SetDefault;
use super::client::{
    client_config, is_retryable, partition_counts, ClosedInBackground, EofAwareContext, TopicError,
    REQUEST_TIMEOUT,
};
use super::config::{KafkaSourceConfig, StartFrom};
use super::decode::MessageDecoder;
use super::offsets;
use super::partition_queue::{Entry, PartitionQueue};
use super::read_ahead;

/// How long one `poll` waits for the first message. Short: the source task handles a
/// checkpoint barrier only between polls, so this wait delays every checkpoint (and with it
/// every result) of a partition that has nothing to read at the moment.
const POLL_WAIT: Duration = Duration::from_millis(5);

/// At most this many events of the consumer's own queue (errors, offset-commit results) are
/// served per `poll`.
const MAX_EVENTS_PER_POLL: usize = 16;

/// The (topic, partition) of each task index of a source, in task order: topics in the
/// configured order, then partitions ascending.
pub fn task_partitions(config: &KafkaSourceConfig) -> Result<Vec<(String, i32)>, SourceError> {
    let client = client_config(&config.brokers, &config.settings);
    let counts = partition_counts(&client, &config.topics).map_err(|e| match e {
        TopicError::Missing(m) => SourceError::Fatal(m),
        TopicError::Unavailable(m) => SourceError::Retryable(m),
    })?;
    Ok(config
        .topics
        .iter()
        .zip(counts)
        .flat_map(|(topic, n)| (0..n as i32).map(move |p| (topic.clone(), p)))
        .collect())
}

/// Opens the selected partitions of a Kafka source.
pub fn open_kafka_source(
    name: &str,
    config: &KafkaSourceConfig,
    ctx: &DecodeContext,
    selection: &PartitionSelection,
) -> Result<Vec<Box<dyn SourcePartition>>, SourceError> {
    let mut partitions: Vec<Box<dyn SourcePartition>> = Vec::new();
    for (index, (topic, partition)) in task_partitions(config)?.into_iter().enumerate() {
        if selection.contains(index as u32) {
            partitions.push(Box::new(KafkaPartition::open(
                name, config, ctx, topic, partition,
            )?));
        }
    }
    Ok(partitions)
}

/// The consumer settings of one partition reader.
pub(crate) fn consumer_config(config: &KafkaSourceConfig) -> ClientConfig {
    let mut client = client_config(&config.brokers, &config.settings);
    client
        .set("group.id", &config.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        // librdkafka's default on an offset the broker does not have is to jump to the end
        // without a word, losing every record between; the source decides itself (`assign`).
        .set("auto.offset.reset", "error")
        .set_default("fetch.wait.max.ms", "100")
        .set_default("queued.max.messages.kbytes", "16384");
    client
}

/// A reader of one partition: a consumer with the source's settings and the partition's
/// queue split from it (not yet assigned). The queue must be dropped before the consumer.
pub(crate) type Reader = (
    PartitionQueue,
    ClosedInBackground<BaseConsumer<EofAwareContext>>,
);

/// Opens a [`Reader`] of `topic`/`partition` for `config`'s source.
pub(crate) fn open_reader(
    config: &KafkaSourceConfig,
    topic: &str,
    partition: i32,
) -> Result<Reader, SourceError> {
    let consumer: BaseConsumer<EofAwareContext> = consumer_config(config)
        .create_with_context(EofAwareContext)
        .map_err(|e| SourceError::Fatal(format!("cannot create a Kafka consumer: {e}")))?;
    let consumer = ClosedInBackground::new(consumer);
    let queue = PartitionQueue::split(&consumer, topic, partition).ok_or_else(|| {
        SourceError::Fatal(format!(
            "cannot read Kafka partition {topic}/{partition}: librdkafka refused its queue"
        ))
    })?;
    Ok((queue, consumer))
}

/// The group's committed offset of `topic`/`partition`, if any, as `consumer` (of the group)
/// reads it.
pub(crate) fn committed_offset<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Result<Option<i64>, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    Ok(consumer
        .committed_offsets(tpl, REQUEST_TIMEOUT)?
        .find_partition(topic, partition)
        .and_then(|p| match p.offset() {
            Offset::Offset(o) if o >= 0 => Some(o),
            _ => None,
        }))
}

/// Where a partition with no stored position starts: the group's `committed` offset, else
/// `start` in the log from `low` to `high`.
pub(crate) fn first_offset(committed: Option<i64>, start: StartFrom, low: i64, high: i64) -> i64 {
    match (committed, start) {
        (Some(offset), _) => offset,
        (None, StartFrom::Earliest) => low,
        (None, StartFrom::Latest) => high,
    }
}

/// One topic partition read by one task.
pub struct KafkaPartition {
    id: String,
    source: CompactString,
    group: String,
    topic: String,
    partition: i32,
    /// The partition's messages, split from `consumer`'s queue (declared first: dropped
    /// before the consumer).
    queue: Option<PartitionQueue>,
    /// Closed in the background: a task that ends or hands its partition over does not wait.
    consumer: ClosedInBackground<BaseConsumer<EofAwareContext>>,
    decoder: MessageDecoder,
    start: StartFrom,
    end_at_tail: bool,
    /// The next offset to read; `None` until the start offset is resolved.
    next: Option<i64>,
    /// With `end_at_tail`: the high watermark when the partition was first polled.
    end: Option<i64>,
    assigned: bool,
    /// Where the consumer was assigned, and the partition's end then, if it was read ahead
    /// while the fleet's group join was pending (`read_ahead`); taken by the first assign.
    read_ahead: Option<(i64, i64)>,
    /// A consumer error seen after some of a batch's messages were taken: returned by the
    /// next `poll`, so those messages reach the pipeline first.
    failure: Option<KafkaError>,
    /// librdkafka's text when the broker refused the position as out of range: the partition
    /// stopped fetching and the next `poll` assigns it again.
    out_of_range: Option<String>,
    /// For an exchange partition (stage 2 of `repartition: true`): what every upstream task
    /// reported. Such a partition decodes exchange values, starts at the beginning without
    /// asking the group, commits no group offsets, and ends when every upstream ended.
    exchange: Option<UpstreamWatermarks>,
}

impl KafkaPartition {
    fn open(
        name: &str,
        config: &KafkaSourceConfig,
        ctx: &DecodeContext,
        topic: String,
        partition: i32,
    ) -> Result<Self, SourceError> {
        let decoder = MessageDecoder::new(config.format, config.avro.as_ref(), ctx)?;
        let (queue, consumer, read_ahead) = match read_ahead::take(config, &topic, partition) {
            Some(ahead) => (
                ahead.queue,
                ahead.consumer,
                Some((ahead.offset, ahead.high)),
            ),
            None => {
                let (queue, consumer) = open_reader(config, &topic, partition)?;
                (queue, consumer, None)
            }
        };
        Ok(KafkaPartition {
            id: format!("kafka:{topic}/{partition}"),
            source: name.into(),
            group: config.group.clone(),
            topic,
            partition,
            queue: Some(queue),
            consumer,
            decoder,
            start: config.start,
            end_at_tail: config.end_at_tail,
            next: None,
            end: None,
            assigned: false,
            read_ahead,
            failure: None,
            out_of_range: None,
            exchange: None,
        })
    }

    /// Opens partition `partition` of the exchange topic `topic`, fed by `upstreams` tasks.
    pub(crate) fn open_exchange(
        name: &str,
        config: &KafkaSourceConfig,
        ctx: &DecodeContext,
        topic: String,
        partition: i32,
        upstreams: u32,
    ) -> Result<Self, SourceError> {
        let mut config = config.clone();
        config.format = Default::default();
        config.avro = None;
        config.start = StartFrom::Earliest;
        config.end_at_tail = false;
        let mut reader = Self::open(name, &config, ctx, topic, partition)?;
        reader.exchange = Some(UpstreamWatermarks::new(upstreams));
        Ok(reader)
    }

    /// Resolves where to start (stored position, else the group's committed offset, else the
    /// configured start) and assigns the partition there.
    fn assign(&mut self) -> Result<(), SourceError> {
        if let Some((at, high)) = self.read_ahead.take() {
            // The read-ahead resolved a start the same way moments ago (the group's offset,
            // else the configured start): with no stored position, or the same one, the
            // reader goes on from there without asking the broker again.
            if self.exchange.is_none() && self.next.is_none_or(|next| next == at) {
                if self.next.is_none() {
                    tracing::info!(partition = %self.id, next = at, "no stored position; starting here");
                }
                tracing::debug!(partition = %self.id, next = at, "continuing the read-ahead");
                self.next = Some(at);
                if self.end_at_tail && self.end.is_none() {
                    self.end = Some(high);
                }
                self.assigned = true;
                return Ok(());
            }
            tracing::debug!(partition = %self.id, at, next = ?self.next, "read ahead elsewhere; moving");
        }
        let (low, high) = self
            .consumer
            .fetch_watermarks(&self.topic, self.partition, REQUEST_TIMEOUT)
            .map_err(|e| self.error("read the partition's offsets", e))?;
        let next = match self.next {
            Some(next) => next,
            None if self.exchange.is_some() => low,
            None => {
                let committed = committed_offset(&self.consumer, &self.topic, self.partition)
                    .map_err(|e| self.error("read the group's committed offset", e))?;
                let next = first_offset(committed, self.start, low, high);
                tracing::info!(partition = %self.id, next, "no stored position; starting here");
                next
            }
        };
        let next = self.within_log(next, low, high)?;
        // On a reader read ahead elsewhere, librdkafka drops what it fetched from there.
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, self.partition, Offset::Offset(next))
            .map_err(|e| SourceError::Fatal(e.to_string()))?;
        self.consumer
            .assign(&tpl)
            .map_err(|e| self.error("assign the partition", e))?;
        self.next = Some(next);
        if self.end_at_tail && self.end.is_none() {
            self.end = Some(high);
        }
        self.assigned = true;
        Ok(())
    }

    /// Where to read from, given the partition's log from `low` to `high`: `next` itself, or
    /// `low` when the records before it were deleted (retention, `DeleteRecords`) before this
    /// source read them. A position past the end is an error: the broker lost records this
    /// source already read, or the topic was recreated, and reading on would skip or repeat
    /// records silently.
    fn within_log(&mut self, next: i64, low: i64, high: i64) -> Result<i64, SourceError> {
        if let Some(reason) = self.out_of_range.take() {
            tracing::warn!(partition = %self.id, next, low, high, %reason, "the broker refused the read position; assigning the partition again");
        }
        if next > high {
            return Err(SourceError::Retryable(format!(
                "{}: the read position {next} is past the partition's end {high}: the broker \
                 lost records this source read, or the topic was recreated",
                self.id
            )));
        }
        if next < low {
            tracing::warn!(
                partition = %self.id,
                lost = low - next,
                "records {next}..{low} were deleted before this source read them; resuming at {low}"
            );
            return Ok(low);
        }
        Ok(next)
    }

    fn error(&self, what: &str, e: KafkaError) -> SourceError {
        let text = format!("{}: cannot {what}: {e}", self.id);
        if is_retryable(&e) {
            SourceError::Retryable(text)
        } else {
            SourceError::Fatal(text)
        }
    }

    /// Takes one message into `out` (a record, a dead letter, or for an exchange partition
    /// possibly an upstream's marker) and moves the position past it.
    fn take<M: Message>(&mut self, message: &M, out: &mut SourceBatch) {
        let offset = message.offset();
        self.next = Some(offset + 1);
        let decoded = match self.exchange.as_mut() {
            None => self.decoder.decode(message),
            Some(upstreams) => match exchange::decode(message.payload().unwrap_or_default()) {
                Ok(ExchangeMessage::Record {
                    record,
                    partition_watermark,
                }) => {
                    out.record_watermarks.push(partition_watermark);
                    Ok(record)
                }
                Ok(ExchangeMessage::Marker(marker)) => {
                    upstreams.observe(&marker);
                    return;
                }
                Err(e) => Err(e),
            },
        };
        match decoded {
            Ok(record) => out.records.push(record),
            Err(error) => out.dead_letters.push(DeadLetter {
                source: self.source.clone(),
                partition: format_compact!("{}/{}", self.topic, self.partition),
                offset: format_compact!("{offset}"),
                raw: message.payload().unwrap_or_default().to_vec(),
                error,
            }),
        }
    }

    /// The reader caught up with the partition at `end`: the position moves there, past any
    /// aborted records and transaction markers after the last record taken.
    fn at_partition_end(&mut self, end: i64) {
        self.next = Some(self.next.map_or(end, |n| n.max(end)));
    }

    fn reached_end(&self) -> bool {
        if let Some(upstreams) = &self.exchange {
            return upstreams.all_ended();
        }
        matches!((self.next, self.end), (Some(next), Some(end)) if next >= end)
    }
}

impl SourcePartition for KafkaPartition {
    fn id(&self) -> &str {
        &self.id
    }

    fn seek(&mut self, position: &[u8]) -> Result<(), SourceError> {
        self.assigned = false;
        if position.is_empty() {
            // Stored before the start offset was resolved: start as configured.
            self.next = None;
            return Ok(());
        }
        // An exchange partition stores its upstreams' state after the offset.
        let (offset, rest) = position.split_at(position.len().min(8));
        let bad = || {
            SourceError::Fatal(format!(
                "{}: stored position has {} bytes, expected 8",
                self.id,
                position.len()
            ))
        };
        let raw: [u8; 8] = offset.try_into().map_err(|_| bad())?;
        match self.exchange.as_mut() {
            Some(upstreams) => upstreams
                .restore(rest)
                .map_err(|e| SourceError::Fatal(format!("{}: {e}", self.id)))?,
            None if !rest.is_empty() => return Err(bad()),
            None => {}
        }
        self.next = Some(i64::from_be_bytes(raw));
        Ok(())
    }

    fn poll(
        &mut self,
        out: &mut SourceBatch,
        max_records: usize,
    ) -> Result<PollStatus, SourceError> {
        if !self.assigned {
            self.assign()?;
        }
        if self.reached_end() {
            return Ok(PollStatus::End);
        }
        if let Some(e) = self.failure.take() {
            return Err(self.error("read", e));
        }
        let mut produced = 0usize;
        // The consumer's own queue carries errors and offset-commit results only: the
        // partition's messages are on `queue`.
        for _ in 0..MAX_EVENTS_PER_POLL {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(message)) => {
                    // Not expected (the queue was split before the first assign); kept anyway.
                    let message = message.detach();
                    self.take(&message, out);
                    produced += 1;
                }
                // Not expected either: the partition's end comes on its own queue, with the
                // offset that `at_partition_end` needs.
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    self.failure.get_or_insert(e);
                    break;
                }
            }
        }
        // Moved out for the duration of the read, so the callback may borrow `self`.
        if let Some(mut queue) = self.queue.take() {
            queue.read(max_records, POLL_WAIT, |entry| match entry {
                Entry::Message(message) => {
                    self.take(&message, out);
                    produced += 1;
                }
                Entry::PartitionEof(end) => self.at_partition_end(end),
                Entry::Error(RDKafkaErrorCode::AutoOffsetReset, text) => {
                    self.out_of_range = Some(text);
                }
                Entry::Error(code, text) => {
                    tracing::debug!(partition = %self.id, %text, "consumer error");
                    self.failure
                        .get_or_insert(KafkaError::MessageConsumption(code));
                }
            });
            self.queue = Some(queue);
        }
        if self.out_of_range.is_some() {
            self.assigned = false;
        }
        if produced == 0 {
            if let Some(e) = self.failure.take() {
                return Err(self.error("read", e));
            }
        }
        if produced > 0 {
            Ok(PollStatus::Data)
        } else if self.reached_end() {
            Ok(PollStatus::End)
        } else {
            Ok(PollStatus::Idle)
        }
    }

    fn position(&self) -> Vec<u8> {
        match self.next {
            Some(next) => {
                let mut out = next.to_be_bytes().to_vec();
                if let Some(upstreams) = &self.exchange {
                    out.extend_from_slice(&upstreams.snapshot());
                }
                out
            }
            None => Vec::new(),
        }
    }

    fn watermark(&self) -> Option<Timestamp> {
        self.exchange.as_ref().map(UpstreamWatermarks::watermark)
    }

    fn on_committed(&mut self, position: &[u8]) -> Result<(), SourceError> {
        if self.exchange.is_some() {
            // The exchange's positions live with the state only; no group tracks it.
            return Ok(());
        }
        let Ok(raw) = <[u8; 8]>::try_from(position) else {
            return Ok(());
        };
        let offset = i64::from_be_bytes(raw);
        // In a fleet the group's member commits (a non-member's commit is refused while the
        // group has members); a lone job commits itself.
        if offsets::report(&self.group, &self.topic, self.partition, offset) {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, self.partition, Offset::Offset(offset))
            .map_err(|e| SourceError::Fatal(e.to_string()))?;
        self.consumer
            .commit(&tpl, CommitMode::Async)
            .map_err(|e| self.error("commit the group offset", e))
    }
}
