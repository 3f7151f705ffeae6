#!/usr/bin/env bash
# Side-by-side durable write throughput on one machine, in one go:
#   ckpt:  ckpt-tool bench --clients 64 --value-size 1024 against ckpt-server
#   redis: redis-benchmark -c 64 -d 1024 -t set against
#          redis-server --appendonly yes --appendfsync always
# Prints both throughputs, both p99 latencies and the ratio.
#
# The machine is shared and noisy, so the two run alternately for ROUNDS
# rounds and the medians are reported.
#
# Usage: benches/compare.sh [DURATION_S] [ROUNDS]   (defaults 20 and 3;
# redis runs the same number of requests ckpt completed, at least 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-20}
rounds=${2:-3}
clients=64
value=1024

command -v redis-server >/dev/null || { echo "installing redis-server (Debian package)"; apt-get update -qq && apt-get install -y -qq redis-server; }
cargo build --release -p ckpt-server -p ckpt-tool >/dev/null

work=$(mktemp -d)
cleanup() {
  [ -n "${ckpt_pid:-}" ] && kill "$ckpt_pid" 2>/dev/null || true
  [ -n "${redis_pid:-}" ] && kill "$redis_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

results=()
for round in $(seq "$rounds"); do
# --- ckpt ---
ckpt_port=$(free_port); admin_port=$(free_port)
target/release/ckpt-server --data-dir "$work/ckpt-$round" --listen "127.0.0.1:$ckpt_port" --admin-listen "127.0.0.1:$admin_port" 2>"$work/ckpt.log" &
ckpt_pid=$!
for _ in $(seq 100); do grep -q "ckpt-server ready" "$work/ckpt.log" && break; sleep 0.2; done
target/release/ckpt-tool bench --addr "127.0.0.1:$ckpt_port" --clients $clients --value-size $value --duration-s "$duration" --json >"$work/ckpt.json"
kill -TERM "$ckpt_pid"; wait "$ckpt_pid" || true; ckpt_pid=
ckpt_ops=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["ops_per_s"])' "$work/ckpt.json")
ckpt_p99=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["p99_us"]/1000)' "$work/ckpt.json")
ckpt_ops_done=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["ops"])' "$work/ckpt.json")

# --- redis ---
redis_port=$(free_port)
mkdir -p "$work/redis-$round"
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis-$round" --appendonly yes --appendfsync always --save "" --daemonize no >"$work/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
requests=$(( ckpt_ops_done > 100000 ? ckpt_ops_done : 100000 ))
redis-benchmark -p "$redis_port" -c $clients -d $value -t set -n "$requests" -r 100000 --csv >"$work/redis.csv"
kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true; redis_pid=
# "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
read -r redis_ops redis_p99 < <(python3 -c '
import csv,sys
rows=[r for r in csv.reader(open(sys.argv[1])) if r and r[0]=="SET"]
print(rows[0][1], rows[0][6])' "$work/redis.csv")

echo "round $round: ckpt $ckpt_ops ops/s p99 ${ckpt_p99} ms; redis $redis_ops ops/s p99 ${redis_p99} ms"
results+=("$ckpt_ops $ckpt_p99 $redis_ops $redis_p99")
done
python3 - "${results[@]}" <<'PY'
import statistics, sys
rows = [list(map(float, r.split())) for r in sys.argv[1:]]
co = statistics.median(r[0] for r in rows); cp = statistics.median(r[1] for r in rows)
ro = statistics.median(r[2] for r in rows); rp = statistics.median(r[3] for r in rows)
ratio = statistics.median(r[0] / r[2] for r in rows); p99_ratio = statistics.median(r[1] / r[3] for r in rows)
print(f"medians over {len(rows)} alternating rounds:")
print(f"| system | durable writes/s | p99 ms |")
print(f"|---|---:|---:|")
print(f"| ckpt (64 clients, 1 KiB overwrite) | {co:,.0f} | {cp:.2f} |")
print(f"| redis AOF fsync always (SET, -c 64 -d 1024) | {ro:,.0f} | {rp:.2f} |")
print(f"throughput ratio ckpt/redis = {ratio:.2f} (per round: {', '.join(f'{r[0]/r[2]:.2f}' for r in rows)})   p99 ratio ckpt/redis = {p99_ratio:.2f}")
PY
