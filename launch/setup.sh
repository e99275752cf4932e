#!/usr/bin/env bash
# Creates a virtual environment in the project folder (.venv) and installs grm-jax into it with
# its test extra (torch==2.13.0 CPU build, pytest, pytest-xdist, hypothesis). Re-runs only when pyproject.toml
# changed. Set PYTHON to choose the interpreter (3.11 or newer) and GRM_JAX_EXTRAS to choose the
# extras: "test" (default), "tpu" (jax[tpu], TPU VMs) or "cuda" (jax[cuda12], GPU nodes).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
extras="${GRM_JAX_EXTRAS:-test}"
stamp=".venv/.grm-jax-installed-${extras//,/-}"
# launch/constraints.txt pins every library to the versions the README's figures were measured with.
pins=(-c launch/constraints.txt)
if [ "${GRM_JAX_UNPINNED:-0}" = 1 ]; then pins=(); fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ launch/constraints.txt -nt "$stamp" ]; then
  echo "installing grm-jax and its ${extras} dependencies into .venv ..." >&2
  .venv/bin/python -m pip install -q --upgrade pip 2> >(grep -v "^WARNING: Location" >&2)
  .venv/bin/python -m pip install -q "${pins[@]}" -e ".[${extras}]" 2> >(grep -v "^WARNING: Location" >&2)
  touch "$stamp"
fi
