#!/usr/bin/env bash
# One SLURM task of launch/slurm.sbatch: joins the run as process SLURM_PROCID of SLURM_NTASKS,
# with the job's first node (port GRM_JAX_PORT, default 12355) as the coordinator.
set -euo pipefail
cd "$(dirname "$0")/.."
first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" 2>/dev/null | head -n 1 || true)
first="${first:-${SLURM_JOB_NODELIST%%,*}}"
export GRM_JAX_COORDINATOR="${first}:${GRM_JAX_PORT:-12355}"
export GRM_JAX_NUM_PROCESSES="$SLURM_NTASKS"
export GRM_JAX_PROCESS_ID="$SLURM_PROCID"
exec .venv/bin/grm-jax --distributed "$@"
