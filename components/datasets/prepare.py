"""The prepare step of ingest: run the decode graph once, write every row read with its
``status`` (ok / excluded / quarantined) and ``reason``, and count them.

The decoded pairs are written once, as Parquet with uint8 tensor columns, to the run's
directory (``prepared/<name>``); every epoch then streams them to the trainers without
decoding again (``data.cache=decoded``). With ``data.cache=none`` only the status table of
the training rows is written (training decodes again, streaming), and the eval and
validation pairs with their pixels. Counts come from the written status column, so nothing
is lost silently: rows read = used + quarantined + excluded, per split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from ..config import DataConfig
from ..runtime import storage
from .contract import OK, QUARANTINED, DataError, ReadPlan, TrainPairs
from .decode_graph import DecodeOptions, decode_stage
from .decoder import CONSISTENCY_COLUMNS, PROMPT_COLUMN
from .policy import EVAL_RULE, training_rule
from .quarantine import RowCounts, check_quarantine, write_quarantine
from .reading import SplitRule

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    path: str  # directory of Parquet files with all rows, decoded where usable
    counts: dict[str, RowCounts]  # by split: "train", "eval"
    image_sizes: dict[str, int]  # "WxH" of the original images -> count
    decode_s: float
    consistency: dict[str, dict[str, float]] = field(default_factory=dict)  # video, by split


def prepare(plan: ReadPlan, out_dir: str, opts: DecodeOptions, rule: SplitRule, *,
            in_train: TrainPairs | None = None, keep_pixels: bool = True) -> PreparedData:
    """Read, validate and decode the shards of ``plan`` with Ray Data; write all rows (of
    ``rule.only``'s split when set) to ``out_dir`` and count them.

    ``in_train``: the training pairs; a row that is one of them is excluded ("also in train").
    ``keep_pixels=False`` (``data.cache=none``): decode every row once, for its status, and
    write the status table only; training decodes again, streaming.
    Empty shards count as 0 rows read (``ReadPlan.of`` refuses data with no rows at all).
    """
    t0 = time.perf_counter()
    # The crash journal of the decode actors, next to the output (node-local).
    journal_dir = os.path.join(tempfile.gettempdir(), "visual-dpo-decode-journal",
                               hashlib.sha1(storage.normalize(out_dir).encode()).hexdigest()[:16])
    shutil.rmtree(journal_dir, ignore_errors=True)
    ds = decode_stage(plan, opts, rule, in_train=in_train, journal_dir=journal_dir)
    spec = opts.spec
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

    counts, sizes, written = _status_counts(out_dir)
    if rule.only is None and written != plan.rows:
        raise RuntimeError(  # an internal invariant, not a user error
            f"ingest wrote {written} rows but the shards hold {plan.rows}: rows were lost"
        )
    consistency: dict[str, dict[str, float]] = {}
    if spec.video:
        consistency = consistency_stats(storage.dataset(out_dir).to_table(
            columns=["split", "status", *CONSISTENCY_COLUMNS]))
    return PreparedData(out_dir, counts, dict(sizes.most_common(50)), decode_s, consistency)


def _status_counts(out_dir: str) -> tuple[dict[str, RowCounts], Counter[str], int]:
    """Counts by split (with reasons), the source image sizes and the rows written, from the
    status columns of prepared data, one record batch at a time: the driver holds one batch
    and the distinct (split, status, reason) groups, never a Python object per row."""
    counts: dict[str, RowCounts] = {}
    sizes: Counter[str] = Counter()
    written = 0
    for batch in storage.dataset(out_dir).to_batches(
            columns=["split", "status", "reason", "source_sizes"]):
        written += batch.num_rows
        t = pa.Table.from_batches([batch])
        groups = t.group_by(["split", "status", "reason"], use_threads=False).aggregate(
            [([], "count_all")])
        for sp, st, rs, n in zip(*(groups[c].to_pylist() for c in
                                   ("split", "status", "reason", "count_all")), strict=True):
            c = counts.setdefault(sp, RowCounts())
            c.read += n
            if st == OK:
                c.used += n
            elif st == QUARANTINED:
                c.quarantined += n
                key = rs.split(" (", 1)[0]
                c.reasons[key] = c.reasons.get(key, 0) + n
            else:
                c.excluded += n
                c.reasons[rs] = c.reasons.get(rs, 0) + n
        for v in pc.value_counts(t["source_sizes"]).to_pylist():
            if v["values"]:
                for size in v["values"].split(","):
                    sizes[size] += v["counts"]
    return counts, sizes, written


def train_pairs(prepared_path: str) -> TrainPairs:
    """The usable pairs of prepared training data (pair_id and content hash), read on the
    driver: only these were trained on, so only these make an eval pair leak."""
    ds = storage.dataset(prepared_path)

    def values(column: str):  # a batch at a time: TrainPairs keeps 8 bytes a pair, not strings
        for b in ds.to_batches(columns=[column], filter=pads.field("status") == OK):
            yield from b.column(0).to_pylist()

    return TrainPairs.of(values("pair_id"), values("content_hash"))


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


def prepare_splits(train: ReadPlan | None, evals: ReadPlan | None, run_dir: str,
                   opts: DecodeOptions, data: DataConfig, cache: str = "decoded") -> PreparedSplits:
    """Ingest train (and eval) data into ``run_dir/prepared`` and write the quarantine file.

    ``cache="none"``: every training row is decoded once for its status (quarantine, counts)
    but only the status table is written; the eval (and val) pairs are written with pixels,
    being small and scored more than once. Training then streams from the shards.

    Returns where everything is, the counts, the metrics and the data report; the caller logs
    them and then calls ``PreparedSplits.check`` (so a failing run still records its counts).
    No ``train``: evaluation only (the eval split).
    """
    opts = replace(opts, report_dir=storage.join(run_dir, "pinning"))
    prepared_dir = storage.join(run_dir, "prepared")
    train_splits = ("train", "val") if data.val_fraction > 0 else ("train",)
    streaming = cache == "none"
    has_eval = evals is not None
    pixel_copies: list[PreparedData] = []  # decoded eval/val pairs of rows counted elsewhere

    def decoded_split(split: str) -> str:
        px = prepare(train, storage.join(prepared_dir, split), opts,
                     training_rule(data, has_eval, only=split))
        pixel_copies.append(px)
        return px.path

    if train is None:  # evaluation only (python -m pipelines evaluate)
        assert evals is not None, "prepare_splits needs training or eval data"
        ev = prepare(evals, storage.join(prepared_dir, "eval"), opts, EVAL_RULE)
        prepared = [ev]
        counts = {"eval": ev.counts.get("eval", RowCounts())}
        train_path, eval_path = "", ev.path
    elif evals is not None:
        tr = prepare(train, storage.join(prepared_dir, "train"), opts,
                     training_rule(data, True), keep_pixels=not streaming)
        # A pair that is also in the training data would flatter the eval metrics and the
        # promotion gate: the eval read stage excludes it, so the counts still reconcile.
        ev = prepare(evals, storage.join(prepared_dir, "eval"), opts, EVAL_RULE,
                     in_train=train_pairs(tr.path))
        prepared = [tr, ev]
        counts = {s: tr.counts.get(s, RowCounts()) for s in train_splits}
        counts["eval"] = ev.counts.get("eval", RowCounts())
        train_path, eval_path = tr.path, ev.path
    else:
        both = prepare(train, storage.join(prepared_dir, "all"), opts,
                       training_rule(data, False), keep_pixels=not streaming)
        prepared = [both]
        counts = {s: both.counts.get(s, RowCounts()) for s in (*train_splits, "eval")}
        train_path = eval_path = both.path
        if streaming:
            eval_path = decoded_split("eval")
    val_path = train_path if data.val_fraction > 0 and train is not None else ""
    if streaming and val_path:
        val_path = decoded_split("val")

    quarantine_path = storage.join(run_dir, "quarantine.parquet")
    n_quarantined = write_quarantine(prepared, quarantine_path)
    written = prepared + pixel_copies
    metrics, consistency = _metrics(counts, prepared, written, streaming)
    report = _data_report(counts, prepared, n_quarantined, metrics, consistency, opts, data,
                          has_eval, has_train=train is not None, cache=cache)
    log.info("rows: %s", report["counts"])
    if opts.spec.video:
        log.info("video: %d frames per clip, pad policy %r, fps %s; consistency %s", opts.spec.frames,
                 opts.spec.pad, opts.spec.fps or "uniform", consistency)
    return PreparedSplits(train_path, eval_path, counts, quarantine_path, opts.spec.size, metrics,
                          report, cache, val_path)


def _data_report(counts: dict[str, RowCounts], prepared: list[PreparedData], n_quarantined: int,
                 metrics: dict[str, float], consistency: dict[str, dict[str, float]],
                 opts: DecodeOptions, data: DataConfig, has_eval: bool, has_train: bool,
                 cache: str) -> dict[str, Any]:
    """The prepare step's data report: counts, source sizes, media contract, splits, cache."""
    sizes: Counter[str] = Counter()
    for p in prepared:
        sizes.update(p.image_sizes)
    return {
        "counts": {s: c.as_dict() for s, c in counts.items()},
        "quarantined_total": n_quarantined,
        "source_image_sizes": dict(sizes.most_common(50)),
        "decoded_shape": list(opts.spec.shape),
        # The tokenizer itself (megabytes for a real CLIP) is in the registered model, not here.
        "media": {k: (f"<{len(v)} characters>" if k == "tokenizer" and v else v)
                  for k, v in opts.spec.to_dict().items()},
        "temporal_consistency": consistency,
        "split": "separate eval data" if has_eval
        else f"hash of pair_id, eval_fraction={data.eval_fraction}",
        "validation": (f"hash of pair_id (salted), val_fraction={data.val_fraction} of the "
                       "training pairs" if data.val_fraction > 0 and has_train else "none"),
        "decode_s": metrics["data/decode_s"],
        "cache": cache,
        "bytes_written": metrics["data/bytes_written"],
    }


def _metrics(counts: dict[str, RowCounts], prepared: list[PreparedData],
             written: list[PreparedData], streaming: bool
             ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The prepare step's MLflow metrics (``rows/<split>/<count>``, ``data/*``) and the clips'
    temporal consistency by split."""
    metrics: dict[str, float] = {}
    for split, c in counts.items():
        for k in ("read", "used", "quarantined", "excluded"):
            metrics[f"rows/{split}/{k}"] = getattr(c, k)
    metrics["data/decode_s"] = sum(p.decode_s for p in written)
    metrics["data/streaming"] = float(streaming)
    metrics["data/bytes_written"] = float(sum(storage.total_size(p.path) for p in written))
    consistency: dict[str, dict[str, float]] = {}
    for p in prepared:
        consistency.update(p.consistency)
    for split, st in consistency.items():
        for k in ("chosen_mean_c", "rejected_mean_c", "chosen_more_consistent"):
            metrics[f"data/{split}/{k}"] = st[k]
    return metrics, consistency
