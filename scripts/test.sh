#!/usr/bin/env bash
# The test command: starts the real servers the tests talk to (redis-server, a Kafka-protocol
# broker and a MongoDB-wire server, installed on first use; see scripts/services.sh), runs
# `cargo test --workspace` with any extra arguments, and stops the servers by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

export WEIR_SERVICES_DIR
# The servers' files live in memory where the machine has /dev/shm: the broker rewrites its
# whole state on every change, and on a shared disk those writes can hold up the others.
WEIR_SERVICES_DIR="$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)"
trap 'scripts/services.sh stop; rm -rf "$WEIR_SERVICES_DIR"' EXIT
eval "$(scripts/services.sh start redis kafka tansu mongodb)"
echo "test servers: redis $WEIR_TEST_REDIS, kafka $WEIR_TEST_KAFKA (second broker $WEIR_TEST_TANSU), mongodb $WEIR_TEST_MONGODB" >&2
cargo test --workspace "$@"
# The Kafka tests that do not depend on read_committed again, on the second broker (Tansu), so
# behaviour does not rest on one broker's quirks.
echo "second Kafka-protocol broker: Tansu at $WEIR_TEST_TANSU" >&2
# (`--workspace` keeps the dependency features of the main run: `-p` would rebuild RocksDB.)
WEIR_TEST_KAFKA="$WEIR_TEST_TANSU" cargo test --workspace --test kafka "$@" -- committed_positions
WEIR_TEST_KAFKA="$WEIR_TEST_TANSU" cargo test --workspace --test kafka_produce "$@" -- produce_json delivery_failures
