"""The Ray Data graph of ingest: read units -> canonical rows (tasks) -> decoded pairs (the
pinned ``PairDecoder`` actor pool), and the datasets training and evaluation iterate.

One ``DecodeOptions`` per run (built once from the config) and one ``SplitRule`` per use say
everything the graph needs; ``prepare.py`` writes the graph's output once, streaming training
(``data.cache=none``) and the benchmarks iterate it directly. Streaming training iterates one
graph of ``train.epochs`` passes back to back (``StreamingPairs``), so the actor pool starts
once and the next epoch's pairs are decoded while the current one trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..config import DataConfig, PreprocessConfig
from ..media.spec import MediaSpec
from ..runtime import storage
from ..runtime.resources import READ_TASK_CPUS
from .batching import decode_batch_rows
from .contract import OK, ReadPlan, TrainPairs
from .decoder import (
    CONSISTENCY_COLUMNS,
    DECODER_MAX_RESTARTS,
    PAIR_COLUMNS,
    PROMPT_COLUMN,
    PairDecoder,
)
from .reading import SplitRule, read_unit

NODE_RESOURCE_SHARE = 0.001  # of preprocess.node_resource per decode actor: a placement label


@dataclass(frozen=True)
class DecodeOptions:
    """How the preprocessing actors read and decode, for every dataset of a run."""

    spec: MediaSpec
    layout: str = "auto"
    ties: str = "drop"
    actors: int = 1
    cpus_per_actor: float = 1.0
    batch_size: int = 0
    """Rows per decode batch; 0: sized by decode time and bytes (``batching.py``)."""
    node_resource: str = ""
    pinning: dict | None = field(default=None, compare=False)
    """A ``CpuPlan.to_dict()``: each actor pins itself and reports to ``report_dir``."""
    report_dir: str | None = None
    augment: dict | None = field(default=None, compare=False)
    """Random transforms of the training rows (``media/augment.py``), re-drawn each epoch."""

    @classmethod
    def from_config(cls, data: DataConfig, preprocess: PreprocessConfig, ties: str,
                    spec: MediaSpec, pinning: dict | None = None,
                    report_dir: str | None = None) -> DecodeOptions:
        return cls(spec, data.layout, ties, preprocess.actors, preprocess.cpus_per_actor,
                   preprocess.batch_size, preprocess.node_resource, pinning, report_dir)

    def with_augment(self, augment: dict | None) -> DecodeOptions:
        return replace(self, augment=augment)


def decode_stage(plan: ReadPlan, opts: DecodeOptions, rule: SplitRule, *,
                 in_train: TrainPairs | None = None, journal_dir: str | None = None,
                 output_columns: list[str] | None = None, passes: int = 1):
    """The lazy Ray Dataset of read -> canonical rows -> decoded pairs of ``plan``.

    ``in_train``: the training pairs; an eval row that is one of them is excluded.
    ``journal_dir``: the node-local crash journal of the actors (``decoder.DecodeJournal``).
    ``output_columns``: keep only usable rows and these columns (streaming training).
    ``passes``: read and decode every unit this many times, pass after pass (in order when
    Ray Data preserves order), through the one actor pool."""
    import ray
    from ray.data import ActorPoolStrategy

    assert passes >= 1, passes
    spec = opts.spec
    units = list(plan.units) * passes  # read_unit reads units[i]: pass p is i // len(plan.units)
    ds = ray.data.from_items([{"unit": i} for i in range(len(units))])
    ds = ds.map_batches(
        read_unit,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs={"units": units, "rule": rule, "ties": opts.ties,
                   "max_bytes": spec.max_bytes, "in_train": in_train},
        num_cpus=READ_TASK_CPUS,
    )
    placement = ({"resources": {opts.node_resource: NODE_RESOURCE_SHARE}}
                 if opts.node_resource else {})
    return ds.map_batches(
        PairDecoder,
        fn_constructor_kwargs={"spec": spec.to_dict(), "pinning": opts.pinning,
                               "report_dir": opts.report_dir, "journal_dir": journal_dir,
                               "augment": opts.augment, "output_columns": output_columns},
        # 0 (preprocess.batch_size default): sized by decode time and decoded bytes
        # (datasets/batching.py) so per-batch overhead stays small; > 0: that many rows.
        batch_size=decode_batch_rows(spec, opts.batch_size),
        # A fixed-size pool: decoding is the stage's work, so all actors start at once (an
        # autoscaling pool starting at 1 spends the first seconds of a short run scaling up).
        compute=ActorPoolStrategy(size=opts.actors),
        num_cpus=opts.cpus_per_actor,
        batch_format="numpy",
        # Finite: a crashing row is quarantined after DECODE_DEATHS_BEFORE_QUARANTINE deaths,
        # so these bound how many such rows one actor survives.
        max_restarts=DECODER_MAX_RESTARTS,
        max_task_retries=DECODER_MAX_RESTARTS,
        **placement,
    )


def training_columns(spec: MediaSpec) -> list[str]:
    """The columns a trainer reads: pixels and labels, plus consistency (video) and the
    prompt's token ids (prompt-conditioned scorers)."""
    return PAIR_COLUMNS + (CONSISTENCY_COLUMNS if spec.video else []) + (
        [PROMPT_COLUMN] if spec.takes_prompt else [])


