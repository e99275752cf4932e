#!/usr/bin/env bash
# Runs the test suite (CPU, hermetic: no network, tiny models built by transformers + torch),
# installing everything first if needed. Tests run in one pytest-xdist worker per CPU core (at most
# 4; each module's tests stay on one worker); extra arguments go to pytest and come last, so
# `-n 0` runs everything in this process (e.g. to see `-s` output).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
cores="$(.venv/bin/python -c 'import os; print(max(1, min(len(os.sched_getaffinity(0)), 4)))')"
exec .venv/bin/python -m pytest -q -n "$cores" --dist loadfile --durations=15 "$@"
