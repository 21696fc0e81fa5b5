"""Evaluation metrics over scored pairs (pure: numpy/pandas/torch, no Ray, no MLflow).

Metrics (``eval/`` prefix):
- ``accuracy``: share of non-tie pairs where the chosen image scores strictly higher.
- ``tie_accuracy`` (data with ties): a tie is predicted when ``|s_0 - s_1| < t``; ``t`` is tuned
  on one half of the eval pairs (a hash of pair_id) and the score reported on the other half:
  1 for an exact match, 0.5 for a tie mismatch (PickScore's evaluation).
- ``loss`` (the run's objective, with targets and reference scores when present),
  ``rewards/*`` (implicit rewards), ``ece`` (expected calibration error of
  ``sigmoid(beta * (s_c - s_r))`` over 10 bins), ``slice/<column>/<value>/accuracy``
  (the value made a valid MLflow metric name: characters other than letters, digits, ``_-. /``
  become ``_``).
- ``mu_sigma`` heads: ``uncertainty/ece`` (and its reliability table) of the probability the
  scorer itself predicts, ``P(c > r) = E[sigmoid(Z)]``, ``Z ~ N(beta (mu_c - mu_r), beta^2
  sigma_z^2)``, and ``uncertainty/sigma``, the mean ``beta * sigma_z``.
- ``named`` heads: ``head/<name>/accuracy``, each head's accuracy next to the total's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..config import LossConfig
from ..datasets.contract import split_of
from ..training.losses import configured_loss
from ..training.models import Rewards

ECE_BINS = 10
MAX_SLICE_VALUES = 20


def expected_calibration_error(delta: np.ndarray, beta: float, bins: int = ECE_BINS) -> tuple[float, list[dict]]:
    """ECE of ``p = sigmoid(beta * delta)`` as the probability that chosen wins, on pairs
    where chosen did win. Folded: confidence ``max(p, 1 - p)``, correct when ``p > 0.5``."""
    return calibration(1.0 / (1.0 + np.exp(-np.clip(beta * delta, -50, 50))), bins)


def uncertain_preference(delta: np.ndarray, sigma_z: np.ndarray, beta: float) -> np.ndarray:
    """``P(c > r) = E[sigmoid(Z)]``, ``Z ~ N(beta * delta, (beta * sigma_z)^2)``, by the probit
    approximation ``sigmoid(m / sqrt(1 + pi s^2 / 8))`` (MacKay 1992; sigmoid(x) ~ Phi(x
    sqrt(pi / 8)) makes the expectation a Gaussian integral); within 0.02 of the expectation
    (tests/test_objectives.py), a tenth of a calibration bin."""
    m, s = beta * delta, beta * sigma_z
    return 1.0 / (1.0 + np.exp(-np.clip(m / np.sqrt(1 + np.pi * s * s / 8), -50, 50)))


def calibration(p: np.ndarray, bins: int = ECE_BINS) -> tuple[float, list[dict]]:
    """ECE and reliability table of ``p``, the predicted probability that chosen wins, on
    pairs where chosen did win (folded as ``expected_calibration_error``)."""
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


def metric_name_part(text: str) -> str:
    """``text`` as part of an MLflow metric name (letters, digits, ``_ - . /`` and spaces;
    ``/`` is replaced too, so a value cannot add a level)."""
    return re.sub(r"[^A-Za-z0-9_\-. ]", "_", text) or "_"


def _slices(df: pd.DataFrame, columns: list[str], correct: np.ndarray, hard: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    if not columns or "meta" not in df:
        return out
    meta = [json.loads(m) if isinstance(m, str) else {} for m in df["meta"]]
    for col in columns:
        values = np.array([str(m.get(col)) for m in meta], dtype=object)
        for v in pd.Series(values[hard]).value_counts().index[:MAX_SLICE_VALUES]:
            m = hard & (values == v)
            key = f"slice/{metric_name_part(col)}/{metric_name_part(str(v))}"
            out[f"{key}/accuracy"] = float(correct[m].mean())
            out[f"{key}/pairs"] = float(m.sum())
    return out


def reward_columns(chosen: Rewards, rejected: Rewards) -> dict[str, np.ndarray]:
    """The eval-scores columns of what a head outputs beyond the score:
    ``chosen_log_sigma``/``rejected_log_sigma`` (``mu_sigma``) and
    ``chosen_head_<name>``/``rejected_head_<name>`` (``named``)."""
    out = {}
    for side, r in (("chosen", chosen), ("rejected", rejected)):
        if r.log_sigma is not None:
            out[f"{side}_log_sigma"] = r.log_sigma.cpu().numpy().astype(np.float64)
        if r.heads is not None:
            heads = r.heads.cpu().numpy().astype(np.float64)
            out.update({f"{side}_head_{n}": heads[:, k] for k, n in enumerate(r.names)})
    return out


def head_names(df: pd.DataFrame) -> tuple[str, ...]:
    """The ``named`` heads whose columns ``df`` has (``reward_columns``), in order."""
    return tuple(c.removeprefix("chosen_head_") for c in df.columns
                 if c.startswith("chosen_head_"))


def _rewards(df: pd.DataFrame, side: str) -> Rewards:
    """One side's ``Rewards`` from the eval-scores columns (float32, as training has them)."""
    def col(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(df[name], dtype=np.float64)).float()

    names = head_names(df)
    return Rewards(col(f"s_{side}"),
                   col(f"{side}_log_sigma") if f"{side}_log_sigma" in df else None,
                   torch.stack([col(f"{side}_head_{n}") for n in names], 1) if names else None,
                   names)


