//! Kafka helpers shared by the end-to-end tests that talk to a broker.

use std::process::Child;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use weir_engine::oracle::{self, ResultMap};

/// The broker the tests use (`WEIR_TEST_KAFKA`).
pub fn kafka() -> String {
    std::env::var("WEIR_TEST_KAFKA").unwrap_or_else(|_| {
        panic!(
            "WEIR_TEST_KAFKA is not set; start a broker with \
             `eval \"$(scripts/services.sh start kafka)\"`"
        )
    })
}

/// Client settings pointing at [`kafka`].
pub fn client() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", kafka());
    c
}

/// Every record of the result topic a read_committed consumer sees.
pub fn committed_results(topic: &str) -> Vec<serde_json::Value> {
    let consumer: BaseConsumer = client()
        .set("group.id", format!("{topic}-check"))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let partitions = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map(|m| m.topics().first().map_or(0, |t| t.partitions().len()))
        .unwrap_or(0);
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)
            .unwrap();
    }
    if partitions == 0 {
        return Vec::new();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut eof = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while eof < partitions && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(serde_json::from_slice(m.payload().unwrap_or_default()).unwrap())
            }
            Some(Err(KafkaError::PartitionEOF(_))) => eof += 1,
            Some(Err(e)) => panic!("reading results: {e}"),
            None => {}
        }
    }
    out
}

/// Stops a worker gracefully and waits for it.
pub fn sigterm(child: &mut Child) {
    // SAFETY: signalling our own child process by its PID.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}

/// Final results by window, and how many windows had more than one final result.
pub fn finals(
    results: &[serde_json::Value],
    schema: &weir_engine::event::ResultSchema,
) -> (ResultMap, usize) {
    let finals: Vec<&serde_json::Value> = results
        .iter()
        .filter(|v| v["is_final"] == serde_json::Value::Bool(true))
        .collect();
    let map = oracle::last_results_from_json(finals.iter().copied(), schema);
    let duplicates = finals.len() - map.len();
    (map, duplicates)
}
