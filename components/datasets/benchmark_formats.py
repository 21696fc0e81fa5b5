"""Public preference benchmarks in their published layouts, converted without loss into the
canonical contract (contract.py), so ``evaluate`` scores them like any other eval data.

- ``hpdv2``: HPDv2's test annotations (tgxs002/HPSv2, ``test.json`` as ``hpsv2/evaluation.py``
  ``evaluate_rank`` reads it through ``RankingDataset``): a JSON list of ``{"prompt",
  "image_path": [...], "rank": [...]}``, the images relative to an image folder; a lower rank
  is preferred. Every pair ``(i, j)`` of one prompt's images becomes one canonical pair (the
  better-ranked image chosen; equal ranks a tie, ``target`` 0.5), with the prompt's
  ``group_id`` kept so the ranking accuracy of HPSv2's protocol (per prompt, then averaged) is
  computed from the pairs (evaluation/benchmarks.py).
- ``videogen-rewardbench``: VideoGen-RewardBench's ``videogen-rewardbench.csv``
  (KlingTeam/VideoGen-RewardBench; KwaiVGI/VideoAlign ``eval_videogen_rewardbench.py``):
  ``path_A``, ``path_B``, ``prompt`` and an ``A`` / ``B`` / ``same`` label per dimension
  (``VQ``, ``MQ``, ``TA``, ``Overall``), the clips relative to the CSV's folder. ``Overall``
  orients the pair (``same``: a tie, ``target`` 0.5); every column of the row, the other
  dimensions' labels included, is kept as metadata with the side that was chosen.

Pick-a-Pic's test split needs no conversion (its Parquet layout is ``pickapic``); its tie
protocol is the evaluation's (``eval.tie_validation``).

Nothing is lost silently: each candidate pair read (an HPDv2 prompt with ``n`` images has
``n (n - 1) / 2``; a VideoGen-RewardBench row has one) is written or excluded with a reason,
and ``Conversion.read == pairs + sum(excluded)``. Media bytes are copied as they are, never
re-encoded.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..runtime import storage
from .contract import DataError

HPDV2, VIDEOGEN = "hpdv2", "videogen-rewardbench"
BENCHMARK_LAYOUTS = (HPDV2, VIDEOGEN)
VIDEOGEN_DIMENSIONS = ("VQ", "MQ", "TA", "Overall")
"""VideoGen-RewardBench's label columns; ``Overall`` orients the canonical pair."""
VIDEOGEN_LABELS = ("A", "B", "same")
ROWS_PER_GROUP = 64  # pairs per Parquet row group (each pair holds two encoded items)

_HPDV2_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("prompt", pa.string()), ("chosen", pa.binary()),
    ("rejected", pa.binary()), ("target", pa.float64()), ("group_id", pa.string()),
    ("rank_chosen", pa.float64()), ("rank_rejected", pa.float64()),
    ("image_chosen", pa.string()), ("image_rejected", pa.string()),
])


@dataclass
class Conversion:
    """What converting one benchmark file produced, with every candidate pair accounted for."""

    layout: str
    source: str
    path: str
    """The canonical Parquet file written."""
    read: int = 0
    """Candidate pairs read: ``n (n - 1) / 2`` per HPDv2 prompt, one per VideoGen row."""
    pairs: int = 0
    """Written (ties included)."""
    ties: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    """Reason -> candidate pairs not written."""
    groups: int = 0
    """HPDv2: prompts with at least one pair written."""
    entries: int = 0
    """JSON entries / CSV rows read."""

    def check(self) -> None:
        total = self.pairs + sum(self.excluded.values())
        if total != self.read:  # an internal invariant, not a user error
            raise RuntimeError(f"{self.source}: {self.read} candidate pairs read but "
                               f"{self.pairs} written + {total - self.pairs} excluded")

    def metrics(self) -> dict[str, float]:
        """``benchmark/*`` counts for MLflow."""
        out = {"benchmark/entries": float(self.entries), "benchmark/read": float(self.read),
               "benchmark/pairs": float(self.pairs), "benchmark/ties": float(self.ties)}
        if self.layout == HPDV2:
            out["benchmark/groups"] = float(self.groups)
        for reason, n in self.excluded.items():
            out[f"benchmark/excluded/{reason.replace(' ', '_')}"] = float(n)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"layout": self.layout, "source": self.source, "path": self.path,
                "entries": self.entries, "read": self.read, "pairs": self.pairs,
                "ties": self.ties, "excluded": dict(self.excluded), "groups": self.groups}


# --- Which layout -----------------------------------------------------------------------------

