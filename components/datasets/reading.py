"""The read stage of ingest: Parquet row groups -> canonical rows, each with its split.

Runs as Ray Data tasks (``decode_graph.py``); plain functions of a ``ReadPlan`` unit, so they
are tested without Ray. Output blocks are typed (``CANONICAL_SCHEMA``) so all-null columns
stay typed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .contract import ReadUnit, Shard, TrainPairs, canonical_rows, encoded_size, in_validation


@dataclass(frozen=True)
class SplitRule:
    """Which split each row read goes to; the read stage applies it (``policy.py`` builds it
    from the config)."""

    eval_fraction: float | None = None
    """Hash split of ``pair_id`` into train / eval with this eval share; None: ``fixed``."""
    fixed: str | None = None
    """Every row goes to this split (``--eval`` data: "eval"; training data beside it: "train")."""
    val_fraction: float = 0.0
    """Share of the training rows (a second, salted hash of pair_id) moved to split "val"."""
    only: str | None = None
    """Keep only the rows of this split (decode just what a stage needs)."""


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




FOOTER_CACHE_SHARDS = 4096  # footers kept per read process: ~4 KB each for 4 row groups
_footers: OrderedDict[tuple[str, int, int], pq.FileMetaData] = OrderedDict()


def shard_footer(shard: Shard, f: pa.NativeFile) -> pq.FileMetaData:
    """The Parquet footer of ``shard`` (open as ``f``), parsed once per read process and kept
    by URI, size and mtime: a shard's row groups are separate read units, read again every
    streaming epoch, and on an object store each footer parse is a request of its own. A
    replaced file (other size or mtime) is parsed again."""
    key = (shard.uri, shard.size, shard.mtime_ns)
    md = _footers.get(key)
    if md is None:
        md = pq.read_metadata(f)
        _footers[key] = md
        if len(_footers) > FOOTER_CACHE_SHARDS:
            _footers.popitem(last=False)
    else:
        _footers.move_to_end(key)
    return md


def read_unit(batch: dict[str, np.ndarray], units: list[ReadUnit], rule: SplitRule, ties: str,
              max_bytes: int, in_train: TrainPairs | None) -> Iterator[pa.Table]:
    """Ray Data read stage: one ReadUnit index per input row -> canonical rows in slices,
    each with its split (``rule``); rows of other splits are dropped here when ``rule.only``
    is set (here, not a separate filter task that needs its own CPU)."""
    for i in batch["unit"]:
        unit = units[int(i)]
        with unit.shard.filesystem.open_input_file(unit.shard.path) as f:
            table = pq.ParquetFile(f, metadata=shard_footer(unit.shard, f)).read_row_group(
                unit.row_group)
        rows = canonical_rows(unit, table, rule.eval_fraction, ties, max_bytes=max_bytes,
                              in_train=in_train)
        rows = _with_split(rows, rule.fixed, rule.val_fraction)
        if rule.only is not None:
            rows = (r for r in rows if r["split"] == rule.only)
        yield from canonical_tables(rows, unit.frame_lists)


def _with_split(rows: Iterator[dict[str, Any]], split: str | None,
                val_fraction: float) -> Iterator[dict[str, Any]]:
    for row in rows:
        if split is not None:
            row["split"] = split
        if val_fraction and row["split"] == "train" and in_validation(row["pair_id"], val_fraction):
            row["split"] = "val"
        yield row
