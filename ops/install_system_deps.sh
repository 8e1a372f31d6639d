#!/usr/bin/env bash
# Debian packages gdx needs on the machine: Java 17+ (Kafka), Maven (resolves the Kafka jars),
# bcftools (the benchmark's decoding baseline, `make bench`), jemalloc (the index's malloc), and
# Prometheus/promtool (ops tests; unpacked, never started as a system service).
set -euo pipefail
need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing: ${need[*]} (install them, or run as root)" >&2; exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# optional: only the benchmark uses bcftools; without root it is skipped with a note
if ! command -v bcftools >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bcftools >/dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bcftools >/dev/null; }
  else
    echo "note: bcftools is not installed; make bench will skip its bcftools baseline" >&2
  fi
fi
# jemalloc: `gdx serve index` preloads it (GDX_INDEX_ALLOCATOR); without it the index runs on glibc's
# malloc, whose heap fragments under the index's load
if ! ls /usr/lib/*/libjemalloc.so.2 /usr/lib/libjemalloc.so.2 >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjemalloc2 >/dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjemalloc2 >/dev/null; }
  else
    echo "note: libjemalloc2 is not installed; gdx serve index will run on glibc's malloc" >&2
  fi
fi
if [ -x "$(dirname "$0")/install_prometheus.sh" ]; then
  "$(dirname "$0")/install_prometheus.sh" >/dev/null
fi
# a Docker Compose client (built with Go where none is installed) so `docker compose config` is checked
if [ -x "$(dirname "$0")/install_compose.sh" ]; then
  "$(dirname "$0")/install_compose.sh" >/dev/null || echo "note: no docker compose client; compose checks skip" >&2
fi
