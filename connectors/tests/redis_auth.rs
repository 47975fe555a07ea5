//! Redis AUTH: a `redis-server --requirepass` of this test's own, with an ACL user, and a
//! whole pipeline (Redis Streams source into Redis sinks) that logs in with `username` and
//! `password`; a wrong password is a clear, prompt error.
//!
//! Needs `redis-server` on the PATH (`apt-get install redis-server`); it is started on a free
//! loopback port and stopped by PID when the test ends.

#![cfg(feature = "redis")]

use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use redis::Commands;
use weir_connectors::Registry;
use weir_engine::runtime::{Job, JobOptions, JobSummary};
use weir_engine::topology::load_str_with_env;

/// The default user's password (`requirepass`).
const ADMIN_PASSWORD: &str = "admin-Secret-1";
/// An ACL user with its own password.
const USER: &str = "weir";
const USER_PASSWORD: &str = "weir-Secret-2";

/// A password-protected redis-server, stopped (SIGKILL, by PID) when dropped.
struct AuthRedis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl AuthRedis {
    fn start() -> AuthRedis {
        // A port found free can be taken again before the server binds it (another test's
        // server or an outgoing connection), and a bare TCP connect can succeed before the
        // server answers: the server counts as up once an authenticated PING is answered, and
        // a server that exited is started again on another port.
        for _ in 0..5 {
            if let Some(server) = AuthRedis::try_start() {
                let mut admin = server.admin();
                redis::cmd("ACL")
                    .arg("SETUSER")
                    .arg(USER)
                    .arg("on")
                    .arg(format!(">{USER_PASSWORD}"))
                    .arg("~*")
                    .arg("&*")
                    .arg("+@all")
                    .query::<()>(&mut admin)
                    .unwrap();
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 ports");
    }

    /// Starts a server on a free port; `None` if it exited before answering.
    fn try_start() -> Option<AuthRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", &dir.path().display().to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--requirepass", ADMIN_PASSWORD])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        let mut server = AuthRedis {
            port,
            child,
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            if server.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            let ping = server
                .try_admin()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ping.is_ok() {
                return Some(server);
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not answer on port {port} within 10 s: {ping:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The URL without credentials: they come from the `username`/`password` options.
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn admin(&self) -> redis::Connection {
        self.try_admin().unwrap()
    }

    fn try_admin(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://:{ADMIN_PASSWORD}@127.0.0.1:{}", self.port))?
            .get_connection()
    }
}

impl Drop for AuthRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A windowless pipeline from the stream `in` into a stream bridge (default user, password
/// only) and feeds (the ACL user). Secrets come from `${…}` variables, as a topology should
/// take them.
fn topology(url: &str, state: &std::path::Path, source_password_var: &str) -> String {
    format!(
        r#"
name: auth-test
sources:
  events:
    type: redis_streams
    url: "{url}"
    username: "${{REDIS_USER}}"
    password: "${{{source_password_var}}}"
    stream: in
    end_at_tail: true
    event_time: {{field: ts, format: epoch_millis}}
pipelines:
  copy:
    source: events
    select: [id, user, ts]
    sinks: [bridge, feeds]
sinks:
  bridge: {{type: redis_stream, url: "{url}", password: "${{REDIS_ADMIN_PASSWORD}}", stream: out}}
  feeds:
    type: redis_feed
    url: "{url}"
    username: "${{REDIS_USER}}"
    password: "${{REDIS_PASSWORD}}"
    feed_key: "feed:{{user}}"
    member: "{{id}}"
state: {{dir: "{state}"}}
checkpoint: {{interval: 200ms}}
"#,
        state = state.display()
    )
}

fn env(name: &str) -> Option<String> {
    match name {
        "REDIS_USER" => Some(USER.into()),
        "REDIS_PASSWORD" => Some(USER_PASSWORD.into()),
        "REDIS_ADMIN_PASSWORD" => Some(ADMIN_PASSWORD.into()),
        "WRONG_PASSWORD" => Some("not-the-password".into()),
        _ => None,
    }
}

/// Builds and runs the job on a thread; `None` if it did not finish within `limit`.
fn run_within(yaml: &str, limit: Duration) -> Option<Result<JobSummary, String>> {
    let topology = load_str_with_env(yaml, &Registry, &env).unwrap_or_else(|issues| {
        panic!("invalid test topology: {issues:#?}");
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = Job::build(&topology, &Registry, JobOptions::default())
            .and_then(Job::run)
            .map_err(|e| e.to_string());
        let _ = tx.send(result);
    });
    rx.recv_timeout(limit).ok()
}

#[test]
fn a_pipeline_logs_in_with_an_acl_user_and_a_password() {
    let server = AuthRedis::start();
    let mut admin = server.admin();
    for i in 0..500 {
        let payload = format!(
            r#"{{"id": "e{i}", "user": "u{}", "ts": {}}}"#,
            i % 7,
            1_000 + i
        );
        let _: String = admin.xadd("in", "*", &[("payload", payload)]).unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    let yaml = topology(&server.url(), state.path(), "REDIS_PASSWORD");
    let summary = run_within(&yaml, Duration::from_secs(60))
        .expect("the job did not finish in 60 s")
        .expect("the job failed");
    assert_eq!(summary.metrics.events_in, 500);

    let bridged: usize = admin.xlen("out").unwrap();
    assert_eq!(bridged, 500);
    let mut members = 0;
    for u in 0..7 {
        let n: usize = admin.zcard(format!("feed:u{u}")).unwrap();
        members += n;
    }
    assert_eq!(members, 500);
    // Every entry was acknowledged by the (authenticated) source after the commits.
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg("in")
        .arg("weir")
        .query(&mut admin)
        .unwrap();
    let redis::Value::Array(summary) = pending else {
        panic!("unexpected XPENDING reply {pending:?}")
    };
    assert_eq!(summary.first(), Some(&redis::Value::Int(0)));
}

#[test]
fn a_wrong_password_fails_promptly_saying_authentication_failed() {
    let server = AuthRedis::start();
    let state = tempfile::tempdir().unwrap();
    // The source logs in with a wrong password; the sinks are right.
    let yaml = topology(&server.url(), state.path(), "WRONG_PASSWORD");
    let started = Instant::now();
    let error = run_within(&yaml, Duration::from_secs(30))
        .expect("a wrong source password made the job hang")
        .expect_err("the job ran with a wrong password");
    assert!(
        error.to_lowercase().contains("authentication failed"),
        "the error does not say authentication failed: {error}"
    );
    assert!(started.elapsed() < Duration::from_secs(15), "{error}");
    assert!(!error.contains("not-the-password"), "{error}");

    // A sink with a wrong password: the job does not start.
    let state = tempfile::tempdir().unwrap();
    let yaml = topology(&server.url(), state.path(), "REDIS_PASSWORD")
        .replace("${REDIS_ADMIN_PASSWORD}", "${WRONG_PASSWORD}");
    let error = run_within(&yaml, Duration::from_secs(30))
        .expect("a wrong sink password made the job hang")
        .expect_err("the job ran with a wrong sink password");
    assert!(
        error.to_lowercase().contains("authentication failed"),
        "the error does not say authentication failed: {error}"
    );
    assert!(
        error.contains("bridge"),
        "the error does not name the sink: {error}"
    );
}
