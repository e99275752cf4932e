#!/usr/bin/env bash
# Runs a grm-jax command on every worker of a TPU VM slice (one process per host). Start it on all
# workers at once from your machine, with the repository checked out on each (or on a shared disk):
#
#   gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
#     "cd grm-jax && bash launch/tpu_vm.sh grpo --config configs/paper/spct_gemma2_27b_grpo.yaml \
#        model=/mnt/models/gemma-2-27b-rft data=/mnt/data/grm_items.jsonl out=/mnt/runs/spct-grpo"
#
# jax.distributed initializes from the TPU environment (worker id, coordinator: worker 0), so no
# addresses are needed. OUT and the model must be on storage every worker sees (a shared
# filesystem or the same path on each); each worker reads and tokenizes only its data shards,
# worker 0 alone writes metrics, logs and exports, Orbax writes checkpoints from all.
set -euo pipefail
cd "$(dirname "$0")/.."
GRM_JAX_EXTRAS="${GRM_JAX_EXTRAS:-tpu}" bash launch/setup.sh
if [ $# -eq 0 ]; then
  echo "usage: bash launch/tpu_vm.sh COMMAND [ARGS...]   (a grm-jax command line)" >&2
  exit 2
fi
exec .venv/bin/grm-jax --distributed "$@"
