#!/usr/bin/env bash
# Serve a GGUF model with llama.cpp's server on 127.0.0.1, audit it in record mode, and store
# the recorded exchanges (gzip) as a fixture that replays offline.
#
#   scripts/record_fixture.sh MODEL.gguf ALIAS FIXTURE_DIR [extra audit flags...]
#
# e.g. the base fixture of the README's demo:
#   scripts/record_fixture.sh "$(scripts/smollm2_path.sh)" smollm2-base fixtures/base-smollm2 --per-corpus 50
# Record on an otherwise idle machine: llama-server's threads spin, and a busy CPU slows it ~50x;
# on a shared machine LLAMA_THREADS=1 degrades far less.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n '2,9p' "$0"; exit 2; }
GGUF="$1"; ALIAS="$2"; DEST="$3"; shift 3
scripts/setup.sh
SERVER="$(scripts/build_llama_server.sh)"
PORT="${PORT:-$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
WORK="$(mktemp -d)"
"$SERVER" -m "$GGUF" --host 127.0.0.1 --port "$PORT" -c 4096 -t "${LLAMA_THREADS:-$(nproc)}" --alias "$ALIAS" \
  > "$WORK/server.log" 2>&1 &
SPID=$!
trap 'kill $SPID 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  kill -0 $SPID 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
  sleep 0.5
done
.venv/bin/blackbox-audit audit --base-url "http://127.0.0.1:$PORT/v1" --model "$ALIAS" \
  --record-mode record --fixtures "$WORK/exchanges.jsonl" --out "$WORK/run" --concurrency 4 \
  --generate-only "$@"
mkdir -p "$DEST"
gzip -9 -n -c "$WORK/exchanges.jsonl" > "$DEST/exchanges.jsonl.gz"
cp "$WORK/run/manifest.json" "$DEST/recording-manifest.json"
echo "fixture written to $DEST ($(du -h "$DEST/exchanges.jsonl.gz" | cut -f1)); generated run: $WORK/run"
