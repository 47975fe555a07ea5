//! MongoDB sinks: time-series results, raw events and per-entity daily rollups, exactly once
//! through epoch tags, per-document applied epochs and a per-(job, sink, task) fence document.
//!
//! # Modes
//!
//! - `timeseries`: one document per window result, in a time-series collection the sink
//!   creates (`timeseries: {timeField, metaField, granularity}`, `expireAfterSeconds`):
//!   `{<time>: window end, <meta>: {<key fields>…, pipeline, weir}, <aggregates>…,
//!   window_start, is_final}` (dates are BSON dates).
//! - `events`: one document per event of a pipeline without a window:
//!   `{<time>: event time, <meta>: {pipeline, <meta_fields>…, weir}, <fields>…}`; a
//!   time-series collection when a `timeseries` block is configured, else an ordinary one.
//! - `rollup`: one document per entity and UTC day, `_id: "<entity>|<YYYY-MM-DD>"`, holding
//!   `entity`, `day`, `count`, `<counter>.<value>` counts, `sums.<field>`, the `latest` events,
//!   `updated_at` and `weir_applied`. Each epoch's events are folded first, so an epoch costs one
//!   upsert per (entity, day), sent as unordered bulk `update` commands.
//!
//! Late events and dead letters sent to a `timeseries`/`events` sink become documents with
//! `<meta>.kind` `late` / `dead_letter`. A rollup sink counts events, late events and final
//! window results (non-final ones are replaced by a later result, so they are not counted);
//! dead letters cannot be rolled up and are reported in the log.
//!
//! # Exactly once
//!
//! Fences live in the database's `weir_fences` collection: `{_id: "<job>/<sink>/<task>",
//! epoch, holder}`.
//!
//! - `timeseries`/`events`: documents carry `<meta>.weir: {job, sink, task, epoch}` (in the
//!   meta field so time-series deletes by meta filter work).
//!   [`Sink::recover`](weir_engine::runtime::Sink::recover) deletes this task's documents of
//!   epochs after the last committed one and claims the fence: it sets the epoch to the
//!   committed one and `holder` to an id of its own. Committing epoch E then does nothing when
//!   this instance already applied E; otherwise it deletes what a failed attempt at E left and
//!   inserts the documents (unordered). Alongside that insert, in parallel, it moves the fence
//!   to the epoch it applied before, only while `holder` is still its own. So a commit costs
//!   one round trip, and the fence trails the sink by at most one epoch. A process whose task
//!   was taken over (a zombie) finds the fence claimed by the new owner and stops with a fatal
//!   error. The new owner's first commit deletes that epoch's tag again just before inserting,
//!   so a zombie's insert that landed before it is removed; without transactions, one landing
//!   in between may remain as duplicates. None are lost. (Fleet tasks also stop committing
//!   once less than half their lease is left, which keeps zombies rare.)
//! - `rollup`: `$inc`/`$push` are not idempotent, so each document keeps
//!   `weir_applied.<job>/<sink>/<task>: E` and is updated only while that is missing or below E
//!   (filter `{_id, weir_applied.<…>: {$not: {$gte: E}}}`, upsert); where it is not, the
//!   upsert's insert fails with a duplicate key, which means "already applied".
//!   Committing epoch E does nothing when the fence is at E or later; after all updates the
//!   fence is set to E.
//!
//! Connection loss and an unavailable server are [`SinkError::Retryable`]; invalid options,
//! an existing collection with other options, and rejected writes are [`SinkError::Fatal`].

mod config;
mod encode;
mod rollup;
mod sink;

pub use config::{
    Granularity, IndexConfig, IndexKeys, MongoSinkConfig, MongoSinkMode, TimeseriesConfig,
    FENCE_COLLECTION,
};
pub use sink::MongoSink;

/// The `mongodb` driver crate this sink is built on, for tools of the `weir` binary that talk
/// to MongoDB directly (the `bench-io` baselines) with the same version and features.
pub use ::mongodb as driver;

use mongodb::error::{
    ErrorKind, WriteFailure, RETRYABLE_ERROR, RETRYABLE_WRITE_ERROR, SYSTEM_OVERLOADED_ERROR,
    TRANSIENT_TRANSACTION_ERROR,
};
use weir_engine::runtime::SinkError;

/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i64 = 11000;

fn is_duplicate_key(code: i64) -> bool {
    code == DUPLICATE_KEY
}

/// Server error codes that describe a passing condition (node unreachable, shutting down or
/// stepping down, timeouts, write conflicts, interrupted operations).
fn is_retryable_code(code: i32) -> bool {
    matches!(
        code,
        6 | 7
            | 50
            | 64
            | 89
            | 91
            | 112
            | 134
            | 189
            | 262
            | 9001
            | 10058
            | 10107
            | 11600
            | 11602
            | 13435
            | 13436
    )
}

/// Whether `e` is a passing failure (connection lost or refused, no server reachable, server
/// shutting down or overloaded, write concern timeout) that a retry with backoff can fix,
/// rather than a bad request or configuration.
pub fn is_retryable(e: &mongodb::error::Error) -> bool {
    if [
        RETRYABLE_WRITE_ERROR,
        TRANSIENT_TRANSACTION_ERROR,
        RETRYABLE_ERROR,
        SYSTEM_OVERLOADED_ERROR,
    ]
    .iter()
    .any(|label| e.contains_label(label))
    {
        return true;
    }
    match &*e.kind {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::DnsResolve { .. } => true,
        ErrorKind::Command(c) => is_retryable_code(c.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => true,
        ErrorKind::Write(WriteFailure::WriteError(w)) => is_retryable_code(w.code),
        ErrorKind::InsertMany(m) => {
            m.write_errors
                .iter()
                .flatten()
                .all(|w| is_retryable_code(w.code))
                && (m.write_errors.as_ref().is_some_and(|w| !w.is_empty())
                    || m.write_concern_error.is_some())
        }
        _ => false,
    }
}

/// `e` as a sink error, retryable where [`is_retryable`] says so.
pub fn sink_error(context: &str, e: &mongodb::error::Error) -> SinkError {
    if is_retryable(e) {
        SinkError::Retryable(format!("{context}: {e}"))
    } else {
        SinkError::Fatal(format!("{context}: {e}"))
    }
}
