"""Has a model found the pose? Its predicted yaw against the ground-truth yaw of synthetic views (BENCHMARKS.md, "The
library defaults on small overfits").

    python benchmarks/pose_probe.py CHECKPOINT 'SHARDS/*.tar' [--per-pose]

Prints the spread of the predicted yaw (degrees) and its Pearson correlation with the ground-truth yaw of every view
(the renderer's yaw has the opposite sign: a model that found the pose gives about -1). A run whose views stayed
frontal shows a spread of a degree or two while the views span +-45; ``--per-pose`` lists the predictions per
ground-truth yaw (one column per identity).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lapmodel.evaluation.evalset import iter_evalsets  # noqa: E402
from lapmodel.io.checkpoint import load_model  # noqa: E402


def predicted_yaws(checkpoint: str, shards: str) -> tuple[np.ndarray, np.ndarray]:
    """(ground-truth yaw, predicted yaw) in degrees, one per view with a known pose."""
    model = load_model(checkpoint, device="cpu").eval()
    gt, pred = [], []
    with torch.no_grad():
        for es in iter_evalsets(shards, model.image_size):
            view = model.reconstruct(es.images, as_set=False).view
            for pose, v in zip(es.poses or [], view):
                if pose is not None:
                    gt.append(pose[0])
                    pred.append(float(torch.rad2deg(v[1])))
    return np.asarray(gt), np.asarray(pred)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("shards", help="shards of synthetic views with their poses (a glob in quotes)")
    ap.add_argument("--per-pose", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    gt, pred = predicted_yaws(args.checkpoint, args.shards)
    if len(gt) < 2:
        sys.exit(f"{args.shards}: fewer than 2 views with a known pose")
    corr = float(np.corrcoef(gt, pred)[0, 1]) if pred.std() > 0 else float("nan")
    print(f"views {len(gt)}  gt yaw std {gt.std():.1f} deg  predicted yaw std {pred.std():.1f} deg  "
          f"corr(predicted, gt) {corr:+.3f}")
    if args.per_pose:
        for g in sorted(set(np.round(gt))):
            print(f"gt {g:+4.0f}  predicted {np.round(pred[np.round(gt) == g]).tolist()}")


if __name__ == "__main__":
    main()
