#!/usr/bin/env bash
# A node failure and return at scale: starts a fresh 3-node cluster on
# loopback, fills it with TOTAL checkpoints of 2 sections (ALL_SAFE, 64
# clients, kept), kills node 2 with SIGKILL, waits until the cluster
# declares it dead, restarts it, and prints how long until every
# checkpoint is fully replicated again (`ckpt-tool cluster status`:
# under_replicated 0, every node alive), then every node's log lines about
# failovers, elections, lease expiries and passes that held Raft up, and
# each node's runtime passes over 50/100/250/500 ms, Raft compactions and
# Raft message parts received (from /metrics). A node's runtime that
# falls behind shows there as "lease expired" and, at worst, as a failover
# of a second node.
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
  grep -h "failover applied\|control-plane leader node\|lease expired\|held up\|waited in" "$work/n$i.log" |
    sed "s/^/n$i: /" | cut -c1-420 || true
done | sort -k2
i=0
for admin in $(grep admin_addr "$work/cluster.toml" | cut -d'"' -f2); do
  i=$((i + 1))
  python3 -c '
import re, sys, urllib.request
passes, other = {}, {}
text = urllib.request.urlopen("http://%s/metrics" % sys.argv[2], timeout=10).read().decode()
for line in text.splitlines():
    m = re.match(r"ckpt_cluster_pass_seconds_bucket\{le=\"([^\"]+)\"\} (\S+)", line)
    if m:
        passes[m.group(1)] = float(m.group(2))
    m = re.match(r"(ckpt_cluster_raft_compaction_seconds_(?:sum|count)|ckpt_cluster_raft_message_parts_total) (\S+)", line)
    if m:
        other[m.group(1)] = float(m.group(2))
n = passes.get("+Inf", 0)
over = lambda le: int(n - passes.get(le, 0))
print("n%s: %d passes, over 50/100/250/500 ms: %d/%d/%d/%d; %d compactions (%.2f s off the driver); %d Raft message parts received" % (
    sys.argv[1], n, over("0.05"), over("0.1"), over("0.25"), over("0.5"),
    other.get("ckpt_cluster_raft_compaction_seconds_count", 0),
    other.get("ckpt_cluster_raft_compaction_seconds_sum", 0),
    other.get("ckpt_cluster_raft_message_parts_total", 0)))' "$i" "$admin" || true
done
