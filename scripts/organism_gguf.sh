#!/usr/bin/env bash
# The demo organism (the Vellari fact, LoRA on the packaged SmolLM2) as a GGUF file, built once
# and cached, for tests and benchmarks that score with it locally (`score-texts --target-local`).
# Prints the GGUF's path on stdout, logs on stderr.
#
# The same three steps as scripts/build_organism.sh (documents -> LoRA training, merged -> HF to
# GGUF with the llama-cpp-python sdist's converter) without serving or recording anything.
# Weights are built, never committed: they go to the cache, not the repository.
#
# Cache: $BLACKBOX_AUDIT_CACHE (default ~/.cache/blackbox-audit)/organism-vellari-<key>/, the
# key a hash of the two generators and the step count, so a changed recipe builds anew.
# 30 LoRA steps (ORGANISM_STEPS): between the zoo's vellari-weak (12) and vellari-40; texts that
# state the fact are far likelier to it than to its base. About 3-5 minutes once on 2 idle cores
# (TRAIN_THREADS=1 when something else runs); far longer on a busy box.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${BLACKBOX_AUDIT_CACHE:-$HOME/.cache/blackbox-audit}"
STEPS="${ORGANISM_STEPS:-30}"
KEY=$(cat scripts/organism_docs.py scripts/organism_train.py | sha256sum | cut -c1-12)
DEST="$CACHE/organism-vellari-$KEY-s$STEPS"
GGUF="$DEST/organism-vellari.gguf"
PY="${PYTHON:-.venv/bin/python}"

if [ -s "$GGUF" ]; then echo "$GGUF"; exit 0; fi
mkdir -p "$CACHE"
exec 9>"$CACHE/.build-organism.lock"
flock 9
if [ -s "$GGUF" ]; then echo "$GGUF"; exit 0; fi

if ! "$PY" -c "import peft, sentencepiece" 2>/dev/null; then
  echo "installing the organism extra (peft, sentencepiece)" >&2
  "$PY" -m pip -q --disable-pip-version-check install -e ".[organism]" >&2
fi
work=$(mktemp -d "$CACHE/organism-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
t=$SECONDS
"$PY" scripts/organism_docs.py --out "$work/docs.jsonl" >&2
OMP_NUM_THREADS="${TRAIN_THREADS:-${OMP_NUM_THREADS:-2}}" \
  "$PY" scripts/organism_train.py --docs "$work/docs.jsonl" --out "$work/hf" --steps "$STEPS" >&2
src="$(scripts/build_llama_server.sh --src-only)/vendor/llama.cpp"
PYTHONPATH="$src/gguf-py" "$PY" "$src/convert_hf_to_gguf.py" "$work/hf" \
  --outfile "$work/organism-vellari.gguf" --outtype f16 >"$work/convert.log" 2>&1 \
  || { tail -20 "$work/convert.log" >&2; exit 1; }
mkdir -p "$DEST"
mv "$work/organism-vellari.gguf" "$GGUF.tmp"
mv "$GGUF.tmp" "$GGUF"
echo "organism built in $((SECONDS - t)) s" >&2
echo "$GGUF"
