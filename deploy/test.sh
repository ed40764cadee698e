#!/usr/bin/env bash
# The README's test command: install everything, type-check, then run every test (unit, integration, reliability,
# security, and the viewer tests, which drive OHIF in the Chromium that setup.sh installs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
export HF_HUB_OFFLINE=1 TCP_NODELAY=1
.venv/bin/mypy
exec .venv/bin/python -m pytest -q -ra --durations=30 "$@"
