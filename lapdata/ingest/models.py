"""Ingest's face models: the detector and the identity embedder of a run, loaded once per process and imported
lazily (dlib and onnxruntime load only in the workers that need them); the identity filter's threshold and scores.
Called by ``lapdata.ingest.run``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lapdata.core.errors import LapError


_CACHE: dict[tuple, Any] = {}


def get_detector(kind: str, model: str | None):
    key = ("det", kind, model)
    if key not in _CACHE:
        from lapdata.faces import detectors

        if kind == "dlib":
            _CACHE[key] = detectors.DlibDetector()
        elif kind == "insightface":
            if not model:
                raise LapError("--detector insightface needs --det-model PATH (an insightface SCRFD .onnx file)")
            _CACHE[key] = detectors.InsightFaceDetector(model)
        else:
            raise LapError(f"unknown detector {kind!r} (dlib or insightface)")
    return _CACHE[key]


def get_embedder(model: str | None):
    key = ("emb", model)
    if key not in _CACHE:
        from lapdata.faces import embed

        _CACHE[key] = embed.ArcFaceEmbedder(model) if model else embed.DlibEmbedder()
    return _CACHE[key]


def embedder_name(model: str | None) -> str:
    return f"arcface:{Path(model).name}" if model else "dlib"


def default_threshold(model: str | None) -> float:
    """Cosine-to-centre threshold of the embedder (``centre_threshold`` of lapdata.faces.embed's ArcFace or dlib
    embedder, calibrated in docs/id-threshold.md)."""
    from lapdata.faces import embed

    return float((embed.ArcFaceEmbedder if model else embed.DlibEmbedder).centre_threshold)


def id_filter_scores(emb: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) unit embeddings of one identity -> keep (N,) bool, scores (N,) cosine to the robust centre
    (lapdata.faces.idfilter.identity_filter: medoid start, closest-half refinement; small identities are not filtered)."""
    from lapdata.faces.idfilter import identity_filter

    r = identity_filter(emb, threshold)
    return np.asarray(r.keep, bool), np.asarray(r.scores, np.float32)
