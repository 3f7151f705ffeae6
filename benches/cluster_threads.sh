#!/usr/bin/env bash
# Where a 3-node cluster's CPU goes, thread by thread: starts a fresh
# 3-node cluster on loopback (replication_factor 3, min_in_sync 2), runs one
# `ckpt-tool bench` against it, and prints the servers' CPU time (user +
# system, from /proc/PID/task/*/stat) per operation for each thread name
# (tokio-rt-worker, ckpt-wal, ckpt-fsync, ckpt-log-reader, rocksdb:*) and
# per node. The bench client shares the two cores; these figures do not
# count it.
#
# Usage: benches/cluster_threads.sh [BENCH ARGS...]
#   default bench: --checkpoints 12 --clients 64 --value-size 1024
#                  --mode all-safe --duration 10s
#   e.g. checkpoint creation: benches/cluster_threads.sh --op fill --keep \
#          --total 3000 --sections 10 --value-size 100 --clients 64 --mode all-safe
#   BIN_DIR=DIR  take ckpt-server and ckpt-tool from DIR (default
#                target/release, built first); for A/B runs of two builds
#   PERF=FILE    also `perf record` all three servers for 8 s into FILE,
#                starting PERF_DELAY seconds (default 2) into the bench
#   IDLE=SECS    then, 5 s after the bench, the servers' CPU per thread
#                over SECS seconds without load (what holding the bench's
#                checkpoints costs; with --keep)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release -p ckpt-server -p ckpt-tool >/dev/null
fi
bin=${BIN_DIR:-target/release}
if [ $# -eq 0 ]; then
  set -- --checkpoints 12 --clients 64 --value-size 1024 --mode all-safe --duration 10s
fi

work=$(mktemp -d)
pids=()
# shellcheck source=benches/cluster_lib.sh
. benches/cluster_lib.sh
trap 'stop_all; rm -rf "$work"' EXIT
start_cluster "$work" "$bin"

# pid, thread name, CPU ticks so far
snapshot() {
  local pid task
  for pid in "${pids[@]}"; do
    for task in /proc/"$pid"/task/*; do
      echo "$pid $(tr ' ' _ <"$task/comm") $(awk '{print $14 + $15}' "$task/stat")"
    done
  done
}
snapshot >"$work/before"
perf_pid=
if [ -n "${PERF:-}" ]; then
  (sleep "${PERF_DELAY:-2}"
   perf record -F 499 -o "$PERF" -p "$(IFS=,; echo "${pids[*]}")" -- sleep 8 >/dev/null 2>&1) &
  perf_pid=$!
fi
"$bin/ckpt-tool" bench --addr "$cluster_addrs" "$@" --json >"$work/out.json"
snapshot >"$work/after"
if [ -n "$perf_pid" ]; then wait "$perf_pid" || true; fi

# CPU per thread name and per node between two snapshots: KIND "op"
# divides by the ops of out.json (and prints its summary), "s" by SECS.
cpu_report() { # BEFORE AFTER KIND [SECS]
  python3 - "$work" "$(getconf CLK_TCK)" "$@" <<'PY'
import collections, json, sys
work, hz, before_file, after_file, kind = sys.argv[1:6]
hz = int(hz)
def load(path):
    ticks = collections.defaultdict(int)
    for line in open(path):
        pid, name, t = line.split()
        ticks[(pid, name)] += int(t)
    return ticks
before, after = load(before_file), load(after_file)
per_thread, per_node = collections.defaultdict(int), collections.defaultdict(int)
for key, t in after.items():
    d = t - before.get(key, 0)
    per_thread[key[1]] += d
    per_node[key[0]] += d
if kind == "op":
    out = json.load(open(work + "/out.json"))
    ops = out["ops"]
    print(f"{out['op'] if 'op' in out else 'write'}: {ops} ops, {out['ops_per_s']:.1f}/s, "
          f"p50 {out['p50_us'] / 1000:.2f} ms, p99 {out['p99_us'] / 1000:.2f} ms")
    unit, scale = "us", 1e6 / hz / max(ops, 1)
    print(f"server CPU per op: {sum(per_thread.values()) * scale:.1f} {unit}")
else:
    secs = float(sys.argv[6])
    unit, scale = "ms/s", 1e3 / hz / secs
    print(f"idle for {secs:.0f} s, server CPU: {sum(per_thread.values()) * scale:.1f} {unit}")
for name, t in sorted(per_thread.items(), key=lambda kv: -kv[1]):
    if t:
        print(f"  {name:20s} {t * scale:10.1f} {unit}")
print("per node:", ", ".join(f"{t * scale:.1f} {unit}" for _, t in sorted(per_node.items())))
PY
}
cpu_report "$work/before" "$work/after" op

if [ -n "${IDLE:-}" ]; then
  sleep 5
  snapshot >"$work/idle_before"
  sleep "$IDLE"
  snapshot >"$work/idle_after"
  cpu_report "$work/idle_before" "$work/idle_after" s "$IDLE"
fi
