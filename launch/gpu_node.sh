#!/usr/bin/env bash
# Runs a grm-jax command on a GPU node: one process drives all the node's GPUs.
#
#   bash launch/gpu_node.sh grpo --config configs/paper/endogenous_rl_qwen2.5_math_7b.yaml \
#     model=/data/Qwen2.5-Math-7B data=/data/math_prompts.jsonl out=runs/endo-rl
#
# Several nodes without SLURM: start it on every node with the same coordinator (node 0's
# address and a free port), the node count and each node's own id:
#
#   GRM_JAX_COORDINATOR=node0:12355 GRM_JAX_NUM_PROCESSES=2 GRM_JAX_PROCESS_ID=0 bash launch/gpu_node.sh grpo ...
#   GRM_JAX_COORDINATOR=node0:12355 GRM_JAX_NUM_PROCESSES=2 GRM_JAX_PROCESS_ID=1 bash launch/gpu_node.sh grpo ...
#
# XLA may take 95% of each GPU's memory (the default 75% wastes what `grm-jax plan` counts on).
set -euo pipefail
cd "$(dirname "$0")/.."
GRM_JAX_EXTRAS="${GRM_JAX_EXTRAS:-cuda}" bash launch/setup.sh
if [ $# -eq 0 ]; then
  echo "usage: bash launch/gpu_node.sh COMMAND [ARGS...]   (a grm-jax command line)" >&2
  exit 2
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
if [ -n "${GRM_JAX_COORDINATOR:-}" ]; then
  exec .venv/bin/grm-jax --distributed "$@"
fi
exec .venv/bin/grm-jax "$@"
