#!/bin/sh
# A Docker Compose v2 client for `docker compose config` checks (tests/unit/test_compose*.py) on
# machines without Docker: built from source with Go (`go install`, the Go module proxy) into
# .cache/bin/docker-compose. Needs no Docker daemon: `config` only parses and validates the files.
# Idempotent; where a compose client already answers, or Go is absent, it does nothing.
#
#   ops/install_compose.sh          # prints COMPOSE=<command> when one is available
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
version=${GDX_COMPOSE_VERSION:-v2.29.7}
bin=$repo/.cache/bin

if docker compose version >/dev/null 2>&1; then echo "COMPOSE=docker compose"; exit 0; fi
if command -v docker-compose >/dev/null 2>&1; then echo "COMPOSE=$(command -v docker-compose)"; exit 0; fi
if [ -x "$bin/docker-compose" ] && "$bin/docker-compose" version >/dev/null 2>&1; then
    echo "COMPOSE=$bin/docker-compose"; exit 0
fi
go=$(command -v go || true)
[ -n "$go" ] || { [ -x /usr/local/go/bin/go ] && go=/usr/local/go/bin/go; } || true
if [ -z "$go" ]; then
    echo "install_compose: no compose client and no Go toolchain: compose checks will skip" >&2
    exit 0
fi
mkdir -p "$bin"
echo "install_compose: building docker compose $version from source (a few minutes, once)" >&2
GOBIN=$bin GOFLAGS=-mod=mod "$go" install "github.com/docker/compose/v2/cmd@$version" >&2
mv "$bin/cmd" "$bin/docker-compose"
echo "COMPOSE=$bin/docker-compose"
