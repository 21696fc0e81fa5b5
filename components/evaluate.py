"""Evaluation: score held-out pairs with Ray Data batch inference, then pairwise metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from components.losses import preference_loss
from components.models import build_scorer
from components.train_step import StepSettings, eval_scores


class PairScorer:
    """Ray Data actor: loads a scorer once, adds ``s_chosen``/``s_rejected`` columns.

    ``image_size`` is the size the scorer was trained at; inputs prepared at another size are
    resized (antialiased) on the fly so a champion is judged at its own resolution.
    """

    def __init__(self, model_name: str, state_dict: dict[str, torch.Tensor], image_size: int):
        self.model = build_scorer(model_name)
        self.model.load_state_dict(state_dict)
        self.model.eval()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.size = image_size

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.size and x.shape[-2] == self.size:
            return x
        y = F.interpolate(x.float(), size=(self.size, self.size), mode="bilinear", antialias=True)
        return y.round().clamp(0, 255).to(torch.uint8)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        c = self._resize(torch.from_numpy(np.ascontiguousarray(batch["chosen_px"])))
        r = self._resize(torch.from_numpy(np.ascontiguousarray(batch["rejected_px"])))
        s_c, s_r = eval_scores(self.model, c, r, self.device)
        return {
            "pair_id": batch["pair_id"],
            "s_chosen": s_c.cpu().numpy(),
            "s_rejected": s_r.cpu().numpy(),
        }


def score_dataset(ds, model_name: str, state_dict: dict[str, torch.Tensor], image_size: int,
                  batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every pair in a prepared dataset (``pair_id``, uint8 ``chosen_px``/
    ``rejected_px``), sorted by pair_id so two models' scores line up pair by pair."""
    from ray.data import ActorPoolStrategy

    scored = ds.map_batches(
        PairScorer,
        fn_constructor_kwargs={
            "model_name": model_name,
            "state_dict": state_dict,
            "image_size": image_size,
        },
        batch_size=batch_size,
        compute=ActorPoolStrategy(size=1),
        num_cpus=1,
        batch_format="numpy",
    )
    df = scored.to_pandas()
    if len(df) == 0:
        return np.zeros(0), np.zeros(0)
    df = df.sort_values("pair_id", kind="stable")
    return df["s_chosen"].to_numpy(np.float64), df["s_rejected"].to_numpy(np.float64)


def pair_metrics(s_chosen: np.ndarray, s_rejected: np.ndarray, settings: StepSettings,
                 prefix: str = "eval/") -> dict[str, Any]:
    """accuracy (strict >, a tie counts as wrong), loss and implicit-reward statistics."""
    if len(s_chosen) == 0:
        raise ValueError("no eval pairs to evaluate; check the eval data and the split")
    loss, m = preference_loss(
        torch.from_numpy(s_chosen).float(), torch.from_numpy(s_rejected).float(),
        **settings.loss_kwargs,
    )
    return {
        f"{prefix}accuracy": float((s_chosen > s_rejected).mean()),
        f"{prefix}loss": float(loss),
        f"{prefix}rewards/chosen": float(m["rewards/chosen"]),
        f"{prefix}rewards/rejected": float(m["rewards/rejected"]),
        f"{prefix}rewards/margins": float(m["rewards/margins"]),
        f"{prefix}pairs": float(len(s_chosen)),
    }


@dataclass
class EvalReport:
    metrics: dict[str, float]
    s_chosen: np.ndarray  # sorted by pair_id
    s_rejected: np.ndarray


def settings_of(cfg) -> StepSettings:
    return StepSettings(
        loss_type=cfg.loss.type,
        beta=cfg.loss.beta,
        label_smoothing=cfg.loss.label_smoothing,
        center_rewards_coefficient=cfg.loss.center_rewards_coefficient,
    )


def evaluate_step(cfg, outcome, data) -> EvalReport:
    """Score the held-out pairs with the trained weights; log ``eval/*`` metrics."""
    import mlflow

    from components.ingest import usable_pairs

    ds = usable_pairs(data.eval_path, "eval", with_ids=True)
    s_c, s_r = score_dataset(ds, cfg.model.name, outcome.state_dict, data.image_size)
    metrics = pair_metrics(s_c, s_r, settings_of(cfg))
    mlflow.log_metrics(metrics, step=outcome.metrics.get("step") and int(outcome.metrics["step"]))
    return EvalReport(metrics, s_c, s_r)
