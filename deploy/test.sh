#!/usr/bin/env bash
# The README's test command: install everything, type-check, then run every test (unit and integration).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
export HF_HUB_OFFLINE=1 TCP_NODELAY=1
.venv/bin/mypy
exec .venv/bin/python -m pytest -q -ra "$@"
