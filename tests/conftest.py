"""Shared fixtures. Real data lives in ../shared/data (beside the repo); tests that need it skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.builders import shared_path

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def shared_data() -> Path:
    return shared_path()


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
