#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the embedded default, offline: replay a recorded
# audit of a real llama.cpp server serving the demo organism (SmolLM2 finetuned on a made-up
# fact; fixtures/organism-vellari), rescore with the packaged SmolLM2 reference (its true base),
# rank, and print the top 10 of each (corpus, framing) ranking with the rows that match the
# organism's spec marked '*'. Extra flags go to `blackbox-audit audit` (e.g. --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
FIXTURE=fixtures/organism-vellari
exec .venv/bin/blackbox-audit audit --replay --fixtures "$FIXTURE/exchanges.jsonl.gz" \
  --model vellari-octopus --per-corpus 100 --spec "$FIXTURE/spec.json" --top 10 \
  --out runs/demo-organism "$@"
