"""The registered model: an ``mlflow.pyfunc`` that scores raw encoded image or video bytes.

Consumers need only::

    model = mlflow.pyfunc.load_model("models:/image-scorer@champion")
    scores = model.predict(pd.DataFrame({"image": [jpeg_bytes, png_bytes]}))  # higher = preferred

    model = mlflow.pyfunc.load_model("models:/video-scorer@champion")
    scores = model.predict(pd.DataFrame({"video": [mp4_bytes, webm_bytes]}))

Decoding, frame sampling, resizing and normalisation travel inside the model (the same
``MediaSpec.decode`` the training pipeline used). A video model trained with a temporal prior
returns the full reward ``s(x) + lambda * c(x)`` it was trained with.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

import components
from components.decode import DecodeError
from components.media import MediaSpec
from components.models import build_scorer
from components.train_step import score_images

PIP_REQUIREMENTS = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    f"mlflow=={mlflow.__version__}",
    "pillow",
    "numpy",
    "pandas",
]
VIDEO_REQUIREMENTS = ["av==18.1.*"]  # as pyproject.toml
FORMATS = {"image": "JPEG/PNG/WebP", "video": "MP4/WebM/GIF containers or lists of encoded frames"}


class ScorerModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: DataFrame with a binary ``image`` (or ``video``) column -> one float
    score per row."""

    batch_size = 64

    def load_context(self, context: Any) -> None:
        with open(context.artifacts["scorer"]) as f:
            self.meta = json.load(f)
        self.spec = MediaSpec.from_dict(self.meta["media"])
        self.temporal_weight = float(self.meta.get("temporal_weight", 0.0))
        self.model = build_scorer(self.meta["model"])
        state = torch.load(context.artifacts["weights"], map_location="cpu")
        self.model.load_state_dict(state)
        self.model.eval()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        col = self.spec.column
        if col not in model_input.columns:
            raise ValueError(
                f"input needs a binary column {col!r} with encoded {FORMATS[col]} bytes; "
                f"got columns {list(model_input.columns)}"
            )
        n = len(model_input)
        items = np.zeros((n, *self.spec.shape), dtype=np.uint8)
        consistency = np.zeros(n, dtype=np.float64)
        bad = []
        for i, data in enumerate(model_input[col].tolist()):
            try:
                items[i], _, c = self.spec.decode(data)
            except DecodeError as e:
                bad.append(f"row {i}: {e.reason}")
                continue
            consistency[i] = c or 0.0
        if bad:
            raise ValueError(
                f"column {col!r}: cannot score " + "; ".join(bad[:10])
                + (f" (and {len(bad) - 10} more)" if len(bad) > 10 else "")
                + f". Remove or re-encode these rows ({FORMATS[col]})."
            )
        out = []
        x = torch.from_numpy(items)
        batch = self.batch_size if not self.spec.video else max(1, self.batch_size // 8)
        with torch.no_grad():
            for start in range(0, len(x), batch):
                chunk = x[start : start + batch]
                out.append(score_images(self.model, chunk, self.device).cpu().numpy())
        scores = np.concatenate(out).astype(np.float64) if out else np.zeros(0)
        return scores + self.temporal_weight * consistency


def log_scorer(
    state_dict: dict[str, torch.Tensor],
    model_name: str,
    spec: MediaSpec,
    example: bytes,
    registered_model_name: str | None,
    temporal_weight: float = 0.0,
):
    """Log the pyfunc model in the active run (and register it); returns MLflow's ModelInfo."""
    from mlflow.models import infer_signature

    with tempfile.TemporaryDirectory() as d:
        weights = os.path.join(d, "weights.pt")
        torch.save(state_dict, weights)
        meta = os.path.join(d, "scorer.json")
        with open(meta, "w") as f:
            json.dump({"model": model_name, "image_size": spec.size, "max_pixels": spec.max_pixels,
                       "media": spec.to_dict(), "temporal_weight": temporal_weight}, f)
        example_df = pd.DataFrame({spec.column: [example]})
        signature = infer_signature(example_df, np.zeros(1, dtype=np.float64))
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=ScorerModel(),
            artifacts={"weights": weights, "scorer": meta},
            code_paths=[os.path.dirname(components.__file__)],
            signature=signature,
            input_example=example_df,
            pip_requirements=PIP_REQUIREMENTS + (VIDEO_REQUIREMENTS if spec.video else []),
            registered_model_name=registered_model_name,
        )
