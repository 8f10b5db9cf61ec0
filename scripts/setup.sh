#!/usr/bin/env bash
# Sets up .venv with torchresume and its dev tools; a no-op when already done.
# Pins torch to the CPU wheel (constraints.txt) so no multi-GB CUDA build is pulled.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
stamp=".venv/.torchresume-setup"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up .venv (one time) ..." >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >&2
.venv/bin/python -m pip install -q -c constraints.txt torch==2.13.0 >&2
.venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]' >&2
echo "$want" > "$stamp"
