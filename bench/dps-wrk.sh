#!/usr/bin/env bash
# DPS start+terminate pairs against a real `sluice serve`, driven by wrk from another process
# (issue #5's benchmark, the way the reference figures were taken).
#
#   bench/dps-wrk.sh [stores] [connections] [duration]
#   bench/dps-wrk.sh memory,redb,postgres 1,32 10s      # the defaults
#
# Needs wrk (Debian: `apt-get install wrk`) and a release build (`cargo build --release`).
# PostgreSQL comes from SLUICE_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test);
# each run gets a fresh schema, dropped afterwards. The server serves real provider-pull starts
# (a file dataset, tokens issued and revoked in the flow's transaction), on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

stores=${1:-memory,redb,postgres}
conns=${2:-1,32}
duration=${3:-10s}
pg_url=${SLUICE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
bin=target/release/sluice
port=${PORT:-3599}

command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }
[ -x "$bin" ] || { echo "$bin is missing: run cargo build --release" >&2; exit 2; }

work=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
echo '{"n":1}' >"$work/dataset.jsonl"

config() { # store -> config file
  local store=$1 file="$work/$1.yaml" backend settings=""
  case $store in
    memory) backend=memory ;;
    redb) backend=redb ;;
    postgres)
      backend=postgres
      settings="    settings:
      url: $pg_url
      schema: sluice_dpswrk_$$
      table: flows" ;;
    *) echo "unknown store $store (memory, redb, postgres)" >&2; exit 2 ;;
  esac
  cat >"$file" <<EOF
listen: 127.0.0.1:$port
dataDir: $work/data-$store
stores:
  - name: flows
    backend: $backend
$settings
signaling:
  store: flows
  transfers:
    requireHttps: false
    datasets:
      dataset-1:
        plugin: file
        settings:
          path: $work/dataset.jsonl
EOF
  echo "$file"
}

echo "wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'), $(nproc) cores shared by server, wrk and the store's server; $duration per row"
for store in ${stores//,/ }; do
  for c in ${conns//,/ }; do
    file=$(config "$store")
    rm -rf "$work/data-$store"
    "$bin" serve --config "$file" --log-level warn >"$work/serve.log" 2>&1 &
    server=$!
    for _ in $(seq 1 100); do
      curl -fs -o /dev/null "http://127.0.0.1:$port/readyz" && break
      sleep 0.1
    done
    printf '%-9s %3s conn  ' "$store" "$c"
    wrk -t1 -c"$c" -d"$duration" -s bench/wrk/dps-pairs.lua "http://127.0.0.1:$port" |
      awk '/^pairs\/s/ {rate=$2} /^request latency/ {lat=$0} /^pairs [0-9]/ {errs=$6}
           END {sub("request latency ", "", lat); printf "%8s pairs/s  per request: %s  errors %s\n", rate, lat, errs}'
    kill "$server" && wait "$server" 2>/dev/null || true
    server=""
    if [ "$store" = postgres ]; then
      psql "$pg_url" -qc "DROP SCHEMA IF EXISTS sluice_dpswrk_$$ CASCADE" >/dev/null 2>&1 || true
    fi
  done
done