@dataclass
class EvalReport:
    metrics: dict[str, float]
    scores: pd.DataFrame  # pair_id, s_chosen, s_rejected, target (sorted by pair_id)
    reliability: list[dict] = field(default_factory=list)
    uncertainty_reliability: list[dict] = field(default_factory=list)
    """``mu_sigma`` heads: the reliability table of ``eval/uncertainty/ece``."""

    def to_record(self, path: str) -> dict[str, Any]:
        """Write the per-pair scores to ``path`` (a local path or a storage URI)."""
        import pyarrow as pa

        from ..runtime import storage

        table = pa.Table.from_pandas(self.scores.drop(columns=["meta"], errors="ignore"),
                                     preserve_index=False)
        storage.write_table(table, path)
        return {"scores_path": path, "metrics": self.metrics, "reliability": self.reliability,
                "uncertainty_reliability": self.uncertainty_reliability}

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> EvalReport:
        from ..runtime import storage

        return cls(r["metrics"], storage.read_table(r["scores_path"]).to_pandas(),
                   r["reliability"], r.get("uncertainty_reliability", []))


def evaluation_report(df: pd.DataFrame, loss_cfg: LossConfig, slices: list[str] | None = None,
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
    loss, m = configured_loss(_rewards(df, "chosen"), _rewards(df, "rejected"), loss_cfg,
                              with_prior=False, **kwargs)
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
    ece, table = expected_calibration_error(delta[hard], loss_cfg.beta)
    metrics["ece"] = ece
    uncertainty_table: list[dict] = []
    if "chosen_log_sigma" in df:  # sigma_z = sqrt(sigma_c^2 + sigma_r^2)
        sigma_z = np.sqrt(np.exp(2 * np.array(df["chosen_log_sigma"], dtype=np.float64))
                          + np.exp(2 * np.array(df["rejected_log_sigma"], dtype=np.float64)))
        p = uncertain_preference(delta[hard], sigma_z[hard], loss_cfg.beta)
        metrics["uncertainty/ece"], uncertainty_table = calibration(p)
        metrics["uncertainty/sigma"] = (float(loss_cfg.beta * sigma_z[hard].mean())
                                        if hard.any() else float("nan"))
    for name in head_names(df):
        head_delta = (np.array(df[f"chosen_head_{name}"], dtype=np.float64)
                      - np.array(df[f"rejected_head_{name}"], dtype=np.float64))
        metrics[f"head/{metric_name_part(name)}/accuracy"] = (
            float((head_delta[hard] > 0).mean()) if hard.any() else float("nan"))
    if is_tie.any():
        metrics.update(tie_aware_accuracy(list(df["pair_id"]), delta, is_tie))
    metrics.update(_slices(df, slices or [], correct, hard))
    return EvalReport({prefix + k: v for k, v in metrics.items()}, df, table, uncertainty_table)


def score_stats(scores: pd.DataFrame) -> dict[str, float]:
    """Mean and standard deviation of a scorer's scores over both sides of the eval pairs:
    stored with the registered model so consumers can put two versions on one scale."""
    values = np.concatenate([scores["s_chosen"].to_numpy(np.float64),
                             scores["s_rejected"].to_numpy(np.float64)])
    std = float(values.std()) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()) if len(values) else 0.0,
            "std": std if std > 0 else 1.0, "pairs": float(len(scores))}
