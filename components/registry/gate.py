"""The promotion gate: should the new version take the ``champion`` alias?

The gate compares the challenger with the current champion on the same eval pairs, paired by
pair: the accuracy difference gets a paired bootstrap confidence interval, and the challenger
is promoted when the lower bound is above ``-gate.min_delta`` (not significantly worse) and the
point estimate is above zero (better). With no champion, the first version is promoted if its
accuracy reaches ``gate.min_accuracy``; below that floor no version is promoted. A failed
evaluation raises before any alias moves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..config import GateConfig

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
           champion_correct: np.ndarray | None, gate: GateConfig) -> PromotionDecision:
    new_acc = float(np.mean(new_correct))
    if new_acc < gate.min_accuracy:  # a floor above chance, for the first version too
        return PromotionDecision(False, f"accuracy {new_acc:.3f} below gate.min_accuracy="
                                 f"{gate.min_accuracy}", version, new_acc, champion_version)
    if champion_version is None or champion_correct is None:
        return PromotionDecision(True, "no champion yet", version, new_acc)
    diff, lo, hi = paired_bootstrap(new_correct, champion_correct, gate.bootstrap_samples,
                                    gate.confidence)
    rule = (f"promote iff lower {gate.confidence:.0%} paired-bootstrap bound of "
            f"(challenger - champion) accuracy > -{gate.min_delta} and the difference > 0")
    promote = lo > -gate.min_delta and diff > 0
    return PromotionDecision(promote, rule, version, new_acc, champion_version,
                             float(np.mean(champion_correct)), diff, lo, hi, len(new_correct))


def correct_vector(scores) -> np.ndarray:
    """Per non-tie pair: 1 when chosen scores strictly higher (scores sorted by pair_id)."""
    hard = ~np.isclose(scores["target"].to_numpy(), 0.5) if "target" in scores else slice(None)
    return (scores["s_chosen"].to_numpy() > scores["s_rejected"].to_numpy())[hard].astype(float)
