#!/usr/bin/env bash
# Sets up .venv with torchresume and its dev tools; a no-op when already done.
# Pins torch to the CPU wheel (constraints.txt) so no multi-GB CUDA build is pulled.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
# The durability test traces a real save with strace; install it where we can (root + apt-get).
if ! command -v strace >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing strace (tests/storage/test_durability_syscalls.py) ..." >&2
  (apt-get install -y -q strace >&2 || (apt-get update -q >&2 && apt-get install -y -q strace >&2)) \
    || echo "could not install strace; the syscall-order test will skip" >&2
fi
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
