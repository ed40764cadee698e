#!/usr/bin/env bash
# The README's demo command: install everything, then run `dicom-ai-node demo` (pass --once to exit after one study).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
export HF_HUB_OFFLINE=1 TCP_NODELAY=1
exec .venv/bin/dicom-ai-node demo "$@"
