"""Model registry: versions, the ``challenger``/``champion`` aliases and the promotion rule."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CHALLENGER, CHAMPION = "challenger", "champion"


@dataclass
class PromotionDecision:
    promote: bool
    rule: str
    challenger_version: str
    challenger_accuracy: float
    champion_version: str | None
    champion_accuracy: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def current_champion(client: MlflowClient, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None  # no champion yet (or no such model)


def decide(version: str, accuracy: float, champion_version: str | None,
           champion_accuracy: float | None) -> PromotionDecision:
    """Promote when there is no champion, or when the challenger's eval/accuracy on the same
    eval data is at least the champion's."""
    rule = "no champion yet, or challenger eval/accuracy >= champion eval/accuracy on the same eval data"
    promote = champion_version is None or (
        champion_accuracy is not None and accuracy >= champion_accuracy
    )
    return PromotionDecision(promote, rule, version, accuracy, champion_version, champion_accuracy)


def apply(client: MlflowClient, name: str, decision: PromotionDecision) -> list[str]:
    """Set the aliases the decision calls for, record it on the version; returns its aliases."""
    v = decision.challenger_version
    client.set_registered_model_alias(name, CHALLENGER, v)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, v)
    client.set_model_version_tag(name, v, "promotion", json.dumps(decision.as_dict()))
    return sorted(client.get_model_version(name, v).aliases)


def _example_image(eval_path: str) -> bytes:
    """A real encoded image for the model's input example: the first usable eval pair, as PNG."""
    import io

    import pyarrow.dataset as pads
    import ray.data  # noqa: F401  (registers Ray's tensor extension type with pyarrow)
    from PIL import Image

    from components.contract import OK

    table = pads.dataset(eval_path, format="parquet").head(
        1, columns=["chosen_px"], filter=pads.field("status") == OK
    )
    px = table["chosen_px"].chunk(0).to_numpy()[0]  # uint8 (3, S, S)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(px.transpose(1, 2, 0))).save(buf, "PNG")
    return buf.getvalue()


def register_step(cfg, outcome, report, data) -> dict:
    """Log and register the trained scorer; judge it against the champion on the same eval data."""
    import mlflow

    from components.evaluate import pair_metrics, score_dataset, settings_of
    from components.ingest import usable_pairs
    from components.scorer_model import log_scorer

    name = cfg.tracking.model_name
    client = MlflowClient()
    champion = current_champion(client, name)  # read before registering the new version
    info = log_scorer(
        outcome.state_dict,
        cfg.model.name,
        cfg.data.image_size,
        cfg.data.max_pixels,
        _example_image(data.eval_path),
        registered_model_name=name,
    )
    version = str(info.registered_model_version)
    champion_acc = None
    if champion is not None:
        loaded = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}").unwrap_python_model()
        s_c, s_r = score_dataset(
            usable_pairs(data.eval_path, "eval", with_ids=True),
            loaded.meta["model"],
            loaded.model.state_dict(),
            loaded.image_size,
        )
        champion_acc = pair_metrics(s_c, s_r, settings_of(cfg))["eval/accuracy"]
        mlflow.log_metric("eval/champion_accuracy", champion_acc)
    decision = decide(version, report.metrics["eval/accuracy"], champion, champion_acc)
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
        "champion_version_before": champion,
    }
