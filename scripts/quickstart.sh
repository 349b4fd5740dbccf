#!/usr/bin/env bash
# Set everything up, then run the main job: export conv_small to ONNX and validate it
# (random-init weights, seeded synthetic golden inputs: nothing is downloaded).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mnv4-export --model conv_small --to onnx "$@"
