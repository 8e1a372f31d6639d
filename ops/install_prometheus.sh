#!/bin/sh
# Unpacks Debian's prometheus package (prometheus + promtool, Go binaries needing only libc) into
# .cache/prometheus without running its maintainer scripts: the package's postinst starts a system
# service and fails where there is no service manager. Idempotent: a second run only prints paths.
#
#   ops/install_prometheus.sh            # prints two lines: PROMETHEUS=<path> and PROMTOOL=<path>
#   eval "$(ops/install_prometheus.sh)" && "$PROMTOOL" check rules ops/prometheus/rules/*.yml
#   GDX_PROMETHEUS_DIR=/elsewhere ops/install_prometheus.sh
#
# Needs root (or an apt that can download as this user) on Debian/Ubuntu. The libjs-* dependencies
# only serve the old console templates and are not fetched: the HTTP API and rule tools need none.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
dest=${GDX_PROMETHEUS_DIR:-$repo/.cache/prometheus}
bin=$dest/usr/bin

report() {
    echo "PROMETHEUS=$bin/prometheus"
    echo "PROMTOOL=$bin/promtool"
}

if [ -x "$bin/prometheus" ] && [ -x "$bin/promtool" ] && "$bin/promtool" --version >/dev/null 2>&1; then
    report
    exit 0
fi

command -v apt-get >/dev/null 2>&1 || { echo "install_prometheus: apt-get not found (Debian/Ubuntu only)" >&2; exit 1; }
command -v dpkg-deb >/dev/null 2>&1 || { echo "install_prometheus: dpkg-deb not found" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
# apt-get download writes into the current folder; as root apt drops to the _apt user, which
# must be able to write there.
chmod 0777 "$work"

download() {
    (cd "$work" && apt-get download -q prometheus) >"$work/apt.log" 2>&1
}

if ! download; then
    # A fresh machine (or a container image) often has no package lists yet.
    echo "install_prometheus: apt-get download failed, running apt-get update once" >&2
    apt-get update -q >"$work/update.log" 2>&1 || { cat "$work/update.log" >&2; exit 1; }
    download || { cat "$work/apt.log" >&2; exit 1; }
fi

deb=$(ls "$work"/prometheus_*.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || { echo "install_prometheus: no prometheus .deb downloaded" >&2; cat "$work/apt.log" >&2; exit 1; }

# Unpack beside the destination then swap it in, so an interrupted run leaves no half-tree.
mkdir -p "$(dirname "$dest")"
staging=$dest.partial.$$
rm -rf "$staging"
dpkg-deb -x "$deb" "$staging"
[ -x "$staging/usr/bin/prometheus" ] && [ -x "$staging/usr/bin/promtool" ] \
    || { rm -rf "$staging"; echo "install_prometheus: package has no usr/bin/prometheus or usr/bin/promtool" >&2; exit 1; }
rm -rf "$dest"
mv "$staging" "$dest"
basename "$deb" >"$dest/VERSION"

"$bin/promtool" --version >/dev/null 2>&1 || { echo "install_prometheus: $bin/promtool does not run" >&2; exit 1; }
report