def sniff_layout(path: str) -> str | None:
    """The benchmark layout of one annotation file from its content: a JSON list whose entries
    have ``image_path`` and ``rank`` (``hpdv2``), a CSV with ``path_A`` and ``path_B``
    (``videogen-rewardbench``); None for anything else (Parquet shards, directories)."""
    lower = path.lower()
    if not lower.endswith((".json", ".csv")) or not storage.exists(path):
        return None
    if lower.endswith(".csv"):
        header = next(csv.reader(io.StringIO(_text(path).split("\n", 1)[0])), [])
        return VIDEOGEN if {"path_A", "path_B"} <= set(header) else None
    try:
        entries = json.loads(_text(path))
    except ValueError:
        return None
    first = entries[0] if isinstance(entries, list) and entries else None
    return HPDV2 if isinstance(first, dict) and {"image_path", "rank"} <= set(first) else None


def benchmark_layout(paths: list[str], layout: str) -> str | None:
    """The benchmark layout of ``--data`` (``layout`` from ``data.layout``): the named one, or
    with ``auto`` the one every path is in; None when the paths are Parquet shards."""
    if layout in BENCHMARK_LAYOUTS:
        return layout
    if layout != "auto":
        return None
    found = {p: sniff_layout(p) for p in paths}
    kinds = set(found.values())
    if kinds == {None}:
        return None
    if len(kinds) > 1:
        listed = ", ".join(f"{p} ({k or 'Parquet shards'})" for p, k in found.items())
        raise DataError(f"--data mixes layouts: {listed}; evaluate one benchmark at a time")
    return kinds.pop()


def _text(path: str) -> str:
    return storage.read_bytes(path).decode("utf-8-sig")


def _media_root(annotation: str, media_root: str, first_item: str | None) -> str:
    """Where the annotation's relative paths point: ``media_root`` when given; else the
    annotation's folder, or the folder named like the file beside it (HPDv2: ``test.json`` and
    ``test/``) when that is where the first item is."""
    if media_root:
        return media_root
    folder = os.path.dirname(annotation) or "."
    beside = storage.join(folder, os.path.splitext(os.path.basename(annotation))[0])
    if first_item and not storage.exists(storage.join(folder, first_item)) and storage.exists(
            storage.join(beside, first_item)):
        return beside
    return folder


def _read_media(root: str, relative: Any) -> bytes | None:
    if not isinstance(relative, str) or not relative:
        return None
    location = relative if os.path.isabs(relative) or "://" in relative else storage.join(
        root, relative)
    return storage.read_bytes(location) if storage.exists(location) else None


# --- HPDv2 ------------------------------------------------------------------------------------

def _hpdv2_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "entry is not an object"
    if not isinstance(entry.get("prompt"), str):
        return "no prompt"
    paths, rank = entry.get("image_path"), entry.get("rank")
    if not isinstance(paths, list) or not isinstance(rank, list):
        return "no image_path or rank list"
    if len(paths) != len(rank):
        return "rank and image_path differ in length"
    if not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in rank):
        return "rank is not numbers"
    return None


def hpdv2_rows(entries: list[Any], root: str, source: str, conv: Conversion
               ) -> Iterator[dict[str, Any]]:
    """Canonical rows of HPDv2 ranking entries, all pairs of each prompt's images; counts
    into ``conv`` every candidate pair, written or excluded."""
    stem = os.path.splitext(os.path.basename(source))[0]
    excluded: Counter[str] = Counter()
    for index, entry in enumerate(entries):
        conv.entries += 1
        paths = entry.get("image_path") if isinstance(entry, dict) else None
        n = len(paths) if isinstance(paths, list) else 0
        candidates = n * (n - 1) // 2
        conv.read += candidates
        problem = _hpdv2_problem(entry)
        if problem:
            excluded[problem] += candidates
            continue
        media = [_read_media(root, p) for p in paths]
        group = f"{stem}:{index}"
        written = 0
        for a in range(n):
            for b in range(a + 1, n):
                if media[a] is None or media[b] is None:
                    excluded["missing image file"] += 1
                    continue
                ra, rb = float(entry["rank"][a]), float(entry["rank"][b])
                c, r = (b, a) if rb < ra else (a, b)  # the lower rank is preferred
                written += 1
                yield {"pair_id": f"hpdv2:{group}:{a}-{b}", "prompt": entry["prompt"],
                       "chosen": media[c], "rejected": media[r],
                       "target": 0.5 if ra == rb else 1.0, "group_id": group,
                       "rank_chosen": float(entry["rank"][c]),
                       "rank_rejected": float(entry["rank"][r]),
                       "image_chosen": paths[c], "image_rejected": paths[r]}
        conv.groups += written > 0
    conv.excluded.update(excluded)


# --- VideoGen-RewardBench ---------------------------------------------------------------------

