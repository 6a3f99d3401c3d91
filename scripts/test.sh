#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite: lint, unit tests (hermetic) and
# integration tests (real servers on 127.0.0.1, started by the tests). The llama.cpp server
# used by the integration tests is built once from the llama-cpp-python sdist and cached in
# ~/.cache/blackbox-audit (about 8-17 minutes on 2 cores the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -ra "$@"
