#!/usr/bin/env bash
# A node failure and return at scale: starts a fresh 3-node cluster on
# loopback, fills it with TOTAL checkpoints of 2 sections (ALL_SAFE, 64
# clients, kept), kills node 2 with SIGKILL, waits until the cluster
# declares it dead, restarts it, and prints how long until every
# checkpoint is fully replicated again (`ckpt-tool cluster status`:
# under_replicated 0, every node alive), then every node's log lines about
# failovers, elections and lease expiries. A node's runtime that falls
# behind shows there as "lease expired" and, at worst, as a failover of a
# second node.
#
# Usage: benches/cluster_restart.sh [TOTAL]   (default 20000)
#   BIN_DIR=DIR  take ckpt-server and ckpt-tool from DIR (default
#                target/release, built first)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release -p ckpt-server -p ckpt-tool >/dev/null
fi
bin=${BIN_DIR:-target/release}
total=${1:-20000}

work=$(mktemp -d)
pids=()
# shellcheck source=benches/cluster_lib.sh
. benches/cluster_lib.sh
trap 'stop_all; rm -rf "$work"' EXIT
start_cluster "$work" "$bin"
"$bin/ckpt-tool" bench --addr "$cluster_addrs" --op fill --keep --total "$total" \
  --sections 2 --value-size 100 --clients 64 --mode all-safe --duration 600s --json |
  python3 -c '
import json, sys
d = json.load(sys.stdin)
print("filled %d checkpoints at %.0f/s" % (d["ops"], d["ops_per_s"]))'

# "UNDER_REPLICATED ALL_ALIVE"
status() {
  cluster_summary "$bin" "$work/cluster.toml" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(d.get("under_replicated"), all(n["alive"] for n in d["nodes"]))' || echo "? ?"
}

kill -KILL "${pids[1]}"
wait "${pids[1]}" 2>/dev/null || true
killed=$SECONDS
until [ "$(status | cut -d' ' -f2)" = "False" ]; do sleep 0.5; done
echo "node 2 declared dead after $((SECONDS - killed)) s"
"$bin/ckpt-server" --config "$work/cluster.toml" --node-id 2 --data-dir "$work/n2" \
  2>>"$work/n2.log" &
pids[1]=$!
start=$(date +%s.%N)
back=
while [ "$(python3 -c "print(int($(date +%s.%N) - $start))")" -lt 300 ]; do
  if [ "$(status)" = "0 True" ]; then back=1; break; fi
  sleep 0.5
done
took=$(python3 -c "print(round($(date +%s.%N) - $start, 1))")
if [ -n "$back" ]; then
  echo "node 2 back and every checkpoint fully replicated ${took} s after its restart"
else
  echo "NOT fully replicated ${took} s after node 2's restart: $(status)"
fi
for i in 1 2 3; do
  grep -h "failover applied\|control-plane leader node\|lease expired" "$work/n$i.log" |
    sed "s/^/n$i: /" | cut -c1-150 || true
done | sort -k2
