#!/usr/bin/env bash
# Sets everything up, then runs lint, type checks, the documentation site build and the tests,
# two at a time (pytest-xdist).
#   bash scripts/test.sh            the full tier: every test (what CI runs)
#   bash scripts/test.sh --quick    the quick tier for the edit-test loop (tests/conftest.py says what;
#                                   lint and types too, not the docs site build)
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
# The docs site (mkdocs.yml, docs/): any warning fails it: a broken link or anchor, a docstring that
# does not parse, a public name without an API entry or a docstring (scripts/docs_hooks.py).
if [ ${#tier[@]} -eq 0 ]; then
  site="$(mktemp -d)"
  trap 'rm -rf "$site"' EXIT
  NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict -d "$site"  # no --quiet: it hides the warnings --strict counts
fi
# Byte-compiled once here: with PYTHONDONTWRITEBYTECODE set (as on some machines) every process a test starts
# would compile the package's sources again at import (~0.15 s of CPU each, over a thousand processes).
.venv/bin/python -m compileall -q src tests examples benchmarks >/dev/null
# loadfile: a module's tests stay on one worker, so its module-scoped fixtures (reference runs) run once;
# tests/conftest.py hands the modules out longest first (PROCESS_MODULES) and sets a few long tests apart (ALONE).
.venv/bin/python -m pytest -n "${TORCHRESUME_TEST_WORKERS:-2}" --dist loadfile --durations=15 "${tier[@]}" "$@"
