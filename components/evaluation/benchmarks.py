"""The accuracies public benchmarks report, computed from scored canonical pairs (pure: numpy
and pandas; datasets/benchmark_formats.py made the pairs).

- HPDv2 (tgxs002/HPSv2 ``evaluate_rank``): per prompt, ``1 - inversions / (n (n - 1) / 2)``
  (``inversion_score``: a pair the scorer orders against the human ranking is an inversion;
  a pair the annotators ranked equal never is), averaged over prompts.
- VideoGen-RewardBench (KwaiVGI/VideoAlign ``calc_accuracy.py``): accuracy without ties,
  ``C / (C + D)`` over pairs with a preference; accuracy with ties, Ties Matter's ``tau``
  (Deutsch et al. 2023, arXiv 2305.14324, Algorithm 1): the scorer predicts a tie when
  ``|s_A - s_B| <= eps``; ``tau(eps) = (C + T_hm) / N`` counts agreements, ties predicted
  for human ties included, and the best ``eps`` over the data is reported. Per dimension
  (``VQ``, ``MQ``, ``TA``, ``Overall``), each against its own label, with the scorer's head of
  that name when it has one (``model.head=named``), else its score.
- Pick-a-Pic (yuvalkirstain/PickScore ``trainer/scripts/eval_preference_predictor.py``): the
  pair's preference probabilities are the softmax of its two scores; a tie is predicted when
  ``|p_0 - p_1| <= t``; a prediction scores 1 when it matches the label, 0.5 when one of the two
  is a tie, else 0. ``t`` is the first best of a grid on the validation split and applied, fixed,
  to the test split.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

PICKSCORE_THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
"""The grid of ``eval_preference_predictor.py``."""


def _meta(df: pd.DataFrame) -> list[dict]:
    return [json.loads(m) if isinstance(m, str) else {} for m in df["meta"]] if "meta" in df \
        else [{} for _ in range(len(df))]


def _deltas(df: pd.DataFrame, head: str | None = None) -> np.ndarray:
    """``s_chosen - s_rejected`` (of head ``head`` when the scores have its columns)."""
    c, r = (f"chosen_head_{head}", f"rejected_head_{head}") if head else ("s_chosen", "s_rejected")
    return np.array(df[c], dtype=np.float64) - np.array(df[r], dtype=np.float64)


def is_tie(df: pd.DataFrame) -> np.ndarray:
    return np.isclose(np.array(df["target"], dtype=np.float64), 0.5)


# --- HPDv2 ------------------------------------------------------------------------------------

def hpdv2_ranking_accuracy(df: pd.DataFrame) -> dict[str, float]:
    """Mean over prompts (``group_id``) of the share of each prompt's pairs the scorer orders
    as the annotators did (ties in the ranking count as agreed, as HPSv2 counts them)."""
    groups = np.array([m.get("group_id", "") for m in _meta(df)], dtype=object)
    agreed = (_deltas(df) > 0) | is_tie(df)
    per_group = pd.Series(agreed.astype(float)).groupby(groups).mean()
    return {"ranking_accuracy": float(per_group.mean()), "prompts": float(len(per_group))}


# --- Accuracy with and without ties (Ties Matter) ---------------------------------------------

def accuracy_without_ties(h: np.ndarray, m: np.ndarray) -> float:
    """``C / (C + D)``: pairs with a human preference (``h`` = +1 or -1; 0 is a tie) that the
    score difference ``m`` orders the same way (``m == 0`` is a discordant pair)."""
    keep = h != 0
    return float((h[keep] * m[keep] > 0).mean()) if keep.any() else float("nan")


def accuracy_with_ties(h: np.ndarray, m: np.ndarray) -> tuple[float, float]:
    """``(tau*, eps*)``: the best ``(C + T_hm) / N`` over thresholds ``eps`` in the ``|m|``
    values (a tie predicted when ``|m| <= eps``), the smallest best ``eps``.

    ``C``: non-tie pairs ordered right and not predicted tied; ``T_hm``: human ties predicted
    tied. Equals VideoAlign's ``calc_accuracy_with_ties`` when the ``|m|`` are distinct (its
    one-pair-at-a-time sweep also visits states between equal ``|m|``, which no threshold
    gives); O(N log N)."""
    h, m = np.asarray(h, dtype=np.float64), np.asarray(m, dtype=np.float64)
    if len(h) == 0:
        return float("nan"), 0.0
    order = np.argsort(np.abs(m), kind="stable")
    a, hs, ms = np.abs(m)[order], h[order], m[order]
    right = (hs != 0) & (hs * ms > 0)  # counts as C while not predicted tied
    tie = hs == 0  # counts as T_hm once predicted tied
    # After predicting ties for the first k pairs (sorted by |m|): C = right[k:], T_hm = tie[:k].
    c_after = np.concatenate([np.cumsum(right[::-1])[::-1], [0]])
    thm_before = np.concatenate([[0], np.cumsum(tie)])
    last_of_value = np.r_[a[1:] != a[:-1], True]  # a threshold takes every pair of equal |m|
    k = np.nonzero(last_of_value)[0] + 1
    tau = (c_after[k] + thm_before[k]) / len(h)
    best = int(np.argmax(tau))
    return float(tau[best]), float(a[k[best] - 1])


def videogen_accuracies(df: pd.DataFrame, dimensions: tuple[str, ...]) -> dict[str, float]:
    """Per dimension: ``<dim>/accuracy_with_ties``, ``<dim>/accuracy_without_ties``,
    ``<dim>/tie_threshold`` and ``<dim>/pairs`` (rows with that label)."""
    meta = _meta(df)
    side = np.array([m.get("chosen_side", "A") for m in meta], dtype=object)
    heads = {c.removeprefix("chosen_head_").lower(): c.removeprefix("chosen_head_")
             for c in df.columns if c.startswith("chosen_head_")}
    out: dict[str, float] = {}
    for dim in dimensions:
        labels = np.array([str(m.get(dim, "") or "").strip() for m in meta], dtype=object)
        known = np.isin(labels, ["A", "B", "same"])
        # +1: the human preferred the chosen side on this dimension, -1 the other, 0 a tie.
        h = np.where(labels == "same", 0.0, np.where(labels == side, 1.0, -1.0))[known]
        m = _deltas(df, heads.get(dim.lower()) if dim != "Overall" else None)[known]
        tau, eps = accuracy_with_ties(h, m)
        out.update({f"{dim}/accuracy_with_ties": tau, f"{dim}/tie_threshold": eps,
                    f"{dim}/accuracy_without_ties": accuracy_without_ties(h, m),
                    f"{dim}/pairs": float(known.sum())})
    return out


# --- Pick-a-Pic: PickScore's tie protocol -----------------------------------------------------

def pickscore_tie_credit(delta: np.ndarray, tie: np.ndarray, threshold: float) -> np.ndarray:
    """Per pair: 1 for a matching prediction, 0.5 when the label or the prediction is a tie
    (not both), 0 otherwise; a tie predicted when ``|p_c - p_r| <= threshold``, with
    ``p = softmax(s_c, s_r)``, so ``|p_c - p_r| = tanh(|delta| / 2)``."""
    gap = np.tanh(np.abs(delta) / 2.0)
    pred_tie = gap <= threshold
    exact = np.where(tie, pred_tie, ~pred_tie & (delta > 0))
    return np.where(exact, 1.0, np.where(pred_tie | tie, 0.5, 0.0))


def pickscore_tie_protocol(val_delta: np.ndarray, val_tie: np.ndarray, test_delta: np.ndarray,
                           test_tie: np.ndarray,
                           thresholds: tuple[float, ...] = PICKSCORE_THRESHOLDS
                           ) -> dict[str, float]:
    """Tune the tie threshold on the validation pairs (the first best of ``thresholds``),
    report the test pairs' accuracy with it (``accuracy_with_ties``) and their strict
    accuracy over non-tie pairs (``accuracy_without_ties``)."""
    val_scores = [float(pickscore_tie_credit(val_delta, val_tie, t).mean()) for t in thresholds]
    best = int(np.argmax(val_scores))
    t = thresholds[best]
    hard = ~test_tie
    return {"tie_threshold": float(t), "val_accuracy_with_ties": val_scores[best],
            "accuracy_with_ties": float(pickscore_tie_credit(test_delta, test_tie, t).mean()),
            "accuracy_without_ties": (float((test_delta[hard] > 0).mean()) if hard.any()
                                      else float("nan")),
            "val_pairs": float(len(val_delta)), "test_pairs": float(len(test_delta)),
            "test_ties": float(test_tie.sum())}


def pickapic_metrics(val: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
    """``pickscore_tie_protocol`` of two scored pair tables (``s_chosen``, ``s_rejected``,
    ``target``)."""
    return pickscore_tie_protocol(_deltas(val), is_tie(val), _deltas(test), is_tie(test))
