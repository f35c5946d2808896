#!/usr/bin/env bash
# One short GPU check (see bench/gpu_check.py): the CUDA tests, each method's step at its paper preset in
# bf16 (images/s, peak memory, MFU), loaders at 224 px with N workers, confidence maps on the GPU.
# Under 8 minutes on one GPU; without CUDA it runs a small smoke mode (what CI runs).
#   bash bench/gpu_check.sh [--smoke] [--out FILE] [--methods mae,uscl] [--workers 0,2,4,8]
# On a GPU it writes bench/results/gpu_check.json; `python bench/render_docs.py` then renders the page.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" bench/gpu_check.py "$@"
