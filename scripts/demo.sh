#!/usr/bin/env bash
# Sets everything up, then runs the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/torchresume demo "$@"
