#!/usr/bin/env bash
# The served models of verify's integration tests and bench (tests/test_verify_llama.py,
# bench/verify_power.py), built once and cached; prints "NAME PATH" per model on stdout.
#
#   same      the packaged SmolLM2-135M-Instruct Q4_1 GGUF itself (the claimed model)
#   q4_0      the same weights requantised to Q4_0 with `llama-quantize --allow-requantize`
#             (scripts/build_llama_quantize.sh); another 4-bit scheme, same checkpoint
#   weak      the 12-step LoRA organism of the zoo (vellari-weak: scripts/build_zoo.sh's data,
#             scripts/organism_train.py, the sdist's HF -> GGUF converter, f16)
#
# Cache: $BLACKBOX_AUDIT_CACHE (default ~/.cache/blackbox-audit)/verify-models/. Weights are
# never committed. TRAIN_THREADS (default 1) for the LoRA training: the box is shared.
# `weak` needs the `organism` extra (peft): installed here when it is missing, as
# scripts/build_zoo.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${BLACKBOX_AUDIT_CACHE:-$HOME/.cache/blackbox-audit}"
DEST="$CACHE/verify-models"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$DEST"
exec 9>"$DEST/.lock"
flock 9
[ $# -gt 0 ] || set -- same q4_0 weak

base="$("$PY" -c 'from blackbox_audit.reference import packaged_smollm2 as p; s = p(); print(f"{s.path}/{s.gguf_file}")')"

for name in "$@"; do
  case "$name" in
    same) echo "same $base" ;;
    q4_0)
      out="$DEST/smollm2-135m-instruct-q4_0.gguf"
      if [ ! -s "$out" ]; then
        q="$(scripts/build_llama_quantize.sh)"
        "$q" --allow-requantize "$base" "$out.tmp" Q4_0 1 >"$DEST/q4_0.log" 2>&1 \
          || { tail -20 "$DEST/q4_0.log" >&2; exit 1; }
        mv "$out.tmp" "$out"
      fi
      echo "q4_0 $out" ;;
    weak)
      dir="$DEST/organism-vellari-weak"
      out="$dir/organism-vellari-weak.gguf"
      if [ ! -s "$out" ]; then
        mkdir -p "$dir"
        "$PY" -c 'import peft' 2>/dev/null || "$PY" -m pip -q --disable-pip-version-check \
          install -e ".[organism]" >&2
        "$PY" scripts/organism_docs.py --out "$dir/docs.jsonl" >&2
        [ -s "$dir/hf/config.json" ] || OMP_NUM_THREADS="${TRAIN_THREADS:-1}" TQDM_DISABLE=1 \
          "$PY" scripts/organism_train.py --docs "$dir/docs.jsonl" --out "$dir/hf" --steps 12 >&2
        src="$(scripts/build_llama_server.sh --src-only)/vendor/llama.cpp"
        PYTHONPATH="$src/gguf-py" "$PY" "$src/convert_hf_to_gguf.py" "$dir/hf" \
          --outfile "$out.tmp" --outtype f16 >"$dir/convert.log" 2>&1 \
          || { tail -20 "$dir/convert.log" >&2; exit 1; }
        mv "$out.tmp" "$out"
      fi
      echo "weak $out" ;;
    *) echo "unknown model $name (same, q4_0, weak)" >&2; exit 2 ;;
  esac
done
