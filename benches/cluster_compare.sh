#!/usr/bin/env bash
# Replicated durable writes side by side on one machine, in one run
# (acceptance 7 of issue #8):
#   etcd          3-node etcd cluster on loopback (fsync on, its default),
#                 1 KiB puts from 64 clients over 12 key prefixes, through
#                 the v3 JSON gateway (`ckpt-tool bench --target etcd`)
#   ckpt-all-safe 3-node ckpt cluster, WR_ACTIVE_REPLICA|WR_ALL_SAFE
#   ckpt-active   3-node ckpt cluster, WR_ACTIVE_REPLICA
#   ckpt-single   one ckpt-server, WR_ACTIVE_REPLICA
# each ckpt one `ckpt-tool bench --checkpoints 12 --clients 64 --size 1024`
# (client i writes checkpoint bench-<i % 12> and connects to node i % 3 first).
# cluster.toml: replication_factor 3, min_in_sync 2, the control plane's
# default timeouts.
#
# The machine is shared and noisy: every round starts each system fresh
# (new data directories) and runs them one after the other, rounds
# alternate, and the table gives medians with the per-round spread.
#
# Server CPU per write: user + system time of the system's server processes
# (from /proc) during the bench, over the writes it made — the bench client
# shares the two cores, so throughput alone undersells the cheaper server.
#
# Usage: benches/cluster_compare.sh [DURATION_S] [ROUNDS]   (defaults 15 and 3)
#   SYSTEMS="etcd ckpt-all-safe ckpt-active ckpt-single"  which to run, in order
#   KEEP=1   keep the work directory (logs, JSON) and print its path
#   BIN_DIR=DIR  take ckpt-tool and ckpt-server from DIR (default target/release);
#            when set, nothing is built (e.g. a copy of binaries a build may replace)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-15}
rounds=${2:-3}
systems=${SYSTEMS:-etcd ckpt-all-safe ckpt-active ckpt-single}
clients=64
prefixes=12
value=1024

make -s bench-deps
need_ckpt=0
case " $systems " in *" ckpt-"*) need_ckpt=1 ;; esac
if [ -z "${BIN_DIR:-}" ]; then
  if [ "$need_ckpt" = 1 ]; then
    cargo build --release -p ckpt-server -p ckpt-tool >/dev/null
  else
    cargo build --release -p ckpt-tool >/dev/null
  fi
fi
bin_dir=${BIN_DIR:-target/release}
tool=$bin_dir/ckpt-tool
server=$bin_dir/ckpt-server

