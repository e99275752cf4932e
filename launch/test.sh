#!/usr/bin/env bash
# Runs the test suite (CPU, hermetic: no network, tiny models built by transformers + torch),
# installing everything first if needed. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
exec .venv/bin/python -m pytest -q "$@"