def videogen_rows(rows: list[dict[str, str]], root: str, source: str, conv: Conversion
                  ) -> Iterator[dict[str, Any]]:
    """Canonical rows of VideoGen-RewardBench annotation rows (one pair each), oriented by
    ``Overall``; every CSV column is kept, with ``chosen_side`` (``A`` or ``B``)."""
    stem = os.path.splitext(os.path.basename(source))[0]
    excluded: Counter[str] = Counter()
    for index, row in enumerate(rows):
        conv.entries += 1
        conv.read += 1
        label = (row.get("Overall") or "").strip()
        if not label:
            excluded["no Overall label"] += 1
            continue
        if label not in VIDEOGEN_LABELS:
            excluded["unknown Overall label"] += 1
            continue
        a, b = _read_media(root, row.get("path_A")), _read_media(root, row.get("path_B"))
        if a is None or b is None:
            excluded["missing video file"] += 1
            continue
        side = "B" if label == "B" else "A"
        chosen, rejected = (b, a) if side == "B" else (a, b)
        meta = {k: v for k, v in row.items() if k not in ("prompt",)}
        yield {"pair_id": f"videogen:{stem}:{index}", "prompt": row.get("prompt") or "",
               "chosen": chosen, "rejected": rejected,
               "target": 0.5 if label == "same" else 1.0, "chosen_side": side, **meta}
    conv.excluded.update(excluded)


def _videogen_table(path: str) -> tuple[list[dict[str, str]], list[str]]:
    reader = csv.DictReader(io.StringIO(_text(path)))
    columns = list(reader.fieldnames or [])
    missing = [c for c in ("path_A", "path_B", "prompt", "Overall") if c not in columns]
    if missing:
        raise DataError(f"{path}: not a VideoGen-RewardBench CSV, missing columns {missing}; "
                        f"it has {columns}. Its columns are path_A, path_B, prompt and the "
                        f"labels {', '.join(VIDEOGEN_DIMENSIONS)} (A, B or same)")
    clash = [c for c in columns if c in ("pair_id", "chosen", "rejected", "target",
                                         "chosen_side", "margin", "weight")]
    if clash:
        raise DataError(f"{path}: columns {clash} would overwrite the canonical columns; "
                        "rename them")
    return list(reader), columns


# --- Writing ----------------------------------------------------------------------------------

def convert(path: str, layout: str, out: str, media_root: str = "") -> Conversion:
    """Convert the annotation file ``path`` (and the media it names) into one canonical Parquet
    file ``out``; returns the counts (checked: read = written + excluded)."""
    conv = Conversion(layout, path, out)
    if layout == HPDV2:
        try:
            entries = json.loads(_text(path))
        except ValueError as e:
            raise DataError(f"{path}: not JSON ({e}); HPDv2's test annotations are a JSON "
                            "list of {prompt, image_path, rank}") from e
        if not isinstance(entries, list):
            raise DataError(f"{path}: HPDv2's test annotations are a JSON list, got "
                            f"{type(entries).__name__}")
        first = next((e["image_path"][0] for e in entries if isinstance(e, dict)
                      and isinstance(e.get("image_path"), list) and e["image_path"]), None)
        rows = hpdv2_rows(entries, _media_root(path, media_root, first), path, conv)
        schema = _HPDV2_SCHEMA
    elif layout == VIDEOGEN:
        table, columns = _videogen_table(path)
        first = table[0].get("path_A") if table else None
        rows = videogen_rows(table, _media_root(path, media_root, first), path, conv)
        extra = [c for c in columns if c != "prompt"]
        schema = pa.schema([("pair_id", pa.string()), ("prompt", pa.string()),
                            ("chosen", pa.binary()), ("rejected", pa.binary()),
                            ("target", pa.float64()), ("chosen_side", pa.string())]
                           + [(c, pa.string()) for c in extra])
    else:
        raise ValueError(f"unknown benchmark layout {layout!r}; one of {BENCHMARK_LAYOUTS}")
    _write(rows, schema, out, conv)
    conv.check()
    if conv.pairs == 0:
        reasons = json.dumps(conv.excluded)
        raise DataError(f"{path}: no pair could be converted ({conv.read} candidate pairs; "
                        f"excluded: {reasons}). Check the media folder (eval.media_root).")
    return conv


def _write(rows: Iterator[dict[str, Any]], schema: pa.Schema, out: str,
           conv: Conversion) -> None:
    fs, fs_path = storage.filesystem(out)
    parent = fs_path.rsplit("/", 1)[0]
    if parent and parent != fs_path:
        fs.create_dir(parent, recursive=True)
    batch: list[dict[str, Any]] = []
    with fs.open_output_stream(fs_path) as f, pq.ParquetWriter(f, schema) as writer:
        for row in rows:
            conv.pairs += 1
            conv.ties += row["target"] == 0.5
            batch.append(row)
            if len(batch) == ROWS_PER_GROUP:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch = []
        if batch or conv.pairs == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))


def convert_all(paths: list[str], layout: str, out_dir: str,
                media_root: str = "") -> list[Conversion]:
    """``convert`` each annotation file into ``out_dir`` (``<index>-<name>.parquet``)."""
    out = []
    for i, path in enumerate(paths):
        name = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
        out.append(convert(path, layout, storage.join(out_dir, f"{i:03d}-{name}.parquet"),
                           media_root))
    return out
