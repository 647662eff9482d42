#!/usr/bin/env bash
# One GPU, < 8 min: vHeat-B, RS-vHeat-B, Heracles-B, Swin-B, ViT-B at 1024 px, bf16, largest batch that fits,
# inference and a training step; one JSON under benchmarks/out/ (see benchmarks/gpu.py). Extra flags pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PY:-.venv-vision/bin/python}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
exec timeout 470 "$PY" benchmarks/gpu.py --device cuda "$@"
