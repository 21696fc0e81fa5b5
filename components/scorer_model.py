"""The registered model: an ``mlflow.pyfunc`` that scores raw encoded image bytes.

Consumers need only::

    model = mlflow.pyfunc.load_model("models:/image-scorer@champion")
    scores = model.predict(pd.DataFrame({"image": [jpeg_bytes, png_bytes]}))  # higher = preferred

Decoding, resizing and normalisation travel inside the model (the same ``decode_image`` the
training pipeline used).
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
from components.decode import DecodeError, decode_image
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


class ImageScorerModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: DataFrame with a binary ``image`` column -> one float score per row."""

    batch_size = 64

    def load_context(self, context: Any) -> None:
        with open(context.artifacts["scorer"]) as f:
            self.meta = json.load(f)
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
        if "image" not in model_input.columns:
            raise ValueError(
                f"input needs a binary column 'image' with encoded JPEG/PNG/WebP bytes; "
                f"got columns {list(model_input.columns)}"
            )
        size, max_pixels = self.image_size, int(self.meta["max_pixels"])
        images = np.zeros((len(model_input), 3, size, size), dtype=np.uint8)
        bad = []
        for i, data in enumerate(model_input["image"].tolist()):
            try:
                images[i], _ = decode_image(data, size, max_pixels)
            except DecodeError as e:
                bad.append(f"row {i}: {e.reason}")
        if bad:
            raise ValueError(
                "column 'image': cannot score " + "; ".join(bad[:10])
                + (f" (and {len(bad) - 10} more)" if len(bad) > 10 else "")
                + ". Remove or re-encode these rows (JPEG/PNG/WebP)."
            )
        out = []
        x = torch.from_numpy(images)
        with torch.no_grad():
            for start in range(0, len(x), self.batch_size):
                chunk = x[start : start + self.batch_size]
                out.append(score_images(self.model, chunk, self.device).cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def log_scorer(
    state_dict: dict[str, torch.Tensor],
    model_name: str,
    image_size: int,
    max_pixels: int,
    example_image: bytes,
    registered_model_name: str | None,
):
    """Log the pyfunc model in the active run (and register it); returns MLflow's ModelInfo."""
    from mlflow.models import infer_signature

    with tempfile.TemporaryDirectory() as d:
        weights = os.path.join(d, "weights.pt")
        torch.save(state_dict, weights)
        meta = os.path.join(d, "scorer.json")
        with open(meta, "w") as f:
            json.dump({"model": model_name, "image_size": image_size, "max_pixels": max_pixels}, f)
        example = pd.DataFrame({"image": [example_image]})
        signature = infer_signature(example, np.zeros(1, dtype=np.float64))
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=ImageScorerModel(),
            artifacts={"weights": weights, "scorer": meta},
            code_paths=[os.path.dirname(components.__file__)],
            signature=signature,
            input_example=example,
            pip_requirements=PIP_REQUIREMENTS,
            registered_model_name=registered_model_name,
        )
