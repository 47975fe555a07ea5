//! State store hot paths on RocksDB: the per-epoch checkpoint batch, point gets of cold keys
//! (hits and misses), and the prefix scan of one key's windows.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use weir_engine::state::{scan_prefix, RocksStateStore, StateBatch, StateStore, Table};

/// Dirty accumulators written per checkpoint epoch.
const DIRTY_PER_EPOCH: u64 = 10_000;
/// Bytes of one serialized accumulator.
const VALUE_BYTES: usize = 64;
/// Keys preloaded for the read benches.
const KEYS: u64 = 100_000;
/// Windows per key in the read benches (one scan visits them all).
const WINDOWS_PER_KEY: u64 = 10;

/// A window key as the window operator lays it out: key hash, then window start.
fn window_key(key: u64, window_start: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&key.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    k.extend_from_slice(&window_start.to_be_bytes());
    k
}

fn value(seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; VALUE_BYTES];
    v[..8].copy_from_slice(&seed.to_le_bytes());
    v
}

fn epoch_batch(epoch: u64) -> StateBatch {
    let mut b = StateBatch::default();
    for i in 0..DIRTY_PER_EPOCH {
        // Each epoch touches the current window of 10k keys; windows advance every 60 epochs.
        b.put(Table::Windows, window_key(i, epoch / 60), value(epoch ^ i));
    }
    b.put(
        Table::Meta,
        b"epoch_prepared".to_vec(),
        epoch.to_be_bytes().to_vec(),
    );
    b
}

fn bench_write(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RocksStateStore::open(dir.path()).expect("open");
    let mut group = c.benchmark_group("state_store/write");
    group.throughput(Throughput::Elements(DIRTY_PER_EPOCH));
    let mut epoch = 0u64;
    group.bench_function("epoch_10k_dirty_64B", |b| {
        b.iter_batched(
            || {
                epoch += 1;
                epoch_batch(epoch)
            },
            |batch| store.write(batch).expect("write"),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn loaded_store() -> (tempfile::TempDir, RocksStateStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RocksStateStore::open(dir.path()).expect("open");
    for chunk in 0..KEYS / 10_000 {
        let mut b = StateBatch::default();
        for key in chunk * 10_000..(chunk + 1) * 10_000 {
            for w in 0..WINDOWS_PER_KEY {
                b.put(Table::Windows, window_key(key, w), value(key));
            }
        }
        store.write(b).expect("load");
    }
    // Reads then come from SST files through the block cache and bloom filters, as for cold
    // keys evicted from the operators' memory.
    store.flush().expect("flush");
    (dir, store)
}

fn bench_reads(c: &mut Criterion) {
    let (_dir, store) = loaded_store();
    let mut group = c.benchmark_group("state_store/read");
    let mut i = 0u64;
    group.bench_function("get_hit", |b| {
        b.iter(|| {
            i = (i + 7_919) % KEYS;
            black_box(
                store
                    .get(Table::Windows, &window_key(i, i % WINDOWS_PER_KEY))
                    .expect("get"),
            )
        })
    });
    let mut i = 0u64;
    group.bench_function("get_miss", |b| {
        b.iter(|| {
            i = (i + 7_919) % KEYS;
            // Same key, a window that was never written: the bloom filter answers.
            black_box(
                store
                    .get(Table::Windows, &window_key(i, 1_000 + i))
                    .expect("get"),
            )
        })
    });
    let mut i = 0u64;
    group.throughput(Throughput::Elements(WINDOWS_PER_KEY));
    group.bench_function("prefix_scan_one_key", |b| {
        b.iter(|| {
            i = (i + 7_919) % KEYS;
            let prefix = &window_key(i, 0)[..8];
            let mut n = 0usize;
            scan_prefix(&store, Table::Windows, prefix, &mut |k, v| {
                n += k.len() + v.len();
                true
            })
            .expect("scan");
            black_box(n)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_write, bench_reads);
criterion_main!(benches);
