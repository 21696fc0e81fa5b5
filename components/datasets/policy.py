"""The ingest policies of a run: which split each row goes to, and whether decoded pixels are
written once (``decoded``) or decoded again every epoch (``none``, streaming)."""

from __future__ import annotations

import numpy as np

from ..config import DataConfig
from ..media.spec import MediaSpec
from .reading import SplitRule


def training_rule(data: DataConfig, has_eval_shards: bool, only: str | None = None) -> SplitRule:
    """The split rule of the training shards: all ``train`` (with ``val_fraction`` of them
    in ``val``) beside ``--eval`` shards; else a hash split by ``data.eval_fraction``."""
    if has_eval_shards:
        return SplitRule(fixed="train", val_fraction=data.val_fraction, only=only)
    return SplitRule(eval_fraction=data.eval_fraction, val_fraction=data.val_fraction, only=only)


EVAL_RULE = SplitRule(fixed="eval")
"""``--eval`` shards: every row is in split ``eval``."""


def resolve_cache(data: DataConfig, spec: MediaSpec, train_rows: int) -> str:
    """``data.cache`` with ``auto`` decided: ``decoded`` when the decoded training pairs
    (``train_rows`` x 2 items x ``spec.shape`` bytes) fit ``data.cache_max_gb`` and there is no
    augmentation, else ``none``."""
    if data.cache != "auto":
        return data.cache
    decoded = train_rows * 2 * int(np.prod(spec.shape))
    return "decoded" if decoded <= data.cache_max_gb * 1e9 and not data.augment else "none"
