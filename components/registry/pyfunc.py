"""The registered model: an ``mlflow.pyfunc`` that scores raw encoded image or video bytes.

Consumers need only::

    model = mlflow.pyfunc.load_model("models:/image-scorer@champion")
    scores = model.predict(pd.DataFrame({"image": [jpeg_bytes, png_bytes]}))  # higher = preferred

    model = mlflow.pyfunc.load_model("models:/video-scorer@champion")
    scores = model.predict(pd.DataFrame({"video": [mp4_bytes, webm_bytes]}))

    # A prompt-conditioned scorer also needs each row's prompt:
    scores = model.predict(pd.DataFrame({"image": [jpeg_bytes], "prompt": ["a cat"]}))
    # Scores on the scale of this version's eval data (mean 0, std 1), comparable across
    # versions:
    z = model.predict(df, params={"normalize": True})

    # A scorer with named heads (model.head=named) answers a DataFrame: the weighted total
    # ``score`` (what the gate compared) and one column per head, e.g. vq, mq, ta.
    table = model.predict(df)  # table["score"], table["vq"], ...

Decoding, frame sampling, resizing and normalisation travel inside the model (the same
``MediaSpec.decode`` the training pipeline used). A video model trained with a temporal prior
returns the full reward ``s(x) + lambda * c(x)`` it was trained with. The model is logged as
MLflow "models from code" (components/tracking/models.py): no pickled Python object. Loading
runs the model's own code: check it first with ``visual-dpo verify URI`` or
``components.tracking.models.verify_model`` (docs/serving.md).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel

from ..media.image import DecodeError
from ..training.models import RewardHead, build_scorer, reward_head
from ..training.step import score_rewards
from .manifest import (
    MANIFEST_TAG,
    REGISTERED_META,
    REREGISTER,
    ModelVerificationError,
    check_manifest,
)
from .scorer_files import TrainedScorer, read_scorer

FORMATS = {"image": "JPEG/PNG/WebP", "video": "MP4/WebM/GIF containers or lists of encoded frames"}


def check_loaded_model(root: str) -> str:
    """Every file of the model directory ``root`` against its ``manifest.json``; when MLflow
    downloaded the model from the registry (it then writes ``registered_model_meta``: name
    and version), the manifest must also be the one whose SHA-256 the registry recorded for
    that version. Raises ``ModelVerificationError``; returns the manifest's SHA-256.

    By the time MLflow calls ``load_context`` it has already imported the model's code (this
    file among it), so this check stops damaged or partly edited models, not a rewritten
    package: a consumer verifies first (``visual-dpo verify URI`` or
    ``components.tracking.models.verify_model``) and loads the verified copy."""
    expected = None
    meta = os.path.join(root, REGISTERED_META)
    if os.path.isfile(meta):
        from mlflow import MlflowClient
        from mlflow.utils.yaml_utils import read_yaml

        registered = read_yaml(root, REGISTERED_META) or {}
        name, version = registered.get("model_name"), registered.get("model_version")
        if name and version:
            tags = MlflowClient().get_model_version(name, str(version)).tags
            expected = tags.get(MANIFEST_TAG)
            if expected is None:
                raise ModelVerificationError(
                    f"models:/{name}/{version}: no {MANIFEST_TAG} recorded in the registry; "
                    f"the model cannot be verified. {REREGISTER}")
    # Python has written bytecode for the code it imported: leave __pycache__ out.
    return check_manifest(root, expected, skip_bytecode=True)


def output_columns(head: RewardHead) -> list[str] | None:
    """The columns ``predict`` answers for a ``named`` head (``score`` then one per head);
    None: a plain array of scores."""
    return ["score", *head.names] if head.kind == "named" else None


class ScorerModel(PythonModel):
    """pyfunc wrapper: DataFrame with a binary ``image`` (or ``video``) column (and ``prompt``
    for a prompt-conditioned scorer) -> one float score per row (``mu`` for a ``mu_sigma``
    head); a ``named`` head answers a DataFrame, the weighted total ``score`` and one column
    per head. ``params={"normalize": True}`` standardises the score with the mean and std of
    this version's scores on its eval data (the per-head columns stay raw)."""

    batch_size = 64

    def load_context(self, context: Any) -> None:
        """Check every file of the model against its manifest before reading the scorer (see
        ``check_loaded_model``), then build it."""
        files = context.artifacts["scorer"]  # MODEL/artifacts/scorer
        check_loaded_model(os.path.dirname(os.path.dirname(files)))
        self.load(read_scorer(files))

    def load(self, scorer: TrainedScorer) -> None:
        """Build the scorer from its files (also what the Ray Serve replicas call)."""
        self.spec = scorer.spec
        if self.spec.video:  # import the decoder now, from the code this model shipped with
            from ..media import video  # noqa: F401
        self.model_name = scorer.model_name
        self.temporal_weight = scorer.temporal_weight
        self.model = build_scorer(scorer.model_name, scorer.options)
        self.model.load_state_dict(scorer.state_dict)
        self.stats = scorer.score_stats
        self.model.eval()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict | None = None) -> np.ndarray | pd.DataFrame:
        col = self.spec.column
        if col not in model_input.columns:
            raise ValueError(
                f"input needs a binary column {col!r} with encoded {FORMATS[col]} bytes; "
                f"got columns {list(model_input.columns)}"
            )
        tokens, prompts = None, None
        if self.spec.takes_prompt:
            if "prompt" not in model_input.columns:
                raise ValueError(
                    "this scorer is prompt-conditioned: the input needs a 'prompt' column "
                    f"(one prompt per row) next to {col!r}; got columns "
                    f"{list(model_input.columns)}")
            prompts = model_input["prompt"].tolist()
        normalize = bool((params or {}).get("normalize", False))
        if normalize and not self.stats:
            raise ValueError("params={'normalize': True}: this model version has no score "
                             "statistics (registered before they were stored); re-register it")
        n = len(model_input)
        items = np.zeros((n, *self.spec.shape), dtype=np.uint8)
        consistency = np.zeros(n, dtype=np.float64)
        bad = []
        for i, data in enumerate(model_input[col].tolist()):
            # The prompt's length limits first: cheap, before any decode or tokenizer.
            problem = self.spec.prompt_problem(prompts[i]) if prompts is not None else None
            if problem:
                bad.append(f"row {i}: {problem}")
                continue
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
        if prompts is not None:
            tokens = torch.from_numpy(self.spec.tokenize(prompts))
        return self.score_decoded(items, consistency, tokens, normalize)

    def score_decoded(self, items: np.ndarray, consistency: np.ndarray,
                      tokens: torch.Tensor | None = None,
                      normalize: bool = False) -> np.ndarray | pd.DataFrame:
        """Decoded uint8 items ``(N, *spec.shape)`` and their consistency ``c`` ``(N,)`` ->
        what ``predict`` answers; the one scoring path of the pyfunc model and the Ray Serve
        application (components/serving)."""
        head = reward_head(self.model)
        out, heads = [], []
        x = torch.from_numpy(items)
        batch = self.batch_size if not self.spec.video else max(1, self.batch_size // 8)
        with torch.no_grad():
            for start in range(0, len(x), batch):
                chunk = x[start : start + batch]
                chunk_tokens = None if tokens is None else tokens[start : start + batch]
                r = score_rewards(self.model, chunk, self.device, tokens=chunk_tokens)
                out.append(r.score.cpu().numpy())
                if r.heads is not None:
                    heads.append(r.heads.cpu().numpy())
        scores = np.concatenate(out).astype(np.float64) if out else np.zeros(0)
        scores = scores + self.temporal_weight * consistency
        if normalize:
            scores = (scores - self.stats["mean"]) / self.stats["std"]
        columns = output_columns(head)
        if columns is None:
            return scores
        per_head = (np.concatenate(heads).astype(np.float64) if heads
                    else np.zeros((0, len(head.names))))
        return pd.DataFrame(dict(zip(columns, [scores, *per_head.T], strict=True)))
