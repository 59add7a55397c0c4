#!/usr/bin/env bash
# Cloud TPU pod slice: the same command on every worker VM; JAX finds the other workers
# from the TPU metadata (train/distributed.py: jax.distributed.initialize() with no args).
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [FLAGS...]
#   launch/tpu_pod.sh my-v5p-64 us-east5-a configs/flow_pi0_obstacle.py:pi0 gs://bucket/pi0
#
# WORKDIR should be a gs:// path (orbax writes checkpoints collectively from all hosts).
# The repository must already be at ~/action_gen on every worker, with its venv, e.g.:
#   gcloud compute tpus tpu-vm ssh TPU_NAME --zone=ZONE --worker=all \
#     --command="git clone REPO ~/action_gen && cd ~/action_gen && python3 -m venv .venv \
#                && .venv/bin/pip install -e . 'jax[tpu]'"
set -euo pipefail
TPU=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [FLAGS...]}
ZONE=${2:?zone}
CONFIG=${3:?config}
WORKDIR=${4:?workdir}
shift 4
REMOTE_DIR=${REMOTE_DIR:-\~/action_gen}
CMD="cd $REMOTE_DIR && .venv/bin/python -m action_gen.main --config=$CONFIG"
CMD+=" --workdir=$WORKDIR --mode=train $*"
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="$CMD"
