#!/usr/bin/env bash
# One prepared GPU check (under 8 minutes on one H200): the quality ladder's rung 2 and 3 at GPU budgets, images/s
# against the references in DEVELOPERS.md, and the GPU tests.
#
#   bash benchmarks/gpu_suite.sh [OUT]      # on a machine with CUDA torch, from the repository root
#
# Needs: a CUDA build of torch; the ICT-FaceKit FaceXModel folder at $LAP_ICT_MODEL, or its tarball at
# .device/FaceXModel.tar.xz (copy ../shared/data/ict-facekit/FaceXModel.tar.xz there and `carry` .device); wheels of
# what the machine lacks (webdataset, braceexpand, typer, rich, tensorboard, ...) in .device/wheels (`pip download`
# them here). Writes OUT/suite.log and OUT/*.json (default OUT=$OUT or .scratch/gpu).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-.scratch/gpu}}
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/suite.log"
exec > >(tee "$LOG") 2>&1
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

if [ -d .device/wheels ]; then
  say "installing carried wheels"
  $PY -m pip install -q --no-index --find-links .device/wheels --no-deps .device/wheels/*.whl || true
fi
$PY -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH="$PWD:${PYTHONPATH:-}"
$PY - <<'EOF' || { echo "no CUDA device"; exit 1; }
import torch; assert torch.cuda.is_available(); print(torch.__version__, torch.cuda.get_device_name(0))
EOF

ICT=${LAP_ICT_MODEL:-}
if [ -z "$ICT" ] && [ -f .device/FaceXModel.tar.xz ]; then
  mkdir -p .scratch/ict && tar xJf .device/FaceXModel.tar.xz -C .scratch/ict && ICT=.scratch/ict/FaceXModel
fi
[ -n "$ICT" ] || { echo "no ICT model (set LAP_ICT_MODEL or carry .device/FaceXModel.tar.xz)"; exit 1; }

WORK="$OUT_DIR/work"
Q="$PY benchmarks/quality.py --device cuda --work $WORK --ict-model $ICT --data-workers 8 --loader-workers 4 --threads 8"
say "rung 2: Unsup3D-re, ICT 64 px, held-out identities (~3 min)"
timeout 240 $Q rung2 --backend ict --size 64 --ids 480 --steps 3000 --batch 64 --lr 3e-4 --eval-every 1000 \
  | tee "$OUT_DIR/rung2.txt" | tail -n 6
say "rung 3: LAP stage 1 vs Unsup3D-re at equal images seen (~3 min)"
timeout 240 $Q rung3 --backend ict --size 64 --ids 480 --steps 3000 --batch 64 --lr 3e-4 --eval-every 1000 \
  | tee "$OUT_DIR/rung3.txt" | tail -n 12
say "throughput (images/s) against the references (Unsup3D 2,297 / LAP 1,337 tf32, 1,732 bf16 on an H100)"
timeout 60 $PY benchmarks/bench_train.py --device cuda --sizes 64 --batch 64 --steps 20 --precision bf16 | tail -n 8
say "pytest -m gpu"
timeout 120 $PY -m pytest -q -p no:cacheprovider -m gpu tests | tail -n 5
grep -h '^JSON' "$OUT_DIR"/rung*.txt > "$OUT_DIR/ladder.jsonl" || true
say "done"
