"""Evaluation: score held-out pairs with Ray Data batch inference, then a report people trust.

Metrics (``eval/`` prefix):
- ``accuracy``: share of non-tie pairs where the chosen image scores strictly higher.
- ``tie_accuracy`` (data with ties): a tie is predicted when ``|s_0 - s_1| < t``; ``t`` is tuned
  on one half of the eval pairs (a hash of pair_id) and the score reported on the other half:
  1 for an exact match, 0.5 for a tie mismatch (PickScore's evaluation).
- ``loss`` (the run's objective, with targets and reference scores when present),
  ``rewards/*`` (implicit rewards), ``ece`` (expected calibration error of
  ``sigmoid(beta * (s_c - s_r))`` over 10 bins), ``slice/<column>=<value>/accuracy``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from components.contract import split_of
from components.losses import preference_loss
from components.models import build_scorer
from components.train_step import StepSettings, eval_scores

PASS_THROUGH = ("pair_id", "target", "meta")
ECE_BINS = 10
MAX_SLICE_VALUES = 20


class PairScorer:
    """Ray Data actor: loads a scorer once, adds ``s_chosen``/``s_rejected`` columns.

    ``image_size`` is the size the scorer was trained at; inputs prepared at another size are
    resized (antialiased, frame by frame for clips) so a champion is judged at its own
    resolution. With ``temporal_weight`` (video), ``s_*`` is the full reward
    ``s(x) + lambda * c(x)`` that the model was trained with and that the registered model
    returns; the scorer's own part is kept as ``model_chosen``/``model_rejected``.
    """

    def __init__(self, model_name: str, state_dict: dict[str, torch.Tensor], image_size: int,
                 temporal_weight: float = 0.0):
        self.model = build_scorer(model_name)
        self.model.load_state_dict(state_dict)
        self.model.eval()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.size = image_size
        self.temporal_weight = temporal_weight

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.size and x.shape[-2] == self.size:
            return x
        video = x.dim() == 5
        if video:  # (N, C, T, H, W) -> frames (N*T, C, H, W)
            n, c, t, h, w = x.shape
            x = x.transpose(1, 2).reshape(n * t, c, h, w)
        y = F.interpolate(x.float(), size=(self.size, self.size), mode="bilinear", antialias=True)
        y = y.round().clamp(0, 255).to(torch.uint8)
        if video:
            y = y.reshape(n, t, c, self.size, self.size).transpose(1, 2).contiguous()
        return y

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        c = self._resize(torch.from_numpy(np.ascontiguousarray(batch["chosen_px"])))
        r = self._resize(torch.from_numpy(np.ascontiguousarray(batch["rejected_px"])))
        s_c, s_r = eval_scores(self.model, c, r, self.device)
        s_c, s_r = s_c.cpu().numpy().astype(np.float64), s_r.cpu().numpy().astype(np.float64)
        out = {k: batch[k] for k in PASS_THROUGH if k in batch}
        if "chosen_c" in batch:
            out.update(model_chosen=s_c, model_rejected=s_r, chosen_c=batch["chosen_c"],
                       rejected_c=batch["rejected_c"])
            s_c = s_c + self.temporal_weight * np.asarray(batch["chosen_c"], dtype=np.float64)
            s_r = s_r + self.temporal_weight * np.asarray(batch["rejected_c"], dtype=np.float64)
        elif self.temporal_weight:
            raise ValueError("temporal_weight is set but the data has no consistency columns "
                             "(chosen_c/rejected_c): prepare it with modality=video")
        out.update(s_chosen=s_c, s_rejected=s_r)
        return out


def score_dataset(ds, model_name: str, state_dict: dict[str, torch.Tensor], image_size: int,
                  batch_size: int = 64, temporal_weight: float = 0.0) -> pd.DataFrame:
    """Scores of every pair in a prepared dataset, one row per pair, sorted by pair_id so two
    models' scores line up pair by pair."""
    from ray.data import ActorPoolStrategy

    scored = ds.map_batches(
        PairScorer,
        fn_constructor_kwargs={
            "model_name": model_name,
            "state_dict": state_dict,
            "image_size": image_size,
            "temporal_weight": temporal_weight,
        },
        batch_size=batch_size,
        compute=ActorPoolStrategy(size=1),
        num_cpus=1,
        batch_format="numpy",
    )
    df = scored.to_pandas()
    if len(df) and "pair_id" in df:
        df = df.sort_values("pair_id", kind="stable").reset_index(drop=True)
    return df


