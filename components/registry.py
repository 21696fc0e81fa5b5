"""Model registry: versions, the ``challenger``/``champion`` aliases and the promotion gate.

The gate compares the challenger with the current champion on the same eval pairs, paired by
pair: the accuracy difference gets a paired bootstrap confidence interval, and the challenger
is promoted when the lower bound is above ``-gate.min_delta`` (not significantly worse) and the
point estimate is above zero (better). With no champion, the first version is promoted. A
failed evaluation raises before any alias moves.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from components.media import MediaSpec

CHALLENGER, CHAMPION = "challenger", "champion"


@dataclass
class PromotionDecision:
    promote: bool
    rule: str
    challenger_version: str
    challenger_accuracy: float
    champion_version: str | None = None
    champion_accuracy: float | None = None
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    pairs: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def current_champion(client: MlflowClient, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None  # no champion yet (or no such model)


def paired_bootstrap(new_correct: np.ndarray, old_correct: np.ndarray, samples: int,
                     confidence: float, seed: int = 0) -> tuple[float, float, float]:
    """Point estimate and CI of mean(new - old) over pairs, resampling pairs with replacement."""
    if new_correct.shape != old_correct.shape or new_correct.ndim != 1 or len(new_correct) == 0:
        raise ValueError("paired bootstrap needs two equal-length, non-empty vectors")
    diff = new_correct.astype(float) - old_correct.astype(float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(samples, len(diff)))
    means = diff[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(diff.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def decide(version: str, new_correct: np.ndarray, champion_version: str | None,
           champion_correct: np.ndarray | None, gate) -> PromotionDecision:
    new_acc = float(np.mean(new_correct))
    if champion_version is None or champion_correct is None:
        return PromotionDecision(True, "no champion yet", version, new_acc)
    diff, lo, hi = paired_bootstrap(new_correct, champion_correct, gate.bootstrap_samples,
                                    gate.confidence)
    rule = (f"promote iff lower {gate.confidence:.0%} paired-bootstrap bound of "
            f"(challenger - champion) accuracy > -{gate.min_delta} and the difference > 0")
    promote = lo > -gate.min_delta and diff > 0
    return PromotionDecision(promote, rule, version, new_acc, champion_version,
                             float(np.mean(champion_correct)), diff, lo, hi, len(new_correct))


def apply(client: MlflowClient, name: str, decision: PromotionDecision) -> list[str]:
    """Set the aliases the decision calls for, record it on the version; returns its aliases."""
    v = decision.challenger_version
    client.set_registered_model_alias(name, CHALLENGER, v)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, v)
    client.set_model_version_tag(name, v, "promotion", json.dumps(decision.as_dict()))
    return sorted(client.get_model_version(name, v).aliases)


def _example_item(eval_path: str, video: bool) -> bytes:
    """A real encoded item for the model's input example: the first usable eval pair's chosen
    image as PNG, or its chosen clip as MP4."""
    import io

    import pyarrow.dataset as pads
    import ray.data  # noqa: F401  (registers Ray's tensor extension type with pyarrow)
    from PIL import Image

    from components.contract import OK

    table = pads.dataset(eval_path, format="parquet").head(
        1, columns=["chosen_px"], filter=pads.field("status") == OK
    )
    px = table["chosen_px"].combine_chunks().to_numpy()[0]  # uint8 (3, S, S) or (3, T, S, S)
    if video:
        from components.video import encode_video

        frames = np.ascontiguousarray(px.transpose(1, 2, 3, 0))  # (T, S, S, 3)
        return encode_video(frames, "mp4" if px.shape[-1] % 2 == 0 else "gif")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(px.transpose(1, 2, 0))).save(buf, "PNG")
    return buf.getvalue()


def correct_vector(scores) -> np.ndarray:
    """Per non-tie pair: 1 when chosen scores strictly higher (scores sorted by pair_id)."""
    hard = ~np.isclose(scores["target"].to_numpy(), 0.5) if "target" in scores else slice(None)
    return (scores["s_chosen"].to_numpy() > scores["s_rejected"].to_numpy())[hard].astype(float)


def register_step(cfg, outcome, report, data) -> dict:
    """Log and register the trained scorer; gate it against the champion on the same eval data."""
    import mlflow

    from components.evaluate import score_dataset
    from components.ingest import usable_pairs
    from components.reference import load_scorer_uri
    from components.scorer_model import log_scorer

    name = cfg.tracking.model_name
    client = MlflowClient()
    champion = current_champion(client, name)  # read before registering the new version
    champion_correct = None
    if champion is not None:
        # Evaluate before anything is registered: a failure here moves no alias.
        ref = load_scorer_uri(f"models:/{name}@{CHAMPION}")
        champ = score_dataset(usable_pairs(data.eval_path, "eval", with_ids=True),
                              ref.model_name, ref.state_dict, ref.image_size,
                              temporal_weight=ref.temporal_weight)
        if list(champ["pair_id"]) != list(report.scores["pair_id"]):
            raise RuntimeError("champion and challenger were scored on different eval pairs")
        champion_correct = correct_vector(champ)
        mlflow.log_metric("eval/champion_accuracy", float(champion_correct.mean()))
    spec = MediaSpec.from_config(cfg)
    info = log_scorer(
        outcome.state_dict,
        cfg.model.name,
        spec,
        _example_item(data.eval_path, spec.video),
        registered_model_name=name,
        temporal_weight=cfg.loss.temporal_weight,
    )
    version = str(info.registered_model_version)
    decision = decide(version, correct_vector(report.scores), champion, champion_correct, cfg.gate)
    aliases = apply(client, name, decision)
    mlflow.set_tags({"promotion.promoted": str(decision.promote).lower(),
                     "promotion.decision": json.dumps(decision.as_dict())})
    mlflow.log_dict(decision.as_dict(), "promotion.json")
    return {
        "model_name": name,
        "model_version": version,
        "model_uri": f"models:/{name}/{version}",
        "aliases": aliases,
        "promoted": decision.promote,
        "promotion": decision.as_dict(),
        "champion_version_before": champion,
    }
