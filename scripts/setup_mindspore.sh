#!/usr/bin/env bash
# Installs real MindSpore 2.10 in its OWN virtual environment, outside the repo, for the
# cross-framework tests, fixtures and benchmark. MindSpore is never a torchresume dependency:
# it needs numpy<2 and cannot share an interpreter with torch's numpy 2.
# The location is ${TORCHRESUME_MINDSPORE_VENV:-$HOME/.cache/torchresume/mindspore-venv};
# tests look there and are skipped, naming this script, when it is absent. A no-op when done.
set -euo pipefail
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV="${TORCHRESUME_MINDSPORE_VENV:-$HOME/.cache/torchresume/mindspore-venv}"
stamp="$VENV/.torchresume-mindspore"
want="mindspore==2.10.0 numpy<2"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "$VENV/bin/python"
  exit 0
fi
echo "installing MindSpore into $VENV (one time, ~800 MB) ..." >&2
mkdir -p "$(dirname "$VENV")"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >&2
"$VENV/bin/python" -m pip install -q mindspore==2.10.0 'numpy<2' >&2
"$VENV/bin/python" -c "import mindspore" >&2
echo "$want" > "$stamp"
echo "$VENV/bin/python"
