#!/bin/bash
# One round of `ckpt-tool bench --op open --clients 64` (create, close,
# delete per op) against a fresh server SERVER_BIN; prints LABEL ROUND
# creations/s and latency. Alternate two binaries for a side-by-side run:
#   for r in 1 2 3 4 5; do benches/open_compare.sh OLD before $r; benches/open_compare.sh NEW after $r; done
# usage: open_compare.sh SERVER_BIN LABEL ROUND  (CKPT_TOOL overrides the tool)
set -e
BIN=$1; LABEL=$2; ROUND=$3
D=$(mktemp -d)
PORT=$((17400 + RANDOM % 1000)); APORT=$((PORT + 1000))
$BIN --data-dir $D/data --listen 127.0.0.1:$PORT --admin-listen 127.0.0.1:$APORT 2> $D/server.log &
PID=$!
for i in $(seq 1 200); do grep -q "ckpt-server ready" $D/server.log 2>/dev/null && break; sleep 0.1; done
${CKPT_TOOL:-$(dirname "$0")/../target/release/ckpt-tool} bench --addr 127.0.0.1:$PORT --op open --clients 64 --duration-s 5 --json > $D/out.json
kill -TERM $PID; wait $PID || true
python3 -c "import json;r=json.load(open('$D/out.json'));print('$LABEL', $ROUND, round(r['ops_per_s'],1), 'p50', r['p50_us'], 'p99', r['p99_us'], 'errors', len(r['client_errors']))"
rm -rf $D
