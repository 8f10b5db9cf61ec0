#!/usr/bin/env bash
# Sets everything up, then runs lint, type checks and the tests, two at a time (pytest-xdist).
#   bash scripts/test.sh            the full tier: every test (what CI runs)
#   bash scripts/test.sh --quick    the quick tier for the edit-test loop (tests/conftest.py says what)
# Further arguments go to pytest. TORCHRESUME_TEST_WORKERS sets the number of workers (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
tier=()
if [ "${1:-}" = "--quick" ]; then
  shift
  tier=(-m "not full")
fi
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/mypy
# loadfile: a module's tests stay on one worker, so its module-scoped fixtures (reference runs) run once.
.venv/bin/python -m pytest -n "${TORCHRESUME_TEST_WORKERS:-2}" --dist loadfile --durations=15 "${tier[@]}" "$@"
