"""Score prepared pairs with a trained scorer: Ray Data batch inference (one actor that loads
the model once), used for evaluation, the champion comparison and the DPO reference pass."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..registry.scorer_files import TrainedScorer
from ..runtime.resources import SCORING_ACTOR_CPUS
from ..training.models import build_scorer
from ..training.step import eval_rewards
from .metrics import reward_columns

PASS_THROUGH = ("pair_id", "target", "meta")


class PairScorer:
    """Ray Data actor: loads a scorer once, adds ``s_chosen``/``s_rejected`` columns.

    A prompt-conditioned scorer tokenises the pairs' ``prompt`` column with its own tokenizer
    (a champion may use another one than the data was prepared for). Preparing the data
    quarantined the prompts over the run's limits (``data.max_prompt_*``); one over this
    scorer's own limits is never tokenised: it scores as the empty prompt
    (``MediaSpec.tokenize``).

    Inputs prepared at another size than the scorer was trained at (``scorer.spec.size``) are
    resized (antialiased, frame by frame for clips) so a champion is judged at its own
    resolution. With a temporal prior (video) and ``with_prior``, ``s_*`` is the full reward
    ``s(x) + lambda * c(x)`` that the model was trained with and that the registered model
    returns; the scorer's own part is kept as ``model_chosen``/``model_rejected``. A
    ``mu_sigma`` or ``named`` head adds its log sigma or per-head columns
    (``metrics.reward_columns``).
    """

    def __init__(self, scorer: TrainedScorer, with_prior: bool = True):
        self.model = build_scorer(scorer.model_name, scorer.options)
        self.spec = scorer.spec
        self.model.load_state_dict(scorer.state_dict)
        self.model.eval()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.size = scorer.spec.size
        self.temporal_weight = scorer.temporal_weight if with_prior else 0.0

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
        tokens = None
        if self.spec.takes_prompt:  # this scorer's own tokenizer, whatever prepared the data
            if "prompt" not in batch:
                raise ValueError("a prompt-conditioned scorer needs the pairs' prompt column")
            tokens = torch.from_numpy(self.spec.tokenize(list(batch["prompt"])))
        r_c, r_r = eval_rewards(self.model, c, r, self.device, tokens)
        s_c = r_c.score.cpu().numpy().astype(np.float64)
        s_r = r_r.score.cpu().numpy().astype(np.float64)
        out = {k: batch[k] for k in PASS_THROUGH if k in batch}
        out.update(reward_columns(r_c, r_r))
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


def score_dataset(ds, scorer: TrainedScorer, batch_size: int = 64,
                  with_prior: bool = True, use_gpu: bool | None = None) -> pd.DataFrame:
    """Scores of every pair in a prepared dataset, one row per pair, sorted by pair_id so two
    models' scores line up pair by pair."""
    from ray.data import ActorPoolStrategy

    if use_gpu is None:  # the run's decision when given; else whether the cluster has GPUs
        import ray

        use_gpu = ray.cluster_resources().get("GPU", 0) >= 1

    scored = ds.map_batches(
        PairScorer,
        fn_constructor_kwargs={"scorer": scorer, "with_prior": with_prior},
        batch_size=batch_size,
        compute=ActorPoolStrategy(size=1),
        num_cpus=SCORING_ACTOR_CPUS,
        num_gpus=1 if use_gpu else 0,
        batch_format="numpy",
    )
    df = scored.to_pandas()
    if len(df) and "pair_id" in df:
        df = df.sort_values("pair_id", kind="stable").reset_index(drop=True)
    return df
