//! The Redis fleet backend against a real redis-server: leases, liveness and fenced
//! checkpoint replicas.
//!
//! Needs `WEIR_TEST_REDIS` (e.g. `eval "$(scripts/services.sh start redis)"`).

use std::time::Duration;

use weir_connectors::redis::fleet::RedisFleet;
use weir_connectors::redis::RedisEndpoint;
use weir_engine::checkpoint::{read_progress, write_committed, write_prepared, Progress};
use weir_engine::runtime::fleet::{FleetBackend, FleetError};
use weir_engine::state::{MemoryStateStore, StateBatch, StateStore, Table};

fn redis_url() -> String {
    std::env::var("WEIR_TEST_REDIS").unwrap_or_else(|_| {
        panic!(
            "WEIR_TEST_REDIS is not set; start a server with \
             `eval \"$(scripts/services.sh start redis)\"`"
        )
    })
}

/// A backend for a job name no other test uses.
fn fleet(job: &str) -> RedisFleet {
    RedisFleet::new(
        &format!("fleet-test-{job}-{}", std::process::id()),
        RedisEndpoint::from_url(&redis_url()),
    )
}

fn all(store: &MemoryStateStore, table: Table) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    store
        .scan(table, b"", None, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
    out
}

#[test]
fn a_lease_has_one_holder_until_released_or_expired() {
    let f = fleet("lease");
    let ttl = Duration::from_millis(400);
    let a = f.acquire("p0", "a", ttl).unwrap().expect("free lease");
    assert_eq!(f.acquire("p0", "b", ttl).unwrap(), None, "held by a");
    assert!(f.renew("p0", &a, ttl).unwrap());
    assert!(!f.renew("p0", "someone-else", ttl).unwrap());
    f.release("p0", "someone-else").unwrap();
    assert_eq!(
        f.acquire("p0", "b", ttl).unwrap(),
        None,
        "a wrong token releases nothing"
    );
    f.release("p0", &a).unwrap();
    let b = f.acquire("p0", "b", ttl).unwrap().expect("released");
    std::thread::sleep(Duration::from_millis(600));
    assert!(!f.renew("p0", &b, ttl).unwrap(), "expired");
    let c = f
        .acquire("p0", "c", ttl)
        .unwrap()
        .expect("expired lease is free");
    assert_ne!(b, c, "every acquisition gets a new token");
}

#[test]
fn heartbeats_count_live_workers() {
    let f = fleet("members");
    let ttl = Duration::from_millis(500);
    assert_eq!(f.heartbeat("a", ttl).unwrap(), 1);
    assert_eq!(f.heartbeat("b", ttl).unwrap(), 2);
    f.leave("b").unwrap();
    assert_eq!(f.heartbeat("a", ttl).unwrap(), 1);
    assert_eq!(f.heartbeat("c", Duration::from_millis(100)).unwrap(), 2);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(f.heartbeat("a", ttl).unwrap(), 1, "c's heartbeat expired");
}

#[test]
fn replica_mirrors_batches_and_restores_them() {
    let f = fleet("replica");
    let ttl = Duration::from_secs(30);
    let token = f.acquire("p1", "a", ttl).unwrap().unwrap();
    let replica = f.replica("p1", &token).unwrap();
    assert_eq!(replica.progress().unwrap(), Progress::default());

    // The same batches go to a local store and to the replica.
    let local = MemoryStateStore::new();
    let mut batches = Vec::new();
    let mut b = StateBatch::default();
    for i in 0u8..50 {
        b.put(Table::Windows, vec![1, i], vec![i; 3]);
    }
    b.put(
        Table::Positions,
        b"src/p1".to_vec(),
        b"\x00\xffpos".to_vec(),
    );
    b.put(Table::Staged, 1u64.to_be_bytes().to_vec(), b"out".to_vec());
    write_prepared(&mut b, 1);
    batches.push(b);
    let mut b = StateBatch::default();
    write_committed(&mut b, 1);
    b.delete(Table::Windows, vec![1, 7]);
    b.delete_range(Table::Windows, vec![1, 10], vec![1, 20]);
    b.put(Table::Sessions, vec![0, 0, 0], Vec::new());
    batches.push(b);
    for b in batches {
        replica.replicate(&b).unwrap();
        local.write(b).unwrap();
    }

    assert_eq!(
        replica.progress().unwrap(),
        Progress {
            prepared: Some(1),
            committed: Some(1)
        }
    );
    let restored = MemoryStateStore::new();
    let n = replica.restore(&restored).unwrap();
    for table in Table::ALL {
        assert_eq!(all(&restored, table), all(&local, table), "table {table:?}");
    }
    assert_eq!(
        n as usize,
        Table::ALL
            .iter()
            .map(|t| all(&local, *t).len())
            .sum::<usize>()
    );
    assert_eq!(all(&restored, Table::Windows).len(), 50 - 1 - 10);
    assert!(
        all(&restored, Table::Staged).is_empty(),
        "committed deletes staged outputs"
    );
    assert_eq!(
        read_progress(&restored).unwrap(),
        replica.progress().unwrap()
    );
}

#[test]
fn a_replica_whose_lease_was_lost_changes_nothing() {
    let f = fleet("fenced");
    let old = f
        .acquire("p2", "a", Duration::from_millis(200))
        .unwrap()
        .unwrap();
    let zombie = f.replica("p2", &old).unwrap();
    let mut b = StateBatch::default();
    write_prepared(&mut b, 1);
    zombie.replicate(&b).unwrap();

    std::thread::sleep(Duration::from_millis(400));
    let new = f
        .acquire("p2", "b", Duration::from_secs(30))
        .unwrap()
        .unwrap();
    let owner = f.replica("p2", &new).unwrap();

    let mut late = StateBatch::default();
    late.put(Table::Windows, b"k".to_vec(), b"zombie".to_vec());
    write_committed(&mut late, 1);
    match zombie.replicate(&late) {
        Err(FleetError::Fenced(_)) => {}
        other => panic!("expected the zombie to be fenced, got {other:?}"),
    }
    let seen = MemoryStateStore::new();
    owner.restore(&seen).unwrap();
    assert!(all(&seen, Table::Windows).is_empty());
    assert_eq!(
        owner.progress().unwrap(),
        Progress {
            prepared: Some(1),
            committed: None
        }
    );
}
