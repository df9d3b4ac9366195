#!/usr/bin/env bash
# Instructions a DPS start+terminate pair costs, counted by callgrind: repeatable for the same
# binary whatever the machine's speed or load, so two builds can be compared on any machine
# (pairs/s on these shared machines moves 15-30 % between runs of one binary).
#
#   bench/signaling-instructions.sh [binary] [store] [seconds]
#   bench/signaling-instructions.sh target/release/sluice memory 3      # the defaults
#
# Runs `sluice bench --signaling` at 32 connections under valgrind (about 50x slower, so a
# short run still completes thousands of pairs) and prints instructions a pair: all of them,
# the server's (axum's connection tasks: HTTP, handlers, store calls made from them), the load
# generator's, and the rest (store threads, runtime, start-up). Pairs are counted exactly, as the
# terminates' flow updates (one a pair), on every store.
# Needs valgrind and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:-target/release/sluice}
store=${2:-memory}
seconds=${3:-3}
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }
[ -x "$bin" ] || { echo "$bin is missing: run cargo build --release" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$work/out" "$bin" --log-level warn bench \
  --signaling --signaling-duration "${seconds}s" --signaling-stores "$store" \
  --signaling-concurrency 32 --dir "$work/data" 2>&1 | grep " conn " || true

python3 - "$work/out" <<'EOF'
import re, subprocess, sys

out = sys.argv[1]
def annotate(*args):
    return subprocess.run(["callgrind_annotate", "--threshold=100", *args, out],
                          capture_output=True, text=True, check=True).stdout

inclusive = annotate("--inclusive=yes")
def cost(pattern):
    best = 0
    for line in inclusive.splitlines():
        if re.search(pattern, line):
            best = max(best, int(line.split()[0].replace(",", "")))
    return best

# Pairs: each terminate encodes its flow once, from the flow repository's update.
lines = annotate("--tree=caller").splitlines()
pairs = 0
for i, line in enumerate(lines):
    if re.search(r"\*  .*sluice_signaling::repository::encode \[", line):
        for j in range(i - 1, max(0, i - 40), -1):
            if not lines[j].strip():
                break
            m = re.search(r"< .*FlowRepository::update::\{\{closure\}\} \(([\d,]+)x\)", lines[j])
            if m:
                pairs = max(pairs, int(m.group(1).replace(",", "")))
if pairs == 0:
    sys.exit("no terminate found in the profile")
total = cost(r"PROGRAM TOTALS")
server = cost(r"axum::serve::handle_connection::\{\{closure\}\}::\{\{closure\}\} \[")
client = cost(r"bench_signaling::load::connection::\{\{closure\}\} \[")
print(f"pairs {pairs}; instructions a pair: all {total / pairs:,.0f}, "
      f"server {server / pairs:,.0f}, load generator {client / pairs:,.0f}, "
      f"rest {(total - server - client) / pairs:,.0f}")
EOF
