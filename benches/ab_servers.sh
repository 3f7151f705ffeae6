#!/usr/bin/env bash
# Two (or more) ckpt-server binaries side by side, alternating rounds: one
# fresh server per round (new data directory), `ckpt-server
# --worker-threads 1` and `ckpt-tool bench --clients 64 --threads 1`, the
# server's CPU time per operation from /proc. For before/after
# comparisons of a change on this shared machine: copy the binary built
# before the change aside, build after, and give both.
#
# Usage: benches/ab_servers.sh OP DURATION_S ROUNDS LABEL=SERVER_BINARY...
#   OP: write | read (read does a 2 s warm-up first)
#   TOOL=path  the ckpt-tool to drive them with (default target/release/ckpt-tool)
# Example:
#   cp target/release/ckpt-server /tmp/before   # then change and build
#   benches/ab_servers.sh write 8 4 before=/tmp/before after=target/release/ckpt-server
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 4 ]; then
  sed -n 9,14p "$0" >&2
  exit 2
fi
op=$1 duration=$2 rounds=$3
shift 3
tool=${TOOL:-target/release/ckpt-tool}

work=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

printf '%-10s %5s %10s %10s %9s %9s\n' system round ops/s cpu_us/op p50_us p99_us
for round in $(seq "$rounds"); do
  for pair in "$@"; do
    label=${pair%%=*}
    server=${pair#*=}
    dir=$work/$label-$round
    mkdir -p "$dir"
    port=$(free_port)
    "$server" --data-dir "$dir/data" --listen "127.0.0.1:$port" \
      --admin-listen 127.0.0.1:0 --worker-threads 1 2>"$dir/log" &
    server_pid=$!
    for _ in $(seq 300); do
      grep -q "ckpt-server ready" "$dir/log" && break
      kill -0 "$server_pid" 2>/dev/null || { cat "$dir/log" >&2; exit 1; }
      sleep 0.1
    done
    if [ "$op" = read ]; then
      "$tool" bench --addr "127.0.0.1:$port" --clients 64 --threads 1 --duration 2 >/dev/null
    fi
    "$tool" bench --addr "127.0.0.1:$port" --clients 64 --threads 1 --duration "$duration" \
      --op "$op" --server-pid "$server_pid" --json >"$dir/out.json"
    python3 - "$dir/out.json" "$label" "$round" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<10} {sys.argv[3]:>5} {j['ops_per_s']:10.0f} {j['server_cpu_us_per_op']:10.1f} "
      f"{j['p50_us']:9.0f} {j['p99_us']:9.0f}")
PY
    kill -TERM "$server_pid"
    wait "$server_pid" || true
    server_pid=
    rm -rf "$dir"
  done
done
