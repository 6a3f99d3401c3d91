#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the embedded default, offline: replay a recorded
# audit of a real llama.cpp server, rescore it with the packaged SmolLM2 reference, rank, and
# print the top of each (corpus, framing) ranking.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
FIXTURE=fixtures/base-smollm2
exec .venv/bin/blackbox-audit audit --replay --fixtures "$FIXTURE/exchanges.jsonl.gz" \
  --model smollm2-base --per-corpus 50 --out runs/demo-base --top 10 "$@"
