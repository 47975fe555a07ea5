//! A partition's own fetch queue, read in batches.
//!
//! The rdkafka crate hands out one message per `poll`, and each poll costs an event
//! allocation, a reference count and several clock reads in librdkafka and in the crate; at a
//! few million messages per second that is a tenth of a source's time. librdkafka's
//! `rd_kafka_consume_batch_queue` returns up to a buffer's worth of messages per call from a
//! queue that holds only one partition's fetched messages and consumer errors. This module is
//! the only place that calls librdkafka directly; everything else uses the crate.

use std::ffi::{CStr, CString};
use std::marker::PhantomData;
use std::os::raw::c_int;
use std::ptr::{self, NonNull};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{Header, Headers, Message, Timestamp};
use rdkafka::types::RDKafkaErrorCode;

/// The fetch queue of one partition of a consumer, split from the consumer's own queue.
///
/// Contract: create it *before* the consumer is first assigned the partition. The split
/// marks the queue as application-forwarded, and librdkafka then leaves it split across every
/// later assign of that partition, so no message of the partition ever reaches the consumer's
/// queue. It must be dropped before its consumer (declare it before the consumer in a struct).
pub(crate) struct PartitionQueue {
    queue: NonNull<rd::rd_kafka_queue_t>,
    /// Room for one batch of message pointers, reused.
    batch: Vec<*mut rd::rd_kafka_message_t>,
}

// SAFETY: a librdkafka queue handle may be used from any thread; the queue is read only through
// `&mut self`.
unsafe impl Send for PartitionQueue {}

impl PartitionQueue {
    /// Splits `topic`/`partition`'s fetch queue from `consumer`'s queue; `None` if the topic
    /// name holds a NUL byte or librdkafka refuses.
    pub fn split<C: ConsumerContext>(
        consumer: &BaseConsumer<C>,
        topic: &str,
        partition: i32,
    ) -> Option<Self> {
        let topic = CString::new(topic).ok()?;
        // SAFETY: the client pointer is valid while `consumer` lives; the returned queue holds
        // its own reference to the partition's queue.
        let queue = unsafe {
            rd::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
            )
        };
        let queue = NonNull::new(queue)?;
        // SAFETY: `queue` is a valid handle; a null destination means "no forwarding".
        unsafe { rd::rd_kafka_queue_forward(queue.as_ptr(), ptr::null_mut()) };
        Some(PartitionQueue {
            queue,
            batch: Vec::new(),
        })
    }

    /// Takes up to `max` entries off the queue, waiting at most `wait` for the first one, and
    /// calls `each` with every entry in queue order. Returns how many entries there were.
    pub fn read(&mut self, max: usize, wait: Duration, mut each: impl FnMut(Entry<'_>)) -> usize {
        let max = max.max(1);
        self.batch.clear();
        // Waits for one entry only: asked for more, librdkafka would wait out the whole
        // timeout to fill the buffer.
        if self.fill(max, Duration::ZERO) == 0 && !wait.is_zero() && self.fill(1, wait) == 1 {
            self.fill(max - 1, Duration::ZERO);
        }
        for &message in &self.batch {
            // SAFETY: librdkafka returned `message` and it is destroyed once, right below.
            let entry = unsafe { Entry::from_native(message) };
            each(entry);
        }
        for &message in &self.batch {
            // SAFETY: each pointer is a message this call received and has not destroyed.
            unsafe { rd::rd_kafka_message_destroy(message) };
        }
        let got = self.batch.len();
        self.batch.clear();
        got
    }

    /// Appends up to `max` messages to `self.batch`, waiting at most `wait` for the first.
    /// Returns how many it appended.
    fn fill(&mut self, max: usize, wait: Duration) -> usize {
        if max == 0 {
            return 0;
        }
        let have = self.batch.len();
        self.batch.resize(have + max, ptr::null_mut());
        let timeout_ms = c_int::try_from(wait.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: `self.batch[have..have + max]` is writable room for `max` pointers.
        let got = unsafe {
            rd::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                timeout_ms,
                self.batch.as_mut_ptr().add(have),
                max,
            )
        };
        let got = usize::try_from(got).unwrap_or(0);
        self.batch.truncate(have + got);
        got
    }
}

impl Drop for PartitionQueue {
    fn drop(&mut self) {
        // SAFETY: the handle was obtained in `split` and is destroyed once.
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) };
    }
}

/// One entry of a partition queue: a message, the partition's end (with
/// `enable.partition.eof`), or another consumer error.
pub(crate) enum Entry<'a> {
    Message(RawMessage<'a>),
    /// The reader caught up with the partition's end: every record before this offset was
    /// handed out earlier (aborted records and transaction markers are never handed out).
    PartitionEof(i64),
    /// A consumer error: its code and librdkafka's text.
    Error(RDKafkaErrorCode, String),
}

