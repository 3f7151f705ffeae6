#!/usr/bin/env bash
# The C library against `ckpt-tool bench` (issue #10, acceptance 5): the
# same load — CLIENTS clients, each on its own connection, overwriting its
# own 1 KiB section of one WR_ACTIVE_REPLICA checkpoint, one write in
# flight each — through libckpt (write_bench.c) and through the Rust client
# (ckpt-tool bench), against one ckpt-server on a temp dir. Rounds
# alternate which goes first; the medians, their ratio and the median of
# the rounds' ratios (each round's two runs saw the same machine) are printed.
#
#   capi/bench/compare.sh [ROUNDS] [CLIENTS] [SECONDS]     (defaults 5 16 5)
#   CKPT_BENCH_TMP=/dev/shm capi/bench/compare.sh ...       (data in memory)
#
# Needs a release build: target/release/{ckpt-server,ckpt-tool,libckpt.so}
# (cargo build --release --workspace --bins && cargo build --release -p ckpt-capi);
# CARGO_TARGET_DIR is honoured.
set -euo pipefail
rounds=${1:-5}
clients=${2:-16}
seconds=${3:-5}
root=$(cd "$(dirname "$0")/../.." && pwd)
release=${CARGO_TARGET_DIR:-$root/target}/release
# CKPT_BENCH_TMP=/dev/shm puts the server's data in memory: no fsync cost,
# so the run is CPU-bound and the client's own cost per call shows most.
work=$(mktemp -d -p "${CKPT_BENCH_TMP:-${TMPDIR:-/tmp}}")
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/lib"
ln -s "$release/libckpt.so" "$work/lib/libckpt.so"
ln -s "$release/libckpt.so" "$work/lib/libckpt.so.0"
cc -O2 -std=gnu11 -pthread -I"$root/capi/include" "$root/capi/bench/write_bench.c" \
    -L"$work/lib" -lckpt -Wl,-rpath,"$work/lib" -o "$work/write_bench"

"$release/ckpt-server" --data-dir "$work/data" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    2> "$work/server.log" &
server_pid=$!
for _ in $(seq 1 600); do
    grep -q "ckpt-server ready" "$work/server.log" && break
    sleep 0.1
done
addr=$(grep -o 'listen=[0-9.:]*' "$work/server.log" | head -1 | cut -d= -f2)
[ -n "$addr" ] || { echo "the server did not start" >&2; cat "$work/server.log" >&2; exit 1; }

c_run() {
    CKPT_SERVERS=$addr "$work/write_bench" "$clients" "$seconds" 1024 "c-bench" |
        sed -n 's/.*ops_per_s \([0-9.]*\).*/\1/p'
}
rust_run() {
    "$release/ckpt-tool" --addr "$addr" bench --clients "$clients" --duration-s "$seconds" \
        --value-size 1024 --checkpoint rust-bench --json |
        sed -n 's/.*"ops_per_s": *\([0-9.]*\).*/\1/p'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

: > "$work/c"
: > "$work/rust"
: > "$work/ratio"
for round in $(seq 1 "$rounds"); do
    if [ $((round % 2)) -eq 1 ]; then
        c=$(c_run); r=$(rust_run)
    else
        r=$(rust_run); c=$(c_run)
    fi
    ratio=$(awk -v c="$c" -v r="$r" 'BEGIN { printf "%.2f", c / r }')
    echo "round $round: libckpt $c ops/s, ckpt-tool bench $r ops/s, ratio $ratio"
    echo "$c" >> "$work/c"
    echo "$r" >> "$work/rust"
    echo "$ratio" >> "$work/ratio"
done
c=$(median < "$work/c")
r=$(median < "$work/rust")
echo "median: libckpt $c ops/s, ckpt-tool bench $r ops/s, ratio of the medians $(awk -v c="$c" -v r="$r" 'BEGIN { printf "%.2f", c / r }'), median of the rounds' ratios $(median < "$work/ratio")"
