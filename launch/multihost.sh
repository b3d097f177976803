#!/usr/bin/env bash
# Starts NUM_PROCESSES local processes of a JAX binary that act as hosts of one
# job (CPU devices simulated with XLA_FLAGS, after the caller's own), coordinated
# on 127.0.0.1, for multi-host tests and debugging without a pod:
#
#   bash launch/multihost.sh NUM_PROCESSES DEVICES_PER_PROCESS LOG_DIR -- \
#     .venv/bin/python -m imagen_video_jax.train --config=configs/base.py:runlocal \
#       --workdir=runs/mh --config.mesh.shape='(2,2,2)' --config.batch_size=8
#
# Each process gets --coordinator_address, --num_processes and --process_id and
# logs to LOG_DIR/process_<i>.log. SIGTERM/SIGINT are forwarded to every
# process; the exit status is the first non-zero one of the processes.
set -euo pipefail
if [ $# -lt 5 ] || [ "$4" != "--" ]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS LOG_DIR -- COMMAND..." >&2
  exit 2
fi
num_processes=$1 devices=$2 log_dir=$3
shift 4
mkdir -p "$log_dir"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

pids=()
for ((i = 0; i < num_processes; i++)); do
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices" JAX_PLATFORMS=cpu \
    "$@" --coordinator_address="127.0.0.1:$port" --num_processes="$num_processes" \
    --process_id="$i" >"$log_dir/process_$i.log" 2>&1 &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT

status=0
for pid in "${pids[@]}"; do
  rc=0
  wait "$pid" || rc=$?
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
    status=$rc
  fi
done
if [ "$status" -ne 0 ]; then
  echo "a process failed (exit $status); logs in $log_dir" >&2
  tail -n 30 "$log_dir"/process_*.log >&2
fi
exit "$status"