def settings_of(cfg) -> StepSettings:
    return StepSettings(
        loss_type=cfg.loss.type,
        beta=cfg.loss.beta,
        label_smoothing=cfg.loss.label_smoothing,
        center_rewards_coefficient=cfg.loss.center_rewards_coefficient,
        temporal_weight=cfg.loss.temporal_weight,
    )


def expected_calibration_error(delta: np.ndarray, beta: float, bins: int = ECE_BINS) -> tuple[float, list[dict]]:
    """ECE of ``p = sigmoid(beta * delta)`` as the probability that chosen wins, on pairs
    where chosen did win. Folded: confidence ``max(p, 1 - p)``, correct when ``p > 0.5``."""
    p = 1.0 / (1.0 + np.exp(-np.clip(beta * delta, -50, 50)))
    conf = np.maximum(p, 1 - p)
    correct = (p > 0.5).astype(float)
    edges = np.linspace(0.5, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece, table = 0.0, []
    for b in range(bins):
        m = idx == b
        if not m.any():
            continue
        acc, c = correct[m].mean(), conf[m].mean()
        ece += m.mean() * abs(acc - c)
        table.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(m.sum()),
                      "accuracy": float(acc), "confidence": float(c)})
    return float(ece), table


def tie_aware_accuracy(pair_ids: list[str], delta: np.ndarray, is_tie: np.ndarray) -> dict[str, float]:
    """Tune the tie threshold on half the pairs (hash of pair_id), score the other half."""
    half = np.array([split_of(p, 0.5) == "eval" for p in pair_ids])
    tune, test = ~half, half
    if not tune.any() or not test.any():
        tune = test = np.ones_like(half)

    def score(t: float, m: np.ndarray) -> float:
        pred_tie = np.abs(delta[m]) < t
        exact = np.where(is_tie[m], pred_tie, (~pred_tie) & (delta[m] > 0))
        half_credit = pred_tie != is_tie[m]
        return float((exact + 0.5 * (half_credit & ~exact)).mean())

    candidates = np.unique(np.concatenate([[0.0], np.abs(delta[tune])]))
    best = max(candidates, key=lambda t: score(float(t) + 1e-12, tune))
    return {"tie_accuracy": score(float(best) + 1e-12, test), "tie_threshold": float(best)}


