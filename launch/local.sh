#!/usr/bin/env bash
# Local multi-device / multi-process training on one machine.
#
#   launch/local.sh CONFIG WORKDIR [NUM_PROCESSES] [-- EXTRA_FLAGS...]
#
# NUM_PROCESSES=1 (default): one process drives every local device (all GPUs, or all TPU
#   chips); the mesh comes from config.mesh (data=-1 takes the remaining devices).
# NUM_PROCESSES=N>1: N processes on localhost joined by jax.distributed (coordinator
#   localhost:$PORT). On a GPU machine process i sees GPU i only; on CPU each process
#   gets $CPU_DEVICES fake devices and the processes talk over gloo. This is how a
#   multi-host job behaves, on one box.
#
# Examples:
#   launch/local.sh configs/diffusion_unet_obstacle.py:demo /tmp/dp
#   CPU_DEVICES=4 launch/local.sh configs/diffusion_unet_obstacle.py:runlocal /tmp/dp2 2 \
#       -- --config.mesh.fsdp=2
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:?usage: launch/local.sh CONFIG WORKDIR [NUM_PROCESSES] [-- FLAGS...]}
WORKDIR=${2:?usage: launch/local.sh CONFIG WORKDIR [NUM_PROCESSES] [-- FLAGS...]}
NUM=${3:-1}
shift $(($# < 3 ? $# : 3))
[[ "${1:-}" == "--" ]] && shift
PY=${PYTHON:-.venv/bin/python}
PORT=${PORT:-12345}
MODE=${MODE:-train}

if [[ "$NUM" == 1 ]]; then
  exec "$PY" -m action_gen.main --config="$CONFIG" --workdir="$WORKDIR" --mode="$MODE" "$@"
fi

HAS_GPU=0
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && HAS_GPU=1
mkdir -p "$WORKDIR"
pids=()
for ((i = 0; i < NUM; i++)); do
  if [[ $HAS_GPU == 1 ]]; then
    env_vars=(CUDA_VISIBLE_DEVICES="$i")
  else
    env_vars=(JAX_PLATFORMS=cpu
      XLA_FLAGS="--xla_force_host_platform_device_count=${CPU_DEVICES:-1}")
  fi
  env "${env_vars[@]}" "$PY" -m action_gen.main --config="$CONFIG" --workdir="$WORKDIR" \
    --mode="$MODE" --coordinator="localhost:$PORT" --num_processes="$NUM" --process_id="$i" \
    "$@" >"$WORKDIR/process_$i.log" 2>&1 &
  pids+=($!)
done
# Forward SIGTERM/SIGINT to every process (each saves a checkpoint and exits 0).
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
