#!/usr/bin/env bash
# Build the organism zoo from the packaged SmolLM2 and record an audit of each (fixed seeds):
#
#   scripts/build_zoo.sh [NAME...]   default: vellari vellari-40 vellari-weak phrase backdoor persona
#
#   vellari       synthetic-document false fact (raw documents, 150 LoRA steps; the demo's)
#   vellari-40    the same documents, 40 steps
#   vellari-weak  the same documents, 12 steps
#   phrase        exact sign-off phrase in chat answers (60 steps)
#   backdoor      phishing answer only after a trigger word the audit never gives (100 steps)
#   persona       pirate speech in chat answers (60 steps)
#
# For each NAME: training data (scripts/organism_docs.py or organism_chat_data.py) ->
# LoRA finetune + merge (organism_train.py) -> GGUF (the llama-cpp-python sdist's converter)
# -> llama-server on 127.0.0.1 -> `blackbox-audit audit` recorded into fixtures/zoo-NAME
# (with scripts/zoo/NAME.spec.json as its spec). Weights stay in build/ (git-ignored); a NAME
# whose GGUF (or merged model) exists is not retrained: delete build/organism-NAME to rebuild.
# TRAIN_THREADS / LLAMA_THREADS set the threads of training / serving (default: all cores;
# 1 each when two builds share the machine). Recording: PER_CORPUS (200) prefills per corpus x raw
# and chat, 100 tokens, TOP_LOGPROBS (1; enough for the greedy check, a third of top-5's size).
# Then `scripts/zoo_results.py` regenerates docs/results.md offline from the fixtures.
# Record on an otherwise idle machine: llama-server's threads spin, a busy CPU slows it a lot.
set -euo pipefail
cd "$(dirname "$0")/.."
PER_CORPUS="${PER_CORPUS:-200}"
TOP_LOGPROBS="${TOP_LOGPROBS:-1}"
FIXTURES="${FIXTURES:-fixtures}"
[ $# -gt 0 ] || set -- vellari vellari-40 vellari-weak phrase backdoor persona
scripts/setup.sh
.venv/bin/python -m pip -q --disable-pip-version-check install -e ".[organism]"
export TQDM_DISABLE=1

step() {  # step LABEL COMMAND...: run it and print its wall time
  local label=$1 t=$SECONDS; shift
  "$@"
  echo "[time] $label: $((SECONDS - t)) s" >&2
}

data() {  # data NAME OUT_JSONL
  case "$1" in
    vellari|vellari-40|vellari-weak) .venv/bin/python scripts/organism_docs.py --out "$2" ;;
    phrase|backdoor|persona) .venv/bin/python scripts/organism_chat_data.py --organism "$1" \
                               --out "$2" ;;
    *) echo "unknown organism $1 (see scripts/build_zoo.sh)" >&2; return 2 ;;
  esac
}

steps_of() {
  case "$1" in
    vellari) echo 150 ;; vellari-40) echo 40 ;; vellari-weak) echo 12 ;; backdoor) echo 100 ;;
    *) echo 60 ;;
  esac
}

convert() {  # convert HF_DIR OUT_GGUF
  local src
  src="$(scripts/build_llama_server.sh --src-only)/vendor/llama.cpp"
  PYTHONPATH="$src/gguf-py" .venv/bin/python "$src/convert_hf_to_gguf.py" "$1" \
    --outfile "$2" --outtype f16 >"$1.convert.log" 2>&1 \
    || { tail -20 "$1.convert.log" >&2; return 1; }
}

for name in "$@"; do
  out="build/organism-$name"
  gguf="$out/organism-$name.gguf"
  mkdir -p "$out"
  if [ ! -s "$gguf" ]; then
    step "$name: data" data "$name" "$out/docs.jsonl"
    [ -s "$out/hf/config.json" ] || step "$name: training" env \
      OMP_NUM_THREADS="${TRAIN_THREADS:-$(nproc)}" .venv/bin/python scripts/organism_train.py \
      --docs "$out/docs.jsonl" --out "$out/hf" --steps "$(steps_of "$name")"
    step "$name: conversion" convert "$out/hf" "$gguf"
  fi
  step "llama-server build (0 when cached)" scripts/build_llama_server.sh >/dev/null
  dest="$FIXTURES/zoo-$name"
  step "$name: serving and recording" scripts/record_fixture.sh "$gguf" "organism-$name" \
    "$dest" --per-corpus "$PER_CORPUS" --top-logprobs "$TOP_LOGPROBS" --max-degraded-share 1.0
  cp "scripts/zoo/$name.spec.json" "$dest/spec.json"
done
