//! Redis connectors: the Redis Streams source and the Redis sinks (stream bridge, feed cache,
//! hash aggregates, leaderboards), plus what they share: how to connect, how failures are
//! classified, and Redis Cluster key slots.
//!
//! Every sink commit runs as Lua scripts that check and advance a per-(job, sink, task) epoch
//! fence atomically with the data they write, so a commit repeated after a crash changes
//! nothing (see `weir_engine::runtime::Sink`).

pub mod fleet;
mod resp;
pub mod sink;
pub mod slot;
pub mod source;

use std::time::Duration;

/// The `redis` client crate these connectors are built on, for tools of the `weir` binary that
/// talk to Redis directly (the `bench-io` baselines) with the same version and features.
pub use ::redis as client;
use redis::IntoConnectionInfo;
use schemars::JsonSchema;
use serde::Deserialize;
use weir_engine::runtime::{SinkError, SourceError};

/// How to reach a Redis server. TLS: use a `rediss://` URL (append `#insecure` to skip
/// certificate checks, e.g. for self-signed test servers).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
pub struct RedisEndpoint {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...` for TLS.
    pub url: String,
    /// ACL user name (AUTH); overrides one in the URL. `${ENV}` interpolation applies.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (AUTH); overrides one in the URL. Use `${REDIS_PASSWORD}`-style interpolation
    /// rather than writing secrets into the topology.
    #[serde(default)]
    pub password: Option<String>,
}

/// How long a connection attempt or a command may take before it counts as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

impl RedisEndpoint {
    /// An endpoint for `url` without separate credentials.
    pub fn from_url(url: &str) -> RedisEndpoint {
        RedisEndpoint {
            url: url.to_string(),
            username: None,
            password: None,
        }
    }

    /// The client for this endpoint (no connection is made yet).
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        redis::Client::open(self.connection_info()?)
    }

    /// The URL with `username` and `password` applied.
    fn connection_info(&self) -> redis::RedisResult<redis::ConnectionInfo> {
        let mut info: redis::ConnectionInfo = self.url.as_str().into_connection_info()?;
        if let Some(user) = &self.username {
            info.redis.username = Some(user.clone());
        }
        if let Some(password) = &self.password {
            info.redis.password = Some(password.clone());
        }
        Ok(info)
    }

    /// A lean connection for the source's reads (see `resp.rs`); `None` for TLS and
    /// Unix-socket endpoints.
    fn connect_raw(&self) -> redis::RedisResult<Option<resp::RawConnection>> {
        resp::RawConnection::open(&self.connection_info()?, IO_TIMEOUT)
    }

    /// Opens a synchronous connection with connect and I/O timeouts set, so a dead server
    /// surfaces as a (retryable) error instead of a hang.
    pub fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let client = self.client()?;
        let conn = client.get_connection_with_timeout(IO_TIMEOUT)?;
        conn.set_read_timeout(Some(IO_TIMEOUT))?;
        conn.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(conn)
    }
}

/// Whether `e` is a passing failure (connection lost, server loading or busy) that a retry
/// with backoff can fix, rather than a bad command or configuration.
pub fn is_retryable(e: &redis::RedisError) -> bool {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        return true;
    }
    matches!(
        e.code(),
        Some("LOADING" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY")
    )
}

/// `e` as a sink error, retryable where [`is_retryable`] says so.
pub fn sink_error(context: &str, e: &redis::RedisError) -> SinkError {
    if is_retryable(e) {
        SinkError::Retryable(format!("{context}: {e}"))
    } else {
        SinkError::Fatal(format!("{context}: {e}"))
    }
}

/// `e` as a source error, retryable where [`is_retryable`] says so.
pub fn source_error(context: &str, e: &redis::RedisError) -> SourceError {
    if is_retryable(e) {
        SourceError::Retryable(format!("{context}: {e}"))
    } else {
        SourceError::Fatal(format!("{context}: {e}"))
    }
}
