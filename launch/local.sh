#!/usr/bin/env bash
# Runs grm-jax on this machine, installing it first if needed. With no arguments: the main job
# (`grm-jax demo`). Otherwise the arguments are a grm-jax command line, e.g.
#   bash launch/local.sh import-hf ~/models/Qwen2.5-7B ckpt/qwen --dtype bfloat16
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
if [ $# -eq 0 ]; then set -- demo; fi
exec .venv/bin/grm-jax "$@"
