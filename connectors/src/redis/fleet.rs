//! A fleet backend on Redis: worker liveness, task leases and per-task checkpoint replicas.
//!
//! Keys (job `J`, task `T`; the `{J:T}` hash tag keeps a task's keys in one cluster slot, so the
//! replication script may touch them together):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `weir:{J}:members` | sorted set | live workers, scored by heartbeat expiry (server ms) |
//! | `weir:{J:T}:lease` | string, with TTL | the lease token of the task's owner |
//! | `weir:{J:T}:state` | hash | the task's checkpoint state: table byte ‖ key → value |
//! | `weir:{J:T}:index` | sorted set, all scores 0 | the same fields, ordered for range deletes |
//!
//! Every state write runs in one Lua script that first checks the lease token: a worker that
//! lost the lease changes nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_engine::checkpoint::{Progress, COMMITTED_KEY, PREPARED_KEY};
use weir_engine::runtime::fleet::{CheckpointReplica, FleetBackend, FleetError};
use weir_engine::state::{BatchOp, StateBatch, StateStore, Table};

use super::{is_retryable, RedisEndpoint};

/// Entries copied per local write during a restore.
const RESTORE_BATCH: usize = 5_000;

const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
";

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// ARGV: token, then ops `P field value` | `D field` | `R start end` (delete [start, end)).
const REPLICATE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local i = 2
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'P' then
    redis.call('ZADD', KEYS[3], 0, ARGV[i + 1])
    redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'D' then
    redis.call('ZREM', KEYS[3], ARGV[i + 1])
    redis.call('HDEL', KEYS[2], ARGV[i + 1])
    i = i + 2
  else
    local lo, hi = '[' .. ARGV[i + 1], '(' .. ARGV[i + 2]
    local fields = redis.call('ZRANGEBYLEX', KEYS[3], lo, hi)
    for j = 1, #fields, 1000 do
      redis.call('HDEL', KEYS[2], unpack(fields, j, math.min(j + 999, #fields)))
    end
    redis.call('ZREMRANGEBYLEX', KEYS[3], lo, hi)
    i = i + 3
  end
end
return 1
";

/// A connection that is re-opened after a failure.
struct Conn {
    endpoint: RedisEndpoint,
    conn: Mutex<Option<redis::Connection>>,
}

impl Conn {
    fn new(endpoint: RedisEndpoint) -> Conn {
        Conn {
            endpoint,
            conn: Mutex::new(None),
        }
    }

    /// Runs `f` on the connection, opening it first if needed; drops it after an error so the
    /// next call reconnects.
    fn with<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, FleetError> {
        let mut guard = self
            .conn
            .lock()
            .map_err(|_| FleetError::Fatal("connection lock poisoned".into()))?;
        if guard.is_none() {
            *guard = Some(self.endpoint.connect().map_err(|e| classify(what, &e))?);
        }
        let Some(conn) = guard.as_mut() else {
            return Err(FleetError::Retryable(format!("{what}: not connected")));
        };
        let result = f(conn);
        if result.is_err() {
            *guard = None;
        }
        result.map_err(|e| classify(what, &e))
    }
}

fn classify(what: &str, e: &redis::RedisError) -> FleetError {
    if is_retryable(e) {
        FleetError::Retryable(format!("{what}: {e}"))
    } else {
        FleetError::Fatal(format!("{what}: {e}"))
    }
}

/// The Redis fleet backend of one job.
pub struct RedisFleet {
    job: String,
    conn: Conn,
}

impl RedisFleet {
    /// A backend for job `job` on `endpoint` (connects lazily).
    pub fn new(job: &str, endpoint: RedisEndpoint) -> RedisFleet {
        RedisFleet {
            job: job.to_string(),
            conn: Conn::new(endpoint),
        }
    }

    fn members_key(&self) -> String {
        format!("weir:{{{}}}:members", self.job)
    }

    fn lease_key(&self, task: &str) -> String {
        lease_key(&self.job, task)
    }
}

fn task_tag(job: &str, task: &str) -> String {
    format!("weir:{{{job}:{task}}}")
}

fn lease_key(job: &str, task: &str) -> String {
    format!("{}:lease", task_tag(job, task))
}

fn millis(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

impl FleetBackend for RedisFleet {
    fn heartbeat(&self, worker: &str, ttl: Duration) -> Result<u32, FleetError> {
        let key = self.members_key();
        self.conn.with("heartbeat", |c| {
            redis::Script::new(HEARTBEAT)
                .key(&key)
                .arg(worker)
                .arg(millis(ttl))
                .invoke(c)
        })
    }

    fn acquire(
        &self,
        task: &str,
        worker: &str,
        ttl: Duration,
    ) -> Result<Option<String>, FleetError> {
        let token = format!("{worker}/{:x}", unique());
        let key = self.lease_key(task);
        let set: Option<String> = self.conn.with("acquire a lease", |c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(millis(ttl))
                .query(c)
        })?;
        Ok(set.map(|_| token))
    }

    fn renew(&self, task: &str, token: &str, ttl: Duration) -> Result<bool, FleetError> {
        let key = self.lease_key(task);
        let renewed: i64 = self.conn.with("renew a lease", |c| {
            redis::Script::new(RENEW)
                .key(&key)
                .arg(token)
                .arg(millis(ttl))
                .invoke(c)
        })?;
        Ok(renewed == 1)
    }

    fn release(&self, task: &str, token: &str) -> Result<(), FleetError> {
        let key = self.lease_key(task);
        let _: i64 = self.conn.with("release a lease", |c| {
            redis::Script::new(RELEASE).key(&key).arg(token).invoke(c)
        })?;
        Ok(())
    }

    fn leave(&self, worker: &str) -> Result<(), FleetError> {
        let key = self.members_key();
        let _: i64 = self.conn.with("leave the fleet", |c| {
            redis::cmd("ZREM").arg(&key).arg(worker).query(c)
        })?;
        Ok(())
    }

    fn replica(&self, task: &str, token: &str) -> Result<Arc<dyn CheckpointReplica>, FleetError> {
        Ok(Arc::new(RedisReplica {
            lease: lease_key(&self.job, task),
            state: format!("{}:state", task_tag(&self.job, task)),
            index: format!("{}:index", task_tag(&self.job, task)),
            token: token.to_string(),
            conn: Conn::new(self.conn.endpoint.clone()),
        }))
    }
}

/// A process-unique number for lease tokens: a new token per acquisition, so a lease taken
/// again after it expired is a different lease.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40) ^ COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Field-value pairs of one HSCAN page.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// One task's checkpoint state in Redis, fenced by a lease token.
pub struct RedisReplica {
    lease: String,
    state: String,
    index: String,
    token: String,
    conn: Conn,
}

fn table_byte(table: Table) -> u8 {
    Table::ALL.iter().position(|t| *t == table).unwrap_or(0) as u8
}

fn field(table: Table, key: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(key.len() + 1);
    f.push(table_byte(table));
    f.extend_from_slice(key);
    f
}

fn read_epoch(bytes: Option<Vec<u8>>) -> Result<Option<u64>, FleetError> {
    match bytes {
        None => Ok(None),
        Some(b) => {
            let raw: [u8; 8] = b.as_slice().try_into().map_err(|_| {
                FleetError::Fatal(format!(
                    "replicated epoch has {} bytes, expected 8",
                    b.len()
                ))
            })?;
            Ok(Some(u64::from_be_bytes(raw)))
        }
    }
}

impl CheckpointReplica for RedisReplica {
    fn progress(&self) -> Result<Progress, FleetError> {
        let (prepared, committed): (Option<Vec<u8>>, Option<Vec<u8>>) =
            self.conn.with("read replicated progress", |c| {
                redis::cmd("HMGET")
                    .arg(&self.state)
                    .arg(field(Table::Meta, PREPARED_KEY))
                    .arg(field(Table::Meta, COMMITTED_KEY))
                    .query(c)
            })?;
        Ok(Progress {
            prepared: read_epoch(prepared)?,
            committed: read_epoch(committed)?,
        })
    }

    fn restore(&self, store: &dyn StateStore) -> Result<u64, FleetError> {
        let mut cursor: u64 = 0;
        let mut copied = 0u64;
        let mut batch = StateBatch::default();
        loop {
            let (next, entries): (u64, Entries) =
                self.conn.with("restore replicated state", |c| {
                    redis::cmd("HSCAN")
                        .arg(&self.state)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(1000)
                        .query(c)
                })?;
            for (f, v) in entries {
                let Some((&t, key)) = f.split_first() else {
                    continue;
                };
                let table = *Table::ALL.get(t as usize).ok_or_else(|| {
                    FleetError::Fatal(format!("replicated state has unknown table {t}"))
                })?;
                batch.put(table, key.to_vec(), v);
                copied += 1;
            }
            if batch.ops.len() >= RESTORE_BATCH {
                store
                    .write(std::mem::take(&mut batch))
                    .map_err(|e| FleetError::Fatal(e.to_string()))?;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        store
            .write(batch)
            .map_err(|e| FleetError::Fatal(e.to_string()))?;
        Ok(copied)
    }

    fn replicate(&self, batch: &StateBatch) -> Result<(), FleetError> {
        let script = redis::Script::new(REPLICATE);
        let mut call = script.prepare_invoke();
        call.key(&self.lease).key(&self.state).key(&self.index);
        call.arg(&self.token);
        for op in &batch.ops {
            match op {
                BatchOp::Put(t, k, v) => {
                    call.arg("P").arg(field(*t, k)).arg(v.as_slice());
                }
                BatchOp::Delete(t, k) => {
                    call.arg("D").arg(field(*t, k));
                }
                BatchOp::DeleteRange(t, a, b) => {
                    call.arg("R").arg(field(*t, a)).arg(field(*t, b));
                }
            }
        }
        let applied: i64 = self
            .conn
            .with("replicate a checkpoint", |c| call.invoke(c))?;
        if applied == 1 {
            Ok(())
        } else {
            Err(FleetError::Fenced(format!(
                "the lease `{}` is no longer held by this worker",
                self.lease
            )))
        }
    }
}
