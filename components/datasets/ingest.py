"""Ray Data ingest: read shards -> canonical pairs -> validate -> decode in an actor pool.

The decoded pairs are written once, as Parquet with uint8 tensor columns, to the run's
output directory (``prepared/<name>``); every epoch then streams them to the trainers
without decoding again. Every row read is written with a ``status`` (ok / excluded /
quarantined) and a ``reason``, so the counts come from one place and nothing is lost.

Shapes: ``chosen_px`` and ``rejected_px`` are uint8 ``(3, S, S)`` per row, ``(N, 3, S, S)``
per batch; for video ``(3, T, S, S)`` and ``(N, 3, T, S, S)``, with each clip's temporal
consistency in ``chosen_c``/``rejected_c`` (float64). Float conversion happens on the
training device.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ..config import DataConfig, PreprocessConfig
from ..media.image import DecodeError
from ..media.spec import MediaSpec
from ..runtime import storage
from ..runtime.resources import READ_TASK_CPUS
from ..runtime.test_faults import fault_plan
from .batching import decode_batch_rows
from .contract import (
    OK,
    QUARANTINED,
    DataError,
    ReadUnit,
    Shard,
    TrainPairs,
    canonical_rows,
    encoded_size,
    in_validation,
    plan_reads,
)
from .quarantine import RowCounts, check_quarantine, write_quarantine

log = logging.getLogger(__name__)

NODE_RESOURCE_SHARE = 0.001  # of preprocess.node_resource per decode actor: a placement label
READ_SLICE_ROWS = 256  # rows per output block of the read stage; bounds memory per task
# ... and encoded bytes per block. Also keeps each binary column of a block under Arrow's
# 2 GiB (int32 offsets): a block is either under this or one row, and a row's cell is under
# contract.BINARY_CELL_MAX (a larger one is quarantined), so building a block cannot raise
# ArrowCapacityError. 256 video clips of 10 MB would be 2.5 GB in one block without it.
READ_SLICE_BYTES = 256 * 2**20

# Output of the read stage (see contract.canonical_rows); typed so all-null columns stay typed.
CANONICAL_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("prompt", pa.string()), ("chosen", pa.binary()),
    ("rejected", pa.binary()), ("shard", pa.string()), ("row", pa.int64()),
    ("split", pa.string()), ("status", pa.string()), ("reason", pa.string()),
    ("meta", pa.string()), ("target", pa.float64()), ("margin", pa.float64()),
    ("weight", pa.float64()), ("content_hash", pa.string()),
])
# Canonical video shards may hold each side as a list of encoded frames (list<binary>).
FRAME_LIST_SCHEMA = CANONICAL_SCHEMA.set(2, pa.field("chosen", pa.list_(pa.binary()))).set(
    3, pa.field("rejected", pa.list_(pa.binary())))
PAIR_COLUMNS = ["chosen_px", "rejected_px", "target", "margin", "weight"]
CONSISTENCY_COLUMNS = ["chosen_c", "rejected_c"]  # video only
PROMPT_COLUMN = "prompt_ids"  # int32 (L,) token ids: prompt-conditioned scorers only


@dataclass
class PreparedData:
    path: str  # directory of Parquet files with all rows, decoded where usable
    counts: dict[str, RowCounts]  # by split: "train", "eval"
    image_sizes: dict[str, int]  # "WxH" of the original images -> count
    decode_s: float
    consistency: dict[str, dict[str, float]] = field(default_factory=dict)  # video, by split


def canonical_tables(rows: Iterator[dict[str, Any]], frame_lists: bool) -> Iterator[pa.Table]:
    """Canonical rows -> typed tables of at most ``READ_SLICE_ROWS`` rows and, unless one row
    is larger, ``READ_SLICE_BYTES`` encoded bytes."""
    schema = FRAME_LIST_SCHEMA if frame_lists else CANONICAL_SCHEMA
    block: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        n = encoded_size(row["chosen"]) + encoded_size(row["rejected"])
        if block and (len(block) == READ_SLICE_ROWS or size + n > READ_SLICE_BYTES):
            yield pa.Table.from_pylist(block, schema=schema)
            block, size = [], 0
        block.append(row)
        size += n
    if block:
        yield pa.Table.from_pylist(block, schema=schema)


def _read_unit(
    batch: dict[str, np.ndarray], units: list[ReadUnit], eval_fraction: float | None, ties: str,
    max_bytes: int, in_train: TrainPairs | None, split: str | None = None,
    val_fraction: float = 0.0, only_split: str | None = None,
) -> Iterator[pa.Table]:
    """Ray Data read stage: one ReadUnit index per input row -> canonical rows in slices.
    Every row gets its split here: ``split`` when given, else the hash split
    (``eval_fraction``), with ``val_fraction`` of the training rows moved to ``val``."""
    for i in batch["unit"]:
        unit = units[int(i)]
        with unit.shard.filesystem.open_input_file(unit.shard.path) as f:
            table = pq.ParquetFile(f).read_row_group(unit.row_group)
        rows = canonical_rows(unit, table, eval_fraction, ties, max_bytes=max_bytes,
                              in_train=in_train)
        rows = _with_split(rows, split, val_fraction)
        if only_split is not None:  # here, not a separate filter task that needs its own CPU
            rows = (r for r in rows if r["split"] == only_split)
        yield from canonical_tables(rows, unit.frame_lists)


def _with_split(rows: Iterator[dict[str, Any]], split: str | None,
                val_fraction: float) -> Iterator[dict[str, Any]]:
    for row in rows:
        if split is not None:
            row["split"] = split
        if val_fraction and row["split"] == "train" and in_validation(row["pair_id"], val_fraction):
            row["split"] = "val"
        yield row


# A row whose decode kills the actor process (a decoder segfault, the OOM killer) is tried
# this many times, then quarantined; Ray restarts the actor and retries its batch meanwhile,
# a bounded number of times (Ray Data's default is forever, which stalls the run).
DECODE_DEATHS_BEFORE_QUARANTINE = 2
DECODER_MAX_RESTARTS = 16


class DecodeJournal:
    """The item an actor is decoding, in a node-local file, so that the actor Ray restarts
    after a crash knows which item killed its predecessor (Ray keeps the actor id across
    restarts; the restart normally lands on the same node).

    One ``pwrite`` of a fixed-size record per item into an open file (a few microseconds; the
    page cache survives the process, which is all a crash needs); the death counts are
    written only when a restart finds an item in the journal."""

    RECORD = 64

    def __init__(self, directory: str, actor_id: str):
        os.makedirs(directory, exist_ok=True)
        base = os.path.join(directory, actor_id)
        self.deaths_path = base + ".deaths.json"
        self.deaths: dict[str, int] = {}
        if os.path.exists(self.deaths_path):
            with open(self.deaths_path) as f:
                self.deaths = json.load(f)
        if os.path.exists(base + ".current"):
            with open(base + ".current", "rb") as f:
                current = f.read().rstrip(b"\0").decode()
            if current:  # the predecessor died while decoding this item
                self.deaths[current] = self.deaths.get(current, 0) + 1
                with open(self.deaths_path, "w") as f:
                    json.dump(self.deaths, f)
        self.fd = os.open(base + ".current", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    @staticmethod
    def key(item: str) -> str:
        return hashlib.sha1(item.encode()).hexdigest()

    def start(self, key: str) -> None:
        os.pwrite(self.fd, key.encode().ljust(self.RECORD, b"\0"), 0)

    def done(self) -> None:
        os.pwrite(self.fd, b"\0" * self.RECORD, 0)


class PairDecoder:
    """Preprocessing actor: decodes both images (or clips) of each usable pair.

    Rows whose media cannot be used become ``quarantined`` with the reason; the encoded
    bytes are dropped after decoding so the object store carries only uint8 pixels. A row
    whose decode killed the actor ``DECODE_DEATHS_BEFORE_QUARANTINE`` times is quarantined
    without decoding it again.
    """

    def __init__(self, spec: dict, pinning: dict | None = None,
                 report_dir: str | None = None, journal_dir: str | None = None,
                 augment: dict | None = None, output_columns: list[str] | None = None):
        # First thing: pin to this actor's cores and cap its threads (runtime/pinning.py).
        import ray

        from ..runtime.pinning import pin_role

        pin_role(pinning, "preprocess", None, report_dir, import_torch=False)
        self.spec = MediaSpec.from_dict(spec)
        self.output_columns = output_columns
        self.augment = None
        if augment:
            from ..media.augment import PairAugment

            self.augment = PairAugment(**augment)
        self.journal = None
        if journal_dir:
            actor_id = ray.get_runtime_context().get_actor_id() or str(os.getpid())
            self.journal = DecodeJournal(journal_dir, actor_id)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["pair_id"])
        spec = self.spec
        chosen = np.zeros((n, *spec.shape), dtype=np.uint8)
        rejected = np.zeros((n, *spec.shape), dtype=np.uint8)
        c_chosen = np.zeros(n, dtype=np.float64)
        c_rejected = np.zeros(n, dtype=np.float64)
        status = np.array(batch["status"], dtype=object)
        reason = np.array(batch["reason"], dtype=object)
        sizes = np.array([""] * n, dtype=object)
        split = list(batch["split"])
        for i in range(n):
            if status[i] != OK:
                continue
            if self.journal is not None:
                item = self.journal.key(f"{batch['shard'][i]}#{int(batch['row'][i])}")
                deaths = self.journal.deaths.get(item, 0)
                if deaths >= DECODE_DEATHS_BEFORE_QUARANTINE:
                    status[i] = QUARANTINED
                    reason[i] = (f"the decoder process died {deaths} times on this pair "
                                 "(a decoder crash, or out of memory)")
                    continue
                self.journal.start(item)
                _crash_for_tests(batch["pair_id"][i])
            # Training rows only: one augmentation draw for both sides of the pair.
            draw = (self.augment.draw(str(batch["pair_id"][i]), spec.size)
                    if self.augment is not None and split[i] == "train" else None)
            with self.augment.sampling(draw) if draw else contextlib.nullcontext():
                try:
                    chosen[i], c_size, c = spec.decode(batch["chosen"][i])
                except DecodeError as e:
                    status[i], reason[i] = QUARANTINED, f"chosen: {e.reason}"
                    continue
                try:
                    rejected[i], r_size, r = spec.decode(batch["rejected"][i])
                except DecodeError as e:
                    status[i], reason[i] = QUARANTINED, f"rejected: {e.reason}"
                    continue
            sizes[i] = f"{c_size},{r_size}"
            if spec.video:
                c_chosen[i], c_rejected[i] = c, r
            if draw is not None:
                chosen[i] = self.augment.apply(draw, chosen[i])
                rejected[i] = self.augment.apply(draw, rejected[i])
        if self.journal is not None:
            self.journal.done()
        from ray.data.extensions import ArrowTensorArray

        # Explicit types: a batch whose prompts are all null must still write a string column.
        columns = {
            "pair_id": pa.array(list(batch["pair_id"]), pa.string()),
            "prompt": pa.array(list(batch["prompt"]), pa.string()),
            "shard": pa.array(list(batch["shard"]), pa.string()),
            "row": pa.array(np.asarray(batch["row"], dtype=np.int64)),
            "meta": pa.array(list(batch["meta"]), pa.string()),
            "content_hash": pa.array(list(batch["content_hash"]), pa.string()),
            "target": pa.array(np.asarray(batch["target"], dtype=np.float64)),
            "margin": pa.array(np.asarray(batch["margin"], dtype=np.float64)),
            "weight": pa.array(np.asarray(batch["weight"], dtype=np.float64)),
            "split": pa.array(list(split), pa.string()),
            "status": pa.array(list(status), pa.string()),
            "reason": pa.array(list(reason), pa.string()),
            "source_sizes": pa.array(list(sizes), pa.string()),
            "chosen_px": ArrowTensorArray.from_numpy(chosen),
            "rejected_px": ArrowTensorArray.from_numpy(rejected),
        }
        if spec.video:
            columns.update(chosen_c=pa.array(c_chosen), rejected_c=pa.array(c_rejected))
        if spec.takes_prompt:  # tokenised once, here; both sides share the pair's prompt
            columns[PROMPT_COLUMN] = ArrowTensorArray.from_numpy(spec.tokenize(list(batch["prompt"])))
        table = pa.table(columns)
        if self.output_columns is not None:  # streaming: usable pairs only, training columns
            table = table.filter(pa.array(status == OK)).select(self.output_columns)
        return table


def _crash_for_tests(pair_id: str) -> None:
    """Test-only (runtime/test_faults.py): end this process at the planned pair."""
    if fault_plan().get("decode_crash_pair_id") == pair_id:
        os._exit(139)


def decode_stage(
    shards: list[Shard],
    *,
    layout: str,
    spec: MediaSpec,
    decode_actors: int,
    cpus_per_actor: float,
    batch_size: int,
    eval_fraction: float | None,
    split: str | None = None,
    ties: str = "drop",
    pinning: dict | None = None,
    report_dir: str | None = None,
    in_train: TrainPairs | None = None,
    journal_dir: str | None = None,
    val_fraction: float = 0.0,
    only_split: str | None = None,
    augment: dict | None = None,
    node_resource: str = "",
    output_columns: list[str] | None = None,
):
    """The lazy Ray Dataset of read -> canonical rows -> decoded pairs, and the row count the
    shards' Parquet metadata declares. ``prepare`` writes it; streaming training
    (``data.cache=none``) and benchmarks iterate it.
    ``only_split``: decode only the rows the read stage put in that split (the hash split).
    ``augment``: random transforms of the training rows (``augment.py``), re-drawn each epoch.

    Raises ``DataError`` (from ``plan_reads``, before any Ray work) when a shard's schema is
    wrong for ``spec`` or the shards hold no rows."""
    import ray
    from ray.data import ActorPoolStrategy

    units, total_rows = plan_reads(shards, layout, spec.modality)
    ds = ray.data.from_items([{"unit": i} for i in range(len(units))])
    ds = ds.map_batches(
        _read_unit,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs={"units": units, "eval_fraction": eval_fraction, "ties": ties,
                   "max_bytes": spec.max_bytes, "in_train": in_train, "split": split,
                   "val_fraction": val_fraction, "only_split": only_split},
        num_cpus=READ_TASK_CPUS,
    )
    placement = {"resources": {node_resource: NODE_RESOURCE_SHARE}} if node_resource else {}
    ds = ds.map_batches(
        PairDecoder,
        fn_constructor_kwargs={"spec": spec.to_dict(), "pinning": pinning,
                               "report_dir": report_dir, "journal_dir": journal_dir,
                               "augment": augment, "output_columns": output_columns},
        # 0 (preprocess.batch_size default): sized by decode time and decoded bytes
        # (datasets/batching.py) so per-batch overhead stays small; > 0: that many rows.
        batch_size=decode_batch_rows(spec, batch_size),
        # A fixed-size pool: decoding is the stage's work, so all actors start at once (an
        # autoscaling pool starting at 1 spends the first seconds of a short run scaling up).
        compute=ActorPoolStrategy(size=decode_actors),
        num_cpus=cpus_per_actor,
        batch_format="numpy",
        # Finite: a crashing row is quarantined after DECODE_DEATHS_BEFORE_QUARANTINE deaths,
        # so these bound how many such rows one actor survives.
        max_restarts=DECODER_MAX_RESTARTS,
        max_task_retries=DECODER_MAX_RESTARTS,
        **placement,
    )
    return ds, total_rows


def prepare(
    shards: list[Shard],
    out_dir: str,
    *,
    layout: str,
    spec: MediaSpec,
    decode_actors: int,
    cpus_per_actor: float,
    batch_size: int,
    eval_fraction: float | None,
    split: str | None = None,
    ties: str = "drop",
    pinning: dict | None = None,
    report_dir: str | None = None,
    in_train: TrainPairs | None = None,
    val_fraction: float = 0.0,
    keep_pixels: bool = True,
    only_split: str | None = None,
    node_resource: str = "",
) -> PreparedData:
    """Read, validate and decode ``shards`` with Ray Data; write all rows to ``out_dir``.

    ``eval_fraction`` set: rows are split into train/eval by a hash of pair_id.
    ``split`` set instead: every row belongs to that split (e.g. ``--eval`` data).
    ``pinning``: a ``CpuPlan`` dict; each actor pins itself and reports to ``report_dir``.
    ``in_train``: the training pairs; a row that is one of them is excluded ("also in train").
    ``val_fraction``: share of the training rows (a second hash of pair_id) in split ``val``.
    ``keep_pixels=False`` (``data.cache=none``): decode every row once, for its status, and
    write the status table only; training decodes again, streaming.
    ``only_split``: write only the rows of that split (their pixels for evaluation; the counts
    come from a status pass over all rows).
    Empty shards count as 0 rows read; no rows at all is a ``DataError`` naming the shards.
    """
    t0 = time.perf_counter()
    # The crash journal of the decode actors, next to the output (node-local).
    journal_dir = os.path.join(tempfile.gettempdir(), "visual-dpo-decode-journal",
                               hashlib.sha1(storage.normalize(out_dir).encode()).hexdigest()[:16])
    shutil.rmtree(journal_dir, ignore_errors=True)
    ds, total_rows = decode_stage(shards, layout=layout, spec=spec, decode_actors=decode_actors,
                                  cpus_per_actor=cpus_per_actor, batch_size=batch_size,
                                  eval_fraction=eval_fraction, split=split, ties=ties,
                                  pinning=pinning, report_dir=report_dir, in_train=in_train,
                                  journal_dir=journal_dir, val_fraction=val_fraction,
                                  only_split=only_split, node_resource=node_resource)
    if not keep_pixels:
        ds = ds.drop_columns(["chosen_px", "rejected_px"]
                             + ([PROMPT_COLUMN] if spec.takes_prompt else []))
    # A rerun with the same run name writes here again: start empty, never append.
    storage.remove(out_dir)
    storage.make_dirs(out_dir)
    fs, fs_path = storage.filesystem(out_dir)
    ds.write_parquet(fs_path, filesystem=fs)
    decode_s = time.perf_counter() - t0
    shutil.rmtree(journal_dir, ignore_errors=True)

    meta = storage.dataset(out_dir).to_table(
        columns=["split", "status", "reason", "source_sizes"] + (CONSISTENCY_COLUMNS if spec.video else [])
    )
    if only_split is None and meta.num_rows != total_rows:
        raise RuntimeError(  # an internal invariant, not a user error
            f"ingest wrote {meta.num_rows} rows but the shards hold {total_rows}: rows were lost"
        )
    counts: dict[str, RowCounts] = {}
    for sp, st, rs in zip(
        meta["split"].to_pylist(), meta["status"].to_pylist(), meta["reason"].to_pylist(),
        strict=True,
    ):
        c = counts.setdefault(sp, RowCounts())
        c.read += 1
        if st == OK:
            c.used += 1
        elif st == QUARANTINED:
            c.quarantined += 1
            key = rs.split(" (", 1)[0]
            c.reasons[key] = c.reasons.get(key, 0) + 1
        else:
            c.excluded += 1
            c.reasons[rs] = c.reasons.get(rs, 0) + 1
    sizes: Counter[str] = Counter()
    for s in meta["source_sizes"].to_pylist():
        if s:
            sizes.update(s.split(","))
    return PreparedData(out_dir, counts, dict(sizes.most_common(50)), decode_s,
                        consistency_stats(meta) if spec.video else {})


def train_pairs(prepared_path: str) -> TrainPairs:
    """The usable pairs of prepared training data (pair_id and content hash), read on the
    driver: only these were trained on, so only these make an eval pair leak."""
    t = storage.dataset(prepared_path).to_table(
        columns=["pair_id", "content_hash"], filter=pads.field("status") == OK)
    return TrainPairs.of(t["pair_id"].to_pylist(), t["content_hash"].to_pylist())


def consistency_stats(meta: pa.Table) -> dict[str, dict[str, float]]:
    """Per split, over usable pairs: mean ``c`` of chosen and rejected clips, and the share
    of pairs whose chosen clip is the more consistent one (what consistency alone predicts)."""
    out: dict[str, dict[str, float]] = {}
    ok = np.array(meta["status"].to_pylist()) == OK
    splits = np.array(meta["split"].to_pylist())
    c_c = meta["chosen_c"].to_numpy(zero_copy_only=False)
    c_r = meta["rejected_c"].to_numpy(zero_copy_only=False)
    for sp in sorted(set(splits[ok])):
        m = ok & (splits == sp)
        out[sp] = {"pairs": int(m.sum()), "chosen_mean_c": float(c_c[m].mean()),
                   "rejected_mean_c": float(c_r[m].mean()),
                   "chosen_more_consistent": float((c_c[m] > c_r[m]).mean())}
    return out


def pair_columns(prepared_path: str) -> list[str]:
    """The training columns of a prepared dataset (video data also carries consistency, data
    for a prompt-conditioned scorer its prompts' token ids)."""
    names = storage.dataset(prepared_path).schema.names
    return PAIR_COLUMNS + [c for c in [*CONSISTENCY_COLUMNS, PROMPT_COLUMN] if c in names]


def usable_pairs(prepared_path: str, split: str, with_ids: bool = False):
    """The usable rows of one split as a streaming Ray Dataset of uint8 pixel tensors;
    ``with_ids`` adds ``pair_id``, ``meta`` and the raw ``prompt`` (scoring actors tokenise it
    with their own scorer's tokenizer)."""
    import ray
    from ray.data.expressions import col

    fs, path = storage.filesystem(prepared_path)
    ds = ray.data.read_parquet(path, filesystem=fs)
    ds = ds.filter(expr=(col("status") == OK) & (col("split") == split))
    ids = ["pair_id", "meta", "prompt"] if with_ids else []
    return ds.select_columns(ids + pair_columns(prepared_path))


def streaming_pairs(shards: list[Shard], split: str, *, layout: str, spec: MediaSpec,
                    decode_actors: int, cpus_per_actor: float, batch_size: int,
                    eval_fraction: float | None, split_as: str | None = None,
                    val_fraction: float = 0.0, ties: str = "drop", pinning: dict | None = None,
                    augment: dict | None = None, node_resource: str = ""):
    """``data.cache=none``: the usable pairs of one split, decoded on the fly by the pinned
    actor pool every time the dataset is iterated (each epoch), for Ray Train to stream.
    Rows of other splits are dropped before decoding; rows that fail to decode were counted
    and quarantined by the prepare step's status pass and are dropped here again."""
    columns = PAIR_COLUMNS + (CONSISTENCY_COLUMNS if spec.video else []) + (
        [PROMPT_COLUMN] if spec.takes_prompt else [])
    # The split and status selections run inside the read and decode stages: a separate
    # filter operator would need a CPU of its own next to the actors and the trainers.
    ds, _ = decode_stage(shards, layout=layout, spec=spec, decode_actors=decode_actors,
                         cpus_per_actor=cpus_per_actor, batch_size=batch_size,
                         eval_fraction=eval_fraction, split=split_as, ties=ties,
                         pinning=pinning, val_fraction=val_fraction, only_split=split,
                         augment=augment, node_resource=node_resource,
                         output_columns=columns)
    return ds


@dataclass
class PreparedSplits:
    """Output of the prepare step: where the decoded pairs are, and how every row ended."""

    train_path: str
    eval_path: str
    counts: dict[str, RowCounts]
    quarantine_path: str
    image_size: int
    metrics: dict[str, float] = field(default_factory=dict)  # rows/*, data/* (to log)
    report: dict[str, Any] = field(default_factory=dict)  # data/report.json (to log)
    cache: str = "decoded"
    """``decoded``: train_path holds the training pixels. ``none``: train_path holds the
    status table only (training streams from the shards); eval and val have pixels."""
    val_path: str = ""  # decoded validation pairs (split "val"); "" without a validation split

    def to_record(self) -> dict[str, Any]:
        return {"train_path": self.train_path, "eval_path": self.eval_path,
                "counts": {s: c.as_dict() for s, c in self.counts.items()},
                "quarantine_path": self.quarantine_path, "image_size": self.image_size,
                "metrics": self.metrics, "report": self.report, "cache": self.cache,
                "val_path": self.val_path}

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> PreparedSplits:
        return cls(r["train_path"], r["eval_path"],
                   {s: RowCounts(**c) for s, c in r["counts"].items()},
                   r["quarantine_path"], r["image_size"], r.get("metrics", {}),
                   r.get("report", {}), r.get("cache", "decoded"), r.get("val_path", ""))

    def check(self, max_quarantine_fraction: float) -> None:
        """Fail (DataError) when a split is mostly quarantined or has no usable pair."""
        check_quarantine(self.counts, max_quarantine_fraction)
        for split, c in self.counts.items():
            if c.read == 0:  # only the hash split gets here: prepare refuses empty shards
                raise DataError(
                    f"{split} data is empty: the hash split of pair_id put none of the "
                    f"{sum(x.read for x in self.counts.values())} rows read in it; change "
                    + ("data.val_fraction or add pairs" if split == "val" else
                       "data.eval_fraction, add pairs, or pass --eval"))
            if c.used == 0:
                raise DataError(f"{split} data: no usable pairs out of {c.read} rows read "
                                f"(reasons: {json.dumps(c.reasons)})")

    def rows_summary(self) -> dict[str, dict[str, int]]:
        return {
            split: {k: v for k, v in c.as_dict().items() if k != "reasons"}
            for split, c in sorted(self.counts.items())
        }


def resolve_cache(data: DataConfig, spec: MediaSpec, train_rows: int) -> str:
    """``data.cache`` with ``auto`` decided: ``decoded`` when the decoded training pairs
    (``train_rows`` x 2 items x ``spec.shape`` bytes) fit ``data.cache_max_gb`` and there is no
    augmentation, else ``none``."""
    if data.cache != "auto":
        return data.cache
    decoded = train_rows * 2 * int(np.prod(spec.shape))
    return "decoded" if decoded <= data.cache_max_gb * 1e9 and not data.augment else "none"


def prepare_splits(train_shards: list[Shard], eval_shards: list[Shard], run_dir: str, *,
                   data: DataConfig, preprocess: PreprocessConfig, ties: str, spec: MediaSpec,
                   pinning: dict | None, cache: str = "decoded") -> PreparedSplits:
    """Ingest train (and eval) data into ``run_dir/prepared`` and write the quarantine file.

    ``cache="none"``: every training row is decoded once for its status (quarantine, counts)
    but only the status table is written; the eval (and val) pairs are written with pixels,
    being small and scored more than once. Training then streams from the shards.

    Returns where everything is, the counts, the metrics and the data report; the caller logs
    them and then calls ``PreparedSplits.check`` (so a failing run still records its counts).
    No ``train_shards``: evaluation only (the eval split).
    """
    common = dict(
        layout=data.layout,
        spec=spec,
        decode_actors=preprocess.actors,
        cpus_per_actor=preprocess.cpus_per_actor,
        batch_size=preprocess.batch_size,
        ties=ties,
        pinning=pinning,
        report_dir=storage.join(run_dir, "pinning"),
        node_resource=preprocess.node_resource,
    )
    prepared_dir = storage.join(run_dir, "prepared")
    train_splits = ("train", "val") if data.val_fraction > 0 else ("train",)
    streaming = cache == "none"
    pixel_copies: list[PreparedData] = []  # decoded eval/val pairs of rows counted elsewhere

    def decoded_split(split: str, eval_fraction: float | None, fixed: str | None) -> str:
        px = prepare(train_shards, storage.join(prepared_dir, split), eval_fraction=eval_fraction,
                     split=fixed, val_fraction=data.val_fraction, only_split=split, **common)
        pixel_copies.append(px)
        return px.path

    if not train_shards:  # evaluation only (python -m pipelines evaluate)
        ev = prepare(eval_shards, storage.join(prepared_dir, "eval"),
                     eval_fraction=None, split="eval", **common)
        prepared = [ev]
        counts = {"eval": ev.counts.get("eval", RowCounts())}
        train_path, eval_path = "", ev.path
    elif eval_shards:
        tr = prepare(train_shards, storage.join(prepared_dir, "train"),
                     eval_fraction=None, split="train", val_fraction=data.val_fraction,
                     keep_pixels=not streaming, **common)
        # A pair that is also in the training data would flatter the eval metrics and the
        # promotion gate: the eval read stage excludes it, so the counts still reconcile.
        ev = prepare(eval_shards, storage.join(prepared_dir, "eval"),
                     eval_fraction=None, split="eval", in_train=train_pairs(tr.path), **common)
        prepared = [tr, ev]
        counts = {s: tr.counts.get(s, RowCounts()) for s in train_splits}
        counts["eval"] = ev.counts.get("eval", RowCounts())
        train_path, eval_path = tr.path, ev.path
    else:
        both = prepare(train_shards, storage.join(prepared_dir, "all"),
                       eval_fraction=data.eval_fraction, val_fraction=data.val_fraction,
                       keep_pixels=not streaming, **common)
        prepared = [both]
        counts = {s: both.counts.get(s, RowCounts()) for s in (*train_splits, "eval")}
        train_path = eval_path = both.path
        if streaming:
            eval_path = decoded_split("eval", data.eval_fraction, None)
    val_path = train_path if data.val_fraction > 0 and train_shards else ""
    if streaming and val_path:
        val_path = decoded_split("val", None if eval_shards else data.eval_fraction,
                                 "train" if eval_shards else None)

    quarantine_path = storage.join(run_dir, "quarantine.parquet")
    n_quarantined = write_quarantine(prepared, quarantine_path)
    metrics: dict[str, float] = {}
    for split, c in counts.items():
        for k in ("read", "used", "quarantined", "excluded"):
            metrics[f"rows/{split}/{k}"] = getattr(c, k)
    metrics["data/decode_s"] = sum(p.decode_s for p in prepared + pixel_copies)
    metrics["data/streaming"] = float(streaming)
    metrics["data/bytes_written"] = float(sum(
        storage.total_size(p.path) for p in prepared + pixel_copies))
    consistency: dict[str, dict[str, float]] = {}
    for p in prepared:
        consistency.update(p.consistency)
    for split, st in consistency.items():
        for k in ("chosen_mean_c", "rejected_mean_c", "chosen_more_consistent"):
            metrics[f"data/{split}/{k}"] = st[k]
    sizes: Counter[str] = Counter()
    for p in prepared:
        sizes.update(p.image_sizes)
    report = {
        "counts": {s: c.as_dict() for s, c in counts.items()},
        "quarantined_total": n_quarantined,
        "source_image_sizes": dict(sizes.most_common(50)),
        "decoded_shape": list(spec.shape),
        "media": spec.to_dict(),
        "temporal_consistency": consistency,
        "split": "separate eval data" if eval_shards or not train_shards
        else f"hash of pair_id, eval_fraction={data.eval_fraction}",
        "validation": (f"hash of pair_id (salted), val_fraction={data.val_fraction} of the "
                       "training pairs" if data.val_fraction > 0 and train_shards else "none"),
        "decode_s": metrics["data/decode_s"],
        "cache": cache,
        "bytes_written": metrics["data/bytes_written"],
    }
    log.info("rows: %s", report["counts"])
    if spec.video:
        log.info("video: %d frames per clip, pad policy %r, fps %s; consistency %s", spec.frames,
                 spec.pad, spec.fps or "uniform", consistency)
    return PreparedSplits(train_path, eval_path, counts, quarantine_path, spec.size, metrics,
                          report, cache, val_path)


def example_prompt(prepared_path: str) -> str:
    """The first usable pair's prompt ("" when it has none), for the model's input example."""
    table = storage.dataset(prepared_path).head(
        1, columns=["prompt"], filter=pads.field("status") == OK)
    values = table["prompt"].to_pylist()
    return (values[0] or "") if values else ""


def example_item(prepared_path: str, video: bool) -> bytes:
    """A real encoded item for the model's input example: the first usable pair's chosen
    image (from prepared data) as PNG, or its chosen clip as MP4 (GIF for odd sizes)."""
    import io

    import numpy as np
    import pyarrow.dataset as pads
    import ray.data  # noqa: F401  (registers Ray's tensor extension type with pyarrow)
    from PIL import Image


    table = storage.dataset(prepared_path).head(
        1, columns=["chosen_px"], filter=pads.field("status") == OK
    )
    px = table["chosen_px"].combine_chunks().to_numpy()[0]  # uint8 (3, S, S) or (3, T, S, S)
    if video:
        from ..media.video import encode_video

        frames = np.ascontiguousarray(px.transpose(1, 2, 3, 0))  # (T, S, S, 3)
        return encode_video(frames, "mp4" if px.shape[-1] % 2 == 0 else "gif")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(px.transpose(1, 2, 0))).save(buf, "PNG")
    return buf.getvalue()