work=$(mktemp -d)
pids=()
# shellcheck source=benches/cluster_lib.sh
. benches/cluster_lib.sh
cleanup() {
  stop_all
  if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# CPU seconds (user + system) the given processes have used so far.
cpu_seconds() {
  local pid ticks=0 hz
  hz=$(getconf CLK_TCK)
  for pid in "$@"; do
    if [ -r "/proc/$pid/stat" ]; then
      ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    fi
  done
  python3 -c "print($ticks / $hz)"
}

# Runs the bench command given, recording the servers' (the $pids')
# CPU seconds during it into OUT.cpu.
measured() { # OUT CMD...
  local out=$1 before after
  shift
  before=$(cpu_seconds "${pids[@]}")
  "$@" >"$out"
  after=$(cpu_seconds "${pids[@]}")
  python3 -c "print($after - $before)" >"$out.cpu"
}

json_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# Waits until CMD succeeds, at most SECONDS (polls every 0.2 s).
wait_for() {
  local seconds=$1; shift
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then echo "timed out waiting for: $*" >&2; return 1; fi
    sleep 0.2
  done
}

run_etcd() { # DIR OUT
  local dir=$1 out=$2 ports i cluster="" endpoints="" token="bench-$RANDOM$RANDOM"
  read -r -a ports < <(free_ports 6)
  for i in 0 1 2; do
    cluster+="${cluster:+,}e$i=http://127.0.0.1:${ports[$((3 + i))]}"
    endpoints+="${endpoints:+,}127.0.0.1:${ports[$i]}"
  done
  for i in 0 1 2; do
    etcd --name "e$i" --data-dir "$dir/e$i" \
      --listen-client-urls "http://127.0.0.1:${ports[$i]}" \
      --advertise-client-urls "http://127.0.0.1:${ports[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${ports[$((3 + i))]}" \
      --initial-advertise-peer-urls "http://127.0.0.1:${ports[$((3 + i))]}" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token "$token" 2>"$dir/e$i.log" &
    pids+=($!)
  done
  wait_for 60 env ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health
  measured "$out" "$tool" bench --target etcd --endpoints "$endpoints" --clients $clients \
    --checkpoints $prefixes --value-size $value --duration-s "$duration" --json
  stop_all
}

run_ckpt_cluster() { # DIR OUT MODE
  local dir=$1 out=$2 mode=$3
  start_cluster "$dir" "$bin_dir"
  measured "$out" "$tool" bench --addr "$cluster_addrs" --checkpoints $prefixes --clients $clients \
    --size $value --mode "$mode" --duration-s "$duration" --json
  stop_all
}

run_ckpt_single() { # DIR OUT
  local dir=$1 out=$2 ports
  read -r -a ports < <(free_ports 2)
  "$server" --data-dir "$dir/data" --listen "127.0.0.1:${ports[0]}" \
    --admin-listen "127.0.0.1:${ports[1]}" 2>"$dir/server.log" &
  pids+=($!)
  wait_for 60 grep -q "ckpt-server ready" "$dir/server.log"
  measured "$out" "$tool" bench --addr "127.0.0.1:${ports[0]}" --checkpoints $prefixes --clients $clients \
    --size $value --mode active --duration-s "$duration" --json
  stop_all
}

for round in $(seq "$rounds"); do
  line="round $round:"
  for system in $systems; do
    dir="$work/$system-$round"
    mkdir -p "$dir"
    out="$work/$system-$round.json"
    case $system in
      etcd) run_etcd "$dir" "$out" ;;
      ckpt-all-safe) run_ckpt_cluster "$dir" "$out" all-safe ;;
      ckpt-active) run_ckpt_cluster "$dir" "$out" active ;;
      ckpt-single) run_ckpt_single "$dir" "$out" ;;
      *) echo "unknown system $system" >&2; exit 2 ;;
    esac
    line+=" $system $(printf '%.0f' "$(json_field "$out" ops_per_s)")/s"
  done
  echo "$line"
done

python3 - "$work" "$rounds" $systems <<'PY'
import json, statistics, sys
work, rounds, systems = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
label = {
    "etcd": "etcd 3 nodes (put, fsync)",
    "ckpt-all-safe": "ckpt 3 nodes ALL_SAFE",
    "ckpt-active": "ckpt 3 nodes ACTIVE_REPLICA",
    "ckpt-single": "ckpt 1 node ACTIVE_REPLICA",
}
print(f"medians over {rounds} alternating rounds (64 clients, 1 KiB, 12 checkpoints/prefixes):")
print("| system | writes/s (median) | per-round writes/s | p50 ms | p99 ms | server CPU µs/write (median) | errors |")
print("|---|---:|---|---:|---:|---:|---|")
medians = {}
for system in systems:
    runs = [json.load(open(f"{work}/{system}-{r}.json")) for r in range(1, rounds + 1)]
    ops = [r["ops_per_s"] for r in runs]
    p50 = statistics.median(r["p50_us"] for r in runs) / 1000
    p99 = statistics.median(r["p99_us"] for r in runs) / 1000
    errors = {}
    for r in runs:
        for k, v in r.get("errors", {}).items():
            errors[k] = errors.get(k, 0) + v
    # Server CPU (all of the system's server processes) per write.
    cpu = statistics.median(
        float(open(f"{work}/{system}-{i}.json.cpu").read()) * 1e6 / max(r["ops"], 1)
        for i, r in enumerate(runs, start=1)
    )
    medians[system] = statistics.median(ops)
    spread = ", ".join(f"{o:,.0f}" for o in ops)
    err = ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "none"
    print(f"| {label.get(system, system)} | {medians[system]:,.0f} | {spread} | {p50:.2f} | {p99:.2f} | {cpu:,.0f} | {err} |")
if "etcd" in medians:
    for system in systems:
        if system != "etcd" and medians["etcd"] > 0:
            print(f"{system}/etcd throughput ratio (medians) = {medians[system] / medians['etcd']:.2f}")
PY
