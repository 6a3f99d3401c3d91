#!/usr/bin/env bash
# Build llama.cpp's C++ `llama-server` from the llama-cpp-python sdist (PyPI is the only source
# reachable offline-ish here) and cache it. Prints the binary's path on stdout, logs on stderr.
#
# Why the C++ server and not `python -m llama_cpp.server`: the Python server sorts the whole
# vocabulary per generated token to build top_logprobs (~5 s per 100-token completion here);
# the C++ one returns token ids and bytes too, which make same-tokenizer alignment exact.
#
# Cache: $BLACKBOX_AUDIT_CACHE (default ~/.cache/blackbox-audit)/llama-server-<version>/
# With --src-only: download and unpack the sdist (cached) and print its folder; build nothing
# (the sdist's vendor/llama.cpp also holds the HF -> GGUF converter).
set -euo pipefail
SRC_ONLY=0; [ "${1:-}" = "--src-only" ] && SRC_ONLY=1
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${BLACKBOX_AUDIT_CACHE:-$HOME/.cache/blackbox-audit}"
DEST="$CACHE/llama-server-$VERSION"
BIN="$DEST/bin/llama-server"
JOBS="${JOBS:-$(nproc)}"
PYTHON="${PYTHON:-python3}"

if [ "$SRC_ONLY" = 0 ] && [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
mkdir -p "$CACHE"
exec 9>"$CACHE/.build-llama-server.lock"
flock 9
if [ "$SRC_ONLY" = 0 ] && [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi

SRC="$CACHE/src-$VERSION"
if [ ! -d "$SRC/vendor/llama.cpp" ]; then
  tmp=$(mktemp -d)
  echo "downloading llama-cpp-python==$VERSION sdist" >&2
  "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$tmp" >&2
  mkdir -p "$SRC"
  tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$SRC" --strip-components=1
  rm -rf "$tmp"
fi
if [ "$SRC_ONLY" = 1 ]; then echo "$SRC"; exit 0; fi
echo "building llama-server with $JOBS jobs (about 15-20 minutes on 2 cores)" >&2
cd "$SRC/vendor/llama.cpp"
cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF >&2
cmake --build build --target llama-server -j "$JOBS" >&2
mkdir -p "$DEST/bin"
cp build/bin/llama-server "$DEST/bin/llama-server.tmp"
mv "$DEST/bin/llama-server.tmp" "$BIN"
echo "$BIN"
