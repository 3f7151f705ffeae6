#!/usr/bin/env bash
# Does a fresh 3-node cluster bring every backup into the in-sync set under
# a full-speed WR_ACTIVE_REPLICA load? One run: start 3 nodes, run
# `ckpt-tool bench --checkpoints 12 --clients 64 --size 1024 --mode active`
# for 12 s, and print `ckpt-tool cluster status`'s checkpoint summary
# ("N fully replicated, M filling") 5 and 10 s into the load, then the
# writes per second.
#
# Usage: benches/cluster_converge.sh [RUNS]   (default 3)
#   BIN_DIR=DIR  take ckpt-server and ckpt-tool from DIR (default target/release)
#   EXTRA='key = value'  extra top-level cluster.toml lines
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
bin=${BIN_DIR:-target/release}
work=$(mktemp -d)
pids=()
# shellcheck source=benches/cluster_lib.sh
. benches/cluster_lib.sh
trap 'stop_all; rm -rf "$work"' EXIT
for run in $(seq "$runs"); do
  dir="$work/$run"; mkdir -p "$dir"
  start_cluster "$dir" "$bin" "${EXTRA:-}"
  "$bin/ckpt-tool" bench --addr "$cluster_addrs" \
    --checkpoints 12 --clients 64 --size 1024 --mode active --duration-s 12 --json >"$dir/bench.json" 2>/dev/null &
  bench=$!
  sleep 5; at5=$("$bin/ckpt-tool" cluster status --config "$dir/cluster.toml" | grep "checkpoints:")
  sleep 5; at10=$("$bin/ckpt-tool" cluster status --config "$dir/cluster.toml" | grep "checkpoints:")
  wait "$bench"
  ops=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["ops_per_s"]))' "$dir/bench.json")
  echo "run $run | 5 s: ${at5#checkpoints: } | 10 s: ${at10#checkpoints: } | $ops writes/s"
  stop_all
done
