#!/usr/bin/env bash
# Print the path of the packaged SmolLM2 GGUF (installed by scripts/setup.sh into .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -c 'from blackbox_audit.reference import packaged_smollm2 as p; s = p(); print(f"{s.path}/{s.gguf_file}")'