impl Entry<'_> {
    /// SAFETY: `message` must be a valid message from librdkafka that outlives the entry.
    unsafe fn from_native(message: *mut rd::rd_kafka_message_t) -> Self {
        let err = (*message).err;
        if err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Entry::Message(RawMessage {
                message,
                _borrow: PhantomData,
            });
        }
        if err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF {
            // librdkafka sets an end-of-partition's offset to its fetch position there.
            return Entry::PartitionEof((*message).offset);
        }
        // For an error, the payload is librdkafka's error text (not NUL-terminated).
        let text = bytes((*message).payload, (*message).len)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        Entry::Error(err.into(), text)
    }
}

/// A fetched message, valid for the duration of [`PartitionQueue::read`]'s callback.
pub(crate) struct RawMessage<'a> {
    message: *mut rd::rd_kafka_message_t,
    _borrow: PhantomData<&'a ()>,
}

/// SAFETY: `ptr` must be null or point to `len` readable bytes that outlive `'a`.
unsafe fn bytes<'a>(ptr: *const std::ffi::c_void, len: usize) -> Option<&'a [u8]> {
    if ptr.is_null() {
        None
    } else {
        Some(std::slice::from_raw_parts(ptr as *const u8, len))
    }
}

impl Message for RawMessage<'_> {
    type Headers = RawHeaders;

    fn key(&self) -> Option<&[u8]> {
        // SAFETY: the message is valid while `self` lives (see `RawMessage`).
        unsafe { bytes((*self.message).key, (*self.message).key_len) }
    }

    fn payload(&self) -> Option<&[u8]> {
        // SAFETY: as in `key`.
        unsafe { bytes((*self.message).payload, (*self.message).len) }
    }

    unsafe fn payload_mut(&mut self) -> Option<&mut [u8]> {
        let m = &*self.message;
        if m.payload.is_null() {
            None
        } else {
            Some(std::slice::from_raw_parts_mut(m.payload as *mut u8, m.len))
        }
    }

    fn topic(&self) -> &str {
        // SAFETY: a fetched message always names its topic handle, whose name is a
        // NUL-terminated string that lives as long as the consumer.
        unsafe { CStr::from_ptr(rd::rd_kafka_topic_name((*self.message).rkt)) }
            .to_str()
            .unwrap_or_default()
    }

    fn partition(&self) -> i32 {
        // SAFETY: as in `key`.
        unsafe { (*self.message).partition }
    }

    fn offset(&self) -> i64 {
        // SAFETY: as in `key`.
        unsafe { (*self.message).offset }
    }

    fn timestamp(&self) -> Timestamp {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: as in `key`.
        let ms = unsafe { rd::rd_kafka_message_timestamp(self.message, &mut kind) };
        match kind {
            _ if ms == -1 => Timestamp::NotAvailable,
            rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_CREATE_TIME => {
                Timestamp::CreateTime(ms)
            }
            rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME => {
                Timestamp::LogAppendTime(ms)
            }
            _ => Timestamp::NotAvailable,
        }
    }

    fn headers(&self) -> Option<&RawHeaders> {
        let mut headers = ptr::null_mut();
        // SAFETY: as in `key`; the headers belong to the message.
        let err = unsafe { rd::rd_kafka_message_headers(self.message, &mut headers) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
            return None;
        }
        // SAFETY: `RawHeaders` is a zero-sized stand-in for the native list, only ever used
        // behind a reference whose address is the list's; it lives as long as the message.
        Some(unsafe { &*(headers as *const RawHeaders) })
    }
}

/// The headers of a [`RawMessage`] (only ever seen behind a reference).
pub(crate) struct RawHeaders {
    _private: [u8; 0],
}

impl RawHeaders {
    fn native(&self) -> *const rd::rd_kafka_headers_t {
        self as *const RawHeaders as *const rd::rd_kafka_headers_t
    }
}

impl Headers for RawHeaders {
    fn count(&self) -> usize {
        // SAFETY: `self` is the address of a live native header list.
        unsafe { rd::rd_kafka_header_cnt(self.native()) }
    }

    fn try_get(&self, idx: usize) -> Option<Header<'_, &[u8]>> {
        let mut name = ptr::null();
        let mut value = ptr::null();
        let mut size = 0;
        // SAFETY: as in `count`; the out-pointers are valid.
        let err = unsafe {
            rd::rd_kafka_header_get_all(self.native(), idx, &mut name, &mut value, &mut size)
        };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return None;
        }
        // SAFETY: librdkafka returned a NUL-terminated name and `size` value bytes, owned by
        // the header list.
        let key = unsafe { CStr::from_ptr(name) }.to_str().ok()?;
        Some(Header {
            key,
            value: unsafe { bytes(value, size) },
        })
    }
}
