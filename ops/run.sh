#!/usr/bin/env bash
# `make run`: the local broker, topics, the five services in the background, then demo data through
# the whole pipeline, ending with a Beacon answer. Safe to run again: what runs is left running.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
RUN=${GDX_RUN_DIR:-$PWD/.run}
export GDX_RUN_DIR=$RUN
mkdir -p "$RUN/logs" "$RUN/pids"

# GDX_KAFKA_SECURITY=sasl_ssl make run: the secured broker (TLS, SCRAM users, ACLs from the catalog) and every
# process below connecting as its own principal; secrets are generated under $RUN/kafka/secure/secrets/.
SECURE=
if [ "${GDX_KAFKA_SECURITY:-plaintext}" = sasl_ssl ]; then SECURE=--secure; fi
unset GDX_KAFKA_SECURITY GDX_KAFKA_USERNAME GDX_KAFKA_PASSWORD_FILE GDX_KAFKA_PASSWORD GDX_KAFKA_CA_FILE
other=$([ -n "$SECURE" ] && echo local || echo secure)
if $BIN/python -m gdx.broker status --name "$other" >/dev/null 2>&1; then
  echo "the $other broker is running on the same port: make stop first" >&2; exit 1
fi
# creds PRINCIPAL: the GDX_KAFKA_* exports that connect as PRINCIPAL (secured run; nothing on a plain run)
creds() { if [ -n "$SECURE" ]; then $BIN/python -m gdx.broker env --secure --principal "$1"; fi; }
# as PRINCIPAL CMD...: run CMD with PRINCIPAL's credentials
as() { local principal=$1; shift; ( eval "$(creds "$principal")"; exec "$@" ); }

$BIN/python -m gdx.broker start $SECURE
as admin $BIN/gdx topics apply >/dev/null
echo "topics provisioned ($($BIN/gdx topics list | wc -l) in the catalog)${SECURE:+, ACLs applied}"

start() {
  local name=$1
  local pidf="$RUN/pids/$name.pid"
  if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
    echo "$name already running (pid $(cat "$pidf"))"; return
  fi
  # the subshell execs the service, so $! is the service's own pid (make stop signals it)
  ( eval "$(creds "$name")"; exec nohup setsid $BIN/gdx serve "$name" >>"$RUN/logs/$name.log" 2>&1 </dev/null ) &
  echo $! >"$pidf"
  echo "$name started (pid $!, log $RUN/logs/$name.log)"
}
for s in ingest anonymize consent_gate index publish; do start "$s"; done

DEMO=$RUN/demo
if [ ! -f "$DEMO/demo.vcf.gz" ]; then
  $BIN/gdx demo-data --samples 50 --records 20000 --out "$DEMO"
fi
# consent first (a center usually records it before sequencing), then the clinical and genomic data
as ingest $BIN/gdx consent load "$DEMO/consent.csv"
as ingest $BIN/gdx ingest phenopacket "$DEMO/phenopackets" --center demo-center --dataset demo-dataset
as ingest $BIN/gdx ingest vcf "$DEMO/demo.vcf.gz" --center demo-center --dataset demo-dataset
as cli $BIN/gdx wait --idle --timeout 300
as cli $BIN/gdx status

echo
echo "Beacon: is chr1 variation seen in released data? (GET /api/g_variants, count granularity)"
first=$($BIN/python - "$DEMO/demo.vcf.gz" <<'PY'
import sys, pysam
for rec in pysam.VariantFile(sys.argv[1]):
    if rec.alts and len(rec.ref) == 1 and len(rec.alts[0]) == 1:
        print(rec.chrom, rec.pos - 1, rec.ref, rec.alts[0]); break
PY
)
read -r chrom start ref alt <<<"$first"
url="http://127.0.0.1:5050/api/g_variants?assemblyId=GRCh38&referenceName=$chrom&start=$start&referenceBases=$ref&alternateBases=$alt&requestedGranularity=count"
echo "curl '$url'"
$BIN/python -c "import json,sys,urllib.request; print(json.dumps(json.load(urllib.request.urlopen(sys.argv[1]))['responseSummary'], indent=2))" "$url"
token=$($BIN/gdx token --dataset demo-dataset --purpose HMB)
echo "with a visa for HMB research (record granularity):"
$BIN/python -c "
import json,sys,urllib.request
r=urllib.request.Request(sys.argv[1].replace('=count','=record'), headers={'Authorization': 'Bearer '+sys.argv[2]})
d=json.load(urllib.request.urlopen(r))
print(json.dumps(d['responseSummary']), d['meta'].get('returnedGranularity'))" "$url" "$token"
cat <<MSG

gdx is running.
  Beacon API   http://127.0.0.1:5050/api      (try /api/info, /api/datasets, /api/filtering_terms)
  metrics      http://127.0.0.1:9101..9106/metrics  (ingest, anonymize, consent_gate, index, publish, publish feeds)
  logs         $RUN/logs/<service>.log  (JSON lines)
  topics       .venv/bin/gdx tail gdx.released.variants.v1 --from-beginning
  status       .venv/bin/gdx status
  stop         make stop
MSG
