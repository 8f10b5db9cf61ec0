#!/usr/bin/env bash
# Sets everything up, then runs lint, type checks, the documentation site build and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/mypy
# The docs site (mkdocs.yml, docs/): any warning fails it: a broken link or anchor, a docstring that
# does not parse, a public name without an API entry or a docstring (scripts/docs_hooks.py).
site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict -d "$site"  # no --quiet: it hides the warnings --strict counts
.venv/bin/python -m pytest "$@"
