#!/usr/bin/env bash
# `make stop`: stop the services `make run` started, then the broker. Leaves no process behind.
set -uo pipefail
cd "$(dirname "$0")/.."
RUN=${GDX_RUN_DIR:-$PWD/.run}
export GDX_RUN_DIR=$RUN
for pidf in "$RUN"/pids/*.pid; do
  [ -f "$pidf" ] || continue
  pid=$(cat "$pidf"); name=$(basename "$pidf" .pid)
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null
    echo "$name stopped"
  fi
  rm -f "$pidf"
done
if [ -x .venv/bin/python ]; then
  unset GDX_KAFKA_SECURITY GDX_KAFKA_USERNAME GDX_KAFKA_PASSWORD_FILE GDX_KAFKA_PASSWORD GDX_KAFKA_CA_FILE
  .venv/bin/python -m gdx.broker stop
  # the secured broker of `GDX_KAFKA_SECURITY=sasl_ssl make run`, if it was ever made
  if [ -d "$RUN/kafka/secure" ]; then .venv/bin/python -m gdx.broker stop --secure; fi
fi
