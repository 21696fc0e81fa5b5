"""Shared fixtures: one real local Ray cluster per session, real sample data, real MLflow."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster. 4 logical CPUs on 2 cores leave slots free for Ray Data
    actor pools next to a training worker (ray issue 44687)."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    """Canonical sample pairs from the scikit-image photos (train/eval photos disjoint)."""
    from components.sample_data import write_image_pairs

    d = tmp_path_factory.mktemp("sample")
    write_image_pairs(str(d), pairs=240, size=48, shards=2, seed=0)
    return d


@pytest.fixture
def tracking_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def encode(arr: np.ndarray, fmt: str, mode: str | None = None, **kw) -> bytes:
    img = Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def photo_bytes(size: int = 64, fmt: str = "PNG", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), fmt)
