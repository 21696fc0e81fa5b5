"""Evaluation pictures: score histograms, a reliability diagram and the eval pairs the model
gets most confidently wrong, as matplotlib figures (the pipeline logs them with
``mlflow.log_figure``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(figsize: tuple[float, float]):
    # A bare Figure (no pyplot): no global backend switch, no figure registry to clean up.
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def score_histograms(s_chosen: np.ndarray, s_rejected: np.ndarray) -> Figure:
    fig = _figure((6, 4))
    ax = fig.subplots()
    lo, hi = float(min(s_chosen.min(), s_rejected.min())), float(max(s_chosen.max(), s_rejected.max()))
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 30)
    ax.hist(s_chosen, bins=bins, alpha=0.6, label="chosen")
    ax.hist(s_rejected, bins=bins, alpha=0.6, label="rejected")
    ax.set_xlabel("score")
    ax.set_ylabel("pairs")
    ax.set_title("eval scores: chosen vs rejected")
    ax.legend()
    fig.tight_layout()
    return fig


def reliability_diagram(table: list[dict], ece: float,
                        p: str = "sigmoid(beta * (s_c - s_r))") -> Figure:
    fig = _figure((5, 5))
    ax = fig.subplots()
    ax.plot([0.5, 1.0], [0.5, 1.0], "k--", lw=1, label="perfect calibration")
    if table:
        conf = [b["confidence"] for b in table]
        acc = [b["accuracy"] for b in table]
        ax.plot(conf, acc, "o-", label="model")
        for b in table:
            ax.annotate(str(b["n"]), (b["confidence"], b["accuracy"]), fontsize=7)
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel(f"confidence max(p, 1-p), p = {p}")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE = {ece:.3f}; labels: pairs per bin)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def worst_pairs_grid(pixels: list[tuple[np.ndarray, np.ndarray]], captions: list[str]) -> Figure:
    """One row per pair: chosen | rejected, uint8 ``(3, S, S)`` each, or clips ``(3, T, S, S)``
    drawn as filmstrips (frames left to right)."""
    n = max(1, len(pixels))
    pixels = [(_strip(c), _strip(r)) for c, r in pixels]
    aspect = pixels[0][0].shape[2] / pixels[0][0].shape[1] if pixels else 1.0
    fig = _figure((4 * min(aspect, 4), 2 * n))
    axes = fig.subplots(n, 2, squeeze=False)
    for i, ((c, r), cap) in enumerate(zip(pixels, captions, strict=True)):
        for j, (img, name) in enumerate(((c, "chosen"), (r, "rejected"))):
            axes[i][j].imshow(np.asarray(img).transpose(1, 2, 0))
            axes[i][j].set_title(f"{name} {cap.split('|')[j]}", fontsize=7)
            axes[i][j].axis("off")
    if not pixels:
        axes[0][0].set_title("no wrong pairs")
        axes[0][0].axis("off")
        axes[0][1].axis("off")
    fig.tight_layout()
    return fig


def _strip(item: np.ndarray) -> np.ndarray:
    """``(3, T, S, S)`` -> ``(3, S, T * S)``; images pass through."""
    item = np.asarray(item)
    if item.ndim == 4:
        c, t, h, w = item.shape
        return item.transpose(0, 2, 1, 3).reshape(c, h, t * w)
    return item


def report_figures(report, prepared_path: str, worst: int) -> dict[str, Figure]:
    """The pictures of an EvalReport (a fourth for a ``mu_sigma`` head), by file name
    (``eval/<name>`` in MLflow)."""
    import pyarrow.dataset as pads
    import ray.data  # noqa: F401  (registers Ray's tensor extension type with pyarrow)

    from ..runtime import storage

    df = report.scores
    s_c, s_r = df["s_chosen"].to_numpy(), df["s_rejected"].to_numpy()
    ece = report.metrics.get("eval/ece", float("nan"))
    hard = ~np.isclose(df["target"].to_numpy(), 0.5) if "target" in df else np.ones(len(df), bool)
    delta = s_c - s_r
    wrong = np.where(hard & (delta <= 0))[0]
    wrong = wrong[np.argsort(delta[wrong])][:worst]  # most negative gap = most confident
    ids = [str(df["pair_id"].iloc[i]) for i in wrong]
    pixels, captions = [], []
    if ids:
        table = storage.dataset(prepared_path).to_table(
            columns=["pair_id", "chosen_px", "rejected_px"], filter=pads.field("pair_id").isin(ids))
        by_id = {pid: k for k, pid in enumerate(table["pair_id"].to_pylist())}
        chosen = table["chosen_px"].combine_chunks().to_numpy()  # (K, 3, S, S) uint8
        rejected = table["rejected_px"].combine_chunks().to_numpy()
        for i, pid in zip(wrong, ids, strict=True):
            k = by_id[pid]
            pixels.append((chosen[k], rejected[k]))
            captions.append(f"{s_c[i]:.2f}|{s_r[i]:.2f}")
    figures = {
        "score_histograms.png": score_histograms(s_c, s_r),
        "reliability.png": reliability_diagram(report.reliability, ece),
        "most_confidently_wrong.png": worst_pairs_grid(pixels, captions),
    }
    if report.uncertainty_reliability:  # a mu_sigma head: the probability it predicts itself
        figures["reliability_uncertainty.png"] = reliability_diagram(
            report.uncertainty_reliability, report.metrics.get("eval/uncertainty/ece", float("nan")),
            "E[sigmoid(Z)], Z ~ N(beta mu_z, beta^2 sigma_z^2)")
    return figures
