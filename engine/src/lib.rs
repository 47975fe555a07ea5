//! Weir's engine: events, the topology model, event time and watermarks, windows, aggregates,
//! the state store, the task runtime and the checkpoint/commit protocol.
//!
//! The engine knows no broker or database. Connectors implement [`runtime::SourcePartition`]
//! and [`runtime::Sink`] and are handed to [`runtime::Job`] by the binary.
#![warn(missing_docs)]

pub mod aggregate;
pub mod checkpoint;
pub mod event;
pub mod expr;
#[cfg(any(test, feature = "oracle"))]
pub mod oracle;
pub mod runtime;
pub mod state;
pub mod time;
pub mod topology;
pub mod window;
