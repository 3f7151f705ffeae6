#!/usr/bin/env bash
# One node against Redis, side by side on one machine, in one run:
#   writes  ckpt-tool bench --clients 64 --value-size 1024 (WR_ACTIVE_REPLICA:
#           durable before acknowledged) against one ckpt-server, vs
#           redis-benchmark -c 64 -d 1024 -t set -r 64 against
#           redis-server --appendonly yes --appendfsync always
#   reads   ckpt-tool bench --op read (each client reads back its own 1 KiB
#           section) vs redis-benchmark -t get -r 64 on the keys the SET
#           run wrote
# Both sides touch 64 keys (one section per client; -r 64).
#
# The machine is shared and noisy, and the bench client shares its two
# cores with the server, so:
#   - rounds alternate (odd rounds ckpt first, even rounds Redis first),
#     every round on fresh data directories;
#   - the table gives medians and each round's ratio;
#   - server CPU per operation (user + system time of the server process,
#     from /proc, over the operations it answered) is reported next to
#     throughput: it does not depend on how much CPU the client takes.
# Redis runs as many requests as ckpt completed in the same round (at
# least 100000), so both run about as long.
#
# Threads: redis-server serves from one thread and redis-benchmark runs on
# one. By default ckpt does the same here (ckpt-server --worker-threads 1,
# ckpt-tool bench --threads 1): on two cores, two busy threads per side
# get preempted for whole scheduler slices, which is what the read p99
# then measures. SERVER_THREADS=0 CLIENT_THREADS=0 runs both with one
# thread per core (their defaults).
#
# Usage: benches/compare.sh [DURATION_S] [ROUNDS]   (defaults 20 and 3)
#   CLUSTER=1  then also benches/cluster_compare.sh (3-node ALL_SAFE and
#              ACTIVE_REPLICA against a 3-node etcd) with the same arguments
#   KEEP=1     keep the work directory (logs, JSON) and print its path
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-20}
rounds=${2:-3}
clients=64
value=1024
server_threads=${SERVER_THREADS:-1}
client_threads=${CLIENT_THREADS:-1}

make -s bench-deps
cargo build --release -p ckpt-server -p ckpt-tool >/dev/null
tool=target/release/ckpt-tool

work=$(mktemp -d)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# CPU seconds (user + system) a process has used so far.
cpu_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}

json_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# Waits until CMD succeeds, at most 30 s.
wait_for() {
  local deadline=$((SECONDS + 30))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then echo "timed out waiting for: $*" >&2; return 1; fi
    sleep 0.2
  done
}

run_ckpt() { # ROUND -> $work/ckpt-ROUND-{write,read}.json
  local round=$1 port admin pid
  port=$(free_port); admin=$(free_port)
  target/release/ckpt-server --data-dir "$work/ckpt-$round" --listen "127.0.0.1:$port" \
    --admin-listen "127.0.0.1:$admin" --worker-threads "$server_threads" 2>"$work/ckpt-$round.log" &
  pid=$!; pids+=("$pid")
  wait_for grep -q "ckpt-server ready" "$work/ckpt-$round.log"
  "$tool" bench --addr "127.0.0.1:$port" --clients $clients --value-size $value \
    --threads "$client_threads" --duration "$duration" --server-pid "$pid" --json >"$work/ckpt-$round-write.json"
  "$tool" bench --addr "127.0.0.1:$port" --clients $clients --value-size $value \
    --threads "$client_threads" --duration "$duration" --op read --server-pid "$pid" --json >"$work/ckpt-$round-read.json"
  kill -TERM "$pid"; wait "$pid" || true
}

run_redis() { # ROUND REQUESTS -> $work/redis-ROUND-{set,get}.csv and .cpu
  local round=$1 requests=$2 port pid test before after
  port=$(free_port)
  mkdir -p "$work/redis-$round"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$work/redis-$round" --appendonly yes \
    --appendfsync always --save "" --daemonize no >"$work/redis-$round.log" 2>&1 &
  pid=$!; pids+=("$pid")
  wait_for redis-cli -p "$port" ping
  for test in set get; do
    before=$(cpu_seconds "$pid")
    redis-benchmark -p "$port" -c $clients -d $value -t $test -n "$requests" -r $clients \
      --csv >"$work/redis-$round-$test.csv"
    after=$(cpu_seconds "$pid")
    python3 -c "print($after - $before)" >"$work/redis-$round-$test.cpu"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then
    run_ckpt "$round"
    done_ops=$(json_field "$work/ckpt-$round-write.json" ops)
    requests=$(( done_ops > 100000 ? done_ops : 100000 ))
    run_redis "$round" "$requests"
  else
    # Redis first: as many requests as the previous round's ckpt completed.
    run_redis "$round" "$requests"
    run_ckpt "$round"
  fi
  echo "$requests" >"$work/redis-$round.requests"
  echo "round $round done" >&2
done

SERVER_THREADS=$server_threads CLIENT_THREADS=$client_threads python3 - "$work" "$rounds" <<'PY'
import csv, json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
med = statistics.median

def ckpt(r, op):
    d = json.load(open(f"{work}/ckpt-{r}-{op}.json"))
    return d["ops_per_s"], d["p99_us"] / 1000, d["server_cpu_us_per_op"]

def redis(r, test):
    name = test.upper()
    row = [x for x in csv.reader(open(f"{work}/redis-{r}-{test}.csv")) if x and x[0] == name][0]
    requests = int(open(f"{work}/redis-{r}.requests").read())
    cpu_s = float(open(f"{work}/redis-{r}-{test}.cpu").read())
    return float(row[1]), float(row[6]), cpu_s * 1e6 / requests

import os
print(f"one node, {rounds} alternating rounds, 64 clients x 1 KiB, 64 keys; ckpt-server "
      f"--worker-threads {os.environ['SERVER_THREADS']}, bench --threads {os.environ['CLIENT_THREADS']} (0: one per core)")
print("| | ckpt ops/s | Redis ops/s | ratio (per round) | ckpt p99 ms | Redis p99 ms | server CPU us/op, ckpt vs Redis |")
print("|---|---:|---:|---|---:|---:|---:|")
for op, test, what in (("write", "set", "durable writes (Redis appendfsync always)"),
                       ("read", "get", "reads")):
    c = [ckpt(r, op) for r in range(1, rounds + 1)]
    x = [redis(r, test) for r in range(1, rounds + 1)]
    ratios = [a[0] / b[0] for a, b in zip(c, x)]
    per_round = ", ".join(f"{q:.2f}" for q in ratios)
    print(f"| {what} | {med(a[0] for a in c):,.0f} | {med(b[0] for b in x):,.0f} | "
          f"{med(ratios):.2f} ({per_round}) | {med(a[1] for a in c):.2f} | "
          f"{med(b[1] for b in x):.2f} | {med(a[2] for a in c):.1f} vs {med(b[2] for b in x):.1f} |")
PY
if [ -n "${CLUSTER:-}" ]; then
  benches/cluster_compare.sh "$duration" "$rounds"
fi