@dataclass(frozen=True)
class StreamingPairs:
    """``data.cache=none``: the usable pairs of split ``rule.only``, decoded on the fly by the
    pinned actor pool, for Ray Train to stream. Rows of other splits are dropped before
    decoding; rows that fail to decode were counted and quarantined by the prepare step's
    status pass and are dropped here again.

    The trainer asks for ``dataset(passes=train.epochs)``: one Ray Data execution of every
    epoch's pairs back to back, which the workers cut into epochs by counting rows
    (``worker.EpochCutter``). A dataset of one pass that Ray Train re-executes each epoch
    would start the read tasks and the actor pool again every epoch (9-13 s before the first
    batch on 2 cores, docs/performance.md) while the trainers wait; Ray Data's streaming
    split cannot start the next execution before every worker has finished the current one.
    """

    plan: ReadPlan
    opts: DecodeOptions
    rule: SplitRule

    def dataset(self, passes: int) -> Any:
        # The split and status selections run inside the read and decode stages: a separate
        # filter operator would need a CPU of its own next to the actors and the trainers.
        return decode_stage(self.plan, self.opts, self.rule,
                            output_columns=training_columns(self.opts.spec), passes=passes)


def streaming_pairs(plan: ReadPlan, opts: DecodeOptions, rule: SplitRule) -> StreamingPairs:
    """``data.cache=none``: the training pairs, streamed (see ``StreamingPairs``)."""
    return StreamingPairs(plan, opts, rule)


def pair_columns(prepared_path: str) -> list[str]:
    """The training columns of a prepared dataset (video data also carries consistency, data
    for a prompt-conditioned scorer its prompts' token ids)."""
    names = storage.dataset(prepared_path).schema.names
    return PAIR_COLUMNS + [c for c in [*CONSISTENCY_COLUMNS, PROMPT_COLUMN] if c in names]


def usable_pairs(prepared_path: str, split: str, with_ids: bool = False):
    """The usable rows of one split of prepared data as a streaming Ray Dataset of uint8
    pixel tensors; ``with_ids`` adds ``pair_id``, ``meta`` and the raw ``prompt`` (scoring
    actors tokenise it with their own scorer's tokenizer)."""
    import ray
    from ray.data.expressions import col

    fs, path = storage.filesystem(prepared_path)
    # READ_TASK_CPUS, not Ray Data's default of 1 CPU: validation reads while the streaming
    # decode actors and the trainers hold their CPUs (one stream for every epoch), and the
    # resource plan leaves a read slot of READ_TASK_CPUS free for it. A 1-CPU read task
    # never gets scheduled there (measured: 2-CPU cluster, 1 CPU actor + 0.5 CPU trainer).
    ds = ray.data.read_parquet(path, filesystem=fs, num_cpus=READ_TASK_CPUS)
    ds = ds.filter(expr=(col("status") == OK) & (col("split") == split), num_cpus=READ_TASK_CPUS)
    ids = ["pair_id", "meta", "prompt"] if with_ids else []
    return ds.select_columns(ids + pair_columns(prepared_path))