def _slices(df: pd.DataFrame, columns: list[str], correct: np.ndarray, hard: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    if not columns or "meta" not in df:
        return out
    meta = [json.loads(m) if isinstance(m, str) else {} for m in df["meta"]]
    for col in columns:
        values = np.array([str(m.get(col)) for m in meta], dtype=object)
        for v in pd.Series(values[hard]).value_counts().index[:MAX_SLICE_VALUES]:
            m = hard & (values == v)
            out[f"slice/{col}={v}/accuracy"] = float(correct[m].mean())
            out[f"slice/{col}={v}/pairs"] = float(m.sum())
    return out


@dataclass
class EvalReport:
    metrics: dict[str, float]
    scores: pd.DataFrame  # pair_id, s_chosen, s_rejected, target (sorted by pair_id)
    reliability: list[dict] = field(default_factory=list)

    def to_record(self, path: str) -> dict[str, Any]:
        self.scores.drop(columns=["meta"], errors="ignore").to_parquet(path, index=False)
        return {"scores_path": path, "metrics": self.metrics, "reliability": self.reliability}

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> EvalReport:
        return cls(r["metrics"], pd.read_parquet(r["scores_path"]), r["reliability"])


def evaluation_report(df: pd.DataFrame, settings: StepSettings, slices: list[str] | None = None,
                      ref: pd.DataFrame | None = None, prefix: str = "eval/") -> EvalReport:
    if len(df) == 0:
        raise ValueError("no eval pairs to evaluate; check the eval data and the split")
    # np.array copies: Arrow-backed columns are read-only and torch.from_numpy warns on those.
    s_c = np.array(df["s_chosen"], dtype=np.float64)
    s_r = np.array(df["s_rejected"], dtype=np.float64)
    target = np.array(df["target"], dtype=np.float64) if "target" in df else np.ones_like(s_c)
    is_tie = np.isclose(target, 0.5)
    hard = ~is_tie
    delta = s_c - s_r
    correct = (delta > 0).astype(float)
    kwargs: dict[str, Any] = {"target": torch.from_numpy(target).float()}
    if ref is not None:
        kwargs["ref_chosen"] = torch.from_numpy(np.array(ref["s_chosen"], dtype=np.float64)).float()
        kwargs["ref_rejected"] = torch.from_numpy(np.array(ref["s_rejected"], dtype=np.float64)).float()
    # s_* already hold the full reward (PairScorer adds the temporal prior), so lambda = 0 here.
    loss, m = preference_loss(torch.from_numpy(s_c).float(), torch.from_numpy(s_r).float(),
                              **{**settings.loss_kwargs, "temporal_weight": 0.0}, **kwargs)
    metrics: dict[str, float] = {
        "accuracy": float(correct[hard].mean()) if hard.any() else float("nan"),
        "loss": float(loss),
        "rewards/chosen": float(m["rewards/chosen"]),
        "rewards/rejected": float(m["rewards/rejected"]),
        "rewards/margins": float(m["rewards/margins"]),
        "rewards/accuracies": float(m["rewards/accuracies"]),
        "pairs": float(len(df)),
        "ties": float(is_tie.sum()),
    }
    if "chosen_c" in df:  # video: how much of the ranking consistency alone explains
        c_delta = np.array(df["chosen_c"], dtype=np.float64) - np.array(df["rejected_c"], dtype=np.float64)
        m_delta = np.array(df["model_chosen"], dtype=np.float64) - np.array(df["model_rejected"], dtype=np.float64)
        if hard.any():
            metrics["consistency_accuracy"] = float((c_delta[hard] > 0).mean())
            metrics["scorer_accuracy"] = float((m_delta[hard] > 0).mean())
    ece, table = expected_calibration_error(delta[hard], settings.beta)
    metrics["ece"] = ece
    if is_tie.any():
        metrics.update(tie_aware_accuracy(list(df["pair_id"]), delta, is_tie))
    metrics.update(_slices(df, slices or [], correct, hard))
    return EvalReport({prefix + k: v for k, v in metrics.items()}, df, table)


def evaluate_step(cfg, outcome, data, ref=None) -> EvalReport:
    """Score the held-out pairs with the trained weights; log ``eval/*`` metrics and plots."""
    import mlflow

    from components.ingest import usable_pairs
    from components.plots import log_report_figures

    ds = usable_pairs(data.eval_path, "eval", with_ids=True)
    df = score_dataset(ds, cfg.model.name, outcome.state_dict, data.image_size,
                       temporal_weight=cfg.loss.temporal_weight)
    ref_df = None
    if ref is not None:  # the reference's raw scores: the prior cancels in h
        ref_df = score_dataset(usable_pairs(data.eval_path, "eval", with_ids=True),
                               ref.model_name, ref.state_dict, ref.image_size)
    report = evaluation_report(df, settings_of(cfg), cfg.eval.slices, ref_df)
    mlflow.log_metrics(report.metrics)
    log_report_figures(report, data.eval_path, cfg.loss.beta, cfg.eval.worst_pairs)
    return report
