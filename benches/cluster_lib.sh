# Shared by the benches that start a 3-node ckpt cluster on loopback
# (cluster_compare.sh, cluster_converge.sh, cluster_restart.sh,
# cluster_threads.sh); sourced, not run. The caller keeps its server pids
# in the array `pids` and stops them with `stop_all`.

# Stops every process in `pids` (SIGTERM, then waits for each) and empties it.
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}

# N distinct free loopback ports, held until all are chosen.
free_ports() {
  python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# `ckpt-tool cluster status --json` without the checkpoint list (a poll
# of every checkpoint costs the node answering it a core at 50,000); a
# tool older than `--checkpoints` (BIN_DIR) gets the whole page. Whether
# the tool has it is looked up once per BIN: start_cluster does it in the
# calling shell, as the polls run in subshells that would forget it.
summary_bin=""
summary_args=()
summary_args_for() { # BIN
  if [ "$summary_bin" != "$1" ]; then
    summary_bin=$1
    summary_args=()
    if "$1/ckpt-tool" cluster status --help | grep -q -- --checkpoints; then
      summary_args=(--checkpoints none)
    fi
  fi
}
cluster_summary() { # BIN CONFIG
  summary_args_for "$1"
  "$1/ckpt-tool" cluster status --config "$2" "${summary_args[@]}" --json 2>/dev/null
}

# Exit status 0 once the cluster of CONFIG has a leader and every node is
# alive (`ckpt-tool cluster status`).
cluster_ready() { # BIN CONFIG
  cluster_summary "$1" "$2" | python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if d.get("leader") and all(n["alive"] for n in d["nodes"]) else 1)'
}

# Writes DIR/cluster.toml (replication_factor 3, min_in_sync 2, the lines
# of EXTRA), starts nodes 1-3 with their data in DIR/n1..n3 and logs in
# DIR/n1.log..n3.log, adds their pids to `pids`, sets `cluster_addrs` to
# their client addresses (comma-separated) and waits up to 60 s for a
# leader and every node alive.
start_cluster() { # DIR BIN [EXTRA]
  local dir=$1 bin=$2 extra=${3:-} ports i deadline
  summary_args_for "$bin"
  read -r -a ports < <(free_ports 9)
  {
    echo "replication_factor = 3"
    echo "min_in_sync = 2"
    if [ -n "$extra" ]; then echo "$extra"; fi
    for i in 0 1 2; do
      echo
      echo "[[nodes]]"
      echo "id = $((i + 1))"
      echo "client_addr = \"127.0.0.1:${ports[$i]}\""
      echo "peer_addr = \"127.0.0.1:${ports[$((3 + i))]}\""
      echo "admin_addr = \"127.0.0.1:${ports[$((6 + i))]}\""
    done
  } >"$dir/cluster.toml"
  cluster_addrs=""
  for i in 0 1 2; do
    cluster_addrs+="${cluster_addrs:+,}127.0.0.1:${ports[$i]}"
    "$bin/ckpt-server" --config "$dir/cluster.toml" --node-id $((i + 1)) \
      --data-dir "$dir/n$((i + 1))" 2>"$dir/n$((i + 1)).log" &
    pids+=($!)
  done
  deadline=$((SECONDS + 60))
  until cluster_ready "$bin" "$dir/cluster.toml"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "the cluster in $dir did not come up within 60 s" >&2
      return 1
    fi
    sleep 0.2
  done
}
