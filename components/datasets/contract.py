"""The data contract: finding shards, recognising their layout, mapping rows to canonical pairs.

Canonical image layout, one row per pair:
    pair_id  string           unique id of the pair (required, non-null)
    prompt   string, nullable (optional column)
    chosen   binary           encoded JPEG/PNG/WebP of the preferred image
    rejected binary           encoded image of the other one
Any other column is kept as metadata (a JSON string) and ignored by training.

Pick-a-Pic layout: ``jpg_0``, ``jpg_1`` binary, ``label_0``, ``label_1`` float64 (1/0; 0.5/0.5
is a tie), ``caption``, ``ranking_id`` and more. The image with the larger label is chosen;
ties are excluded by policy and counted; ``pair_id`` is ``ranking_id`` when present, else a
content hash of both images.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

CANONICAL_REQUIRED = ("pair_id", "chosen", "rejected")
PICKAPIC_REQUIRED = ("jpg_0", "jpg_1", "label_0", "label_1")

# Status of each row after ingest; every row read ends in exactly one of these.
OK, EXCLUDED, QUARANTINED = "ok", "excluded", "quarantined"


class DataError(ValueError):
    """A problem with the user's input data that stops the run; says what to do."""


@dataclass(frozen=True)
class Shard:
    path: str  # as the filesystem knows it (no scheme for local files)
    uri: str  # as the user can find it again
    size: int
    mtime_ns: int
    filesystem: pafs.FileSystem


def _is_uri(spec: str) -> bool:
    return "://" in spec and not spec.startswith("file://")


def resolve_shards(specs: list[str]) -> list[Shard]:
    """Files, directories (all ``*.parquet`` below) or globs; local paths or pyarrow URIs."""
    shards: list[Shard] = []
    for spec in specs:
        found = _resolve_one(spec)
        if not found:
            raise DataError(
                f"{spec}: no Parquet shards found; pass a .parquet file, a directory holding "
                "*.parquet files, or a glob such as 'data/train-*.parquet'"
            )
        shards.extend(found)
    seen: set[str] = set()
    unique = []
    for s in shards:
        if s.uri not in seen:
            seen.add(s.uri)
            unique.append(s)
    return unique


def _resolve_one(spec: str) -> list[Shard]:
    if _is_uri(spec):
        scheme = spec.split("://", 1)[0]
        has_glob = any(c in spec for c in "*?[")
        base = spec.split("*", 1)[0].rsplit("/", 1)[0] if has_glob else spec
        fs, base_path = pafs.FileSystem.from_uri(base)
        info = fs.get_file_info(base_path)
        if info.type == pafs.FileType.File and not has_glob:
            infos = [info]
        elif info.type == pafs.FileType.NotFound:
            return []
        else:
            infos = fs.get_file_info(pafs.FileSelector(base_path, recursive=True))
            pattern = spec.split("://", 1)[1] if has_glob else None
            infos = [
                i
                for i in infos
                if i.type == pafs.FileType.File
                and (fnmatch.fnmatch(i.path, pattern) if pattern else i.path.endswith(".parquet"))
            ]
        return [
            Shard(i.path, f"{scheme}://{i.path}", i.size, i.mtime_ns or 0, fs)
            for i in sorted(infos, key=lambda i: i.path)
        ]
    local = spec.removeprefix("file://")
    if os.path.isdir(local):
        paths = sorted(glob.glob(os.path.join(local, "**", "*.parquet"), recursive=True))
    elif any(c in local for c in "*?["):
        paths = sorted(glob.glob(local, recursive=True))
    elif os.path.isfile(local):
        paths = [local]
    else:
        return []
    fs = pafs.LocalFileSystem()
    out = []
    for p in paths:
        st = os.stat(p)
        ap = os.path.abspath(p)
        out.append(Shard(ap, ap, st.st_size, st.st_mtime_ns, fs))
    return out


def fingerprint(shards: list[Shard]) -> str:
    """Identity of a dataset: shard URIs + sizes + mtimes (no content read)."""
    h = hashlib.sha256()
    for s in shards:
        h.update(f"{s.uri}\0{s.size}\0{s.mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def detect_layout(schema: pa.Schema, uri: str, requested: str = "auto") -> str:
    """``canonical`` or ``pickapic`` from a shard's schema; errors name the file and columns."""
    names = set(schema.names)
    missing_c = [c for c in CANONICAL_REQUIRED if c not in names]
    missing_p = [c for c in PICKAPIC_REQUIRED if c not in names]
    if requested == "canonical" or (requested == "auto" and not missing_c):
        if missing_c:
            raise DataError(
                f"{uri}: not in the canonical layout, missing columns {missing_c}; "
                f"it has {sorted(names)}. Rename the columns or pass --layout pickapic."
            )
        return "canonical"
    if requested == "pickapic" or (requested == "auto" and not missing_p):
        if missing_p:
            raise DataError(
                f"{uri}: not in the Pick-a-Pic layout, missing columns {missing_p}; "
                f"it has {sorted(names)}. Rename the columns or pass --layout canonical."
            )
        return "pickapic"
    raise DataError(
        f"{uri}: matches no known layout. Canonical needs {list(CANONICAL_REQUIRED)} "
        f"(missing {missing_c}); Pick-a-Pic needs {list(PICKAPIC_REQUIRED)} (missing "
        f"{missing_p}). See 'The data contract' in README.md."
    )


def split_of(pair_id: str, eval_fraction: float) -> str:
    """Deterministic train/eval split by a hash of pair_id: same answer on every machine."""
    bucket = int.from_bytes(hashlib.sha256(pair_id.encode("utf-8")).digest()[:8], "big")
    return "eval" if bucket / 2**64 < eval_fraction else "train"


def _id_column(layout: str, names: list[str]) -> str | None:
    if layout == "canonical":
        return "pair_id"
    return "ranking_id" if "ranking_id" in names else None


@dataclass(frozen=True)
class ReadUnit:
    """One Parquet row group of one shard: the unit of parallel reading."""

    shard: Shard
    layout: str
    row_group: int
    row_offset: int  # index of the row group's first row within the shard
    duplicate_rows: tuple[int, ...]  # shard row indices whose pair_id was already seen
    frame_lists: bool = False  # canonical video: each side is list<binary> of encoded frames


def plan_reads(shards: list[Shard], layout: str) -> tuple[list[ReadUnit], int]:
    """Read each footer (and only the id column, to find duplicates) on the driver.

    Returns the read units and the total number of rows, counted from Parquet metadata so the
    counting invariant is checked against an independent number.
    """
    units: list[ReadUnit] = []
    total = 0
    seen: set[str] = set()
    for shard in shards:
        try:
            with shard.filesystem.open_input_file(shard.path) as f:
                pf = pq.ParquetFile(f)
                schema = pf.schema_arrow
                shard_layout = detect_layout(schema, shard.uri, layout)
                id_col = _id_column(shard_layout, schema.names)
                frame_lists = shard_layout == "canonical" and all(
                    pa.types.is_list(schema.field(c).type) or pa.types.is_large_list(schema.field(c).type)
                    for c in ("chosen", "rejected"))
                ids = pf.read(columns=[id_col]).column(0).to_pylist() if id_col else []
                md = pf.metadata
        except DataError:
            raise
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{shard.uri}: cannot read as Parquet ({e}); remove or re-export it") from None
        dup_rows = []
        for i, v in enumerate(ids):
            if v is None:
                continue
            key = str(v)
            if key in seen:
                dup_rows.append(i)
            seen.add(key)
        offset = 0
        for rg in range(md.num_row_groups):
            n = md.row_group(rg).num_rows
            dups = tuple(r for r in dup_rows if offset <= r < offset + n)
            units.append(ReadUnit(shard, shard_layout, rg, offset, dups, frame_lists))
            offset += n
        total += md.num_rows
    return units, total


def row_group_units(shards: list[Shard]) -> list[tuple[Shard, int, int]]:
    """``(shard, row_group, first_row)`` for every row group: units of parallel reading."""
    units = []
    for shard in shards:
        with shard.filesystem.open_input_file(shard.path) as f:
            md = pq.ParquetFile(f).metadata
        offset = 0
        for rg in range(md.num_row_groups):
            units.append((shard, rg, offset))
            offset += md.row_group(rg).num_rows
    return units


def _meta_json(row: dict[str, Any], skip: set[str]) -> str:
    out = {}
    for k, v in row.items():
        if k in skip or isinstance(v, (bytes, bytearray)):
            continue
        out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
    return json.dumps(out, sort_keys=True)


def _content_id(a: bytes | None, b: bytes | None) -> str:
    h = hashlib.sha256()
    h.update(a or b"")
    h.update(b"\0")
    h.update(b or b"")
    return h.hexdigest()[:32]


def _optional_float(row: dict[str, Any], key: str, default: float) -> float | None:
    v = row.get(key, default)
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def canonical_rows(
    unit: ReadUnit, table: pa.Table, eval_fraction: float | None, ties: str = "drop"
) -> Iterator[dict[str, Any]]:
    """Map one row group to canonical rows with provenance, split and a status/reason.

    ``eval_fraction=None`` means the split is fixed by the caller (the row's split is set
    later); otherwise it is the hash split. ``ties``: ``drop`` excludes 0.5/0.5 pairs (and
    reads 0.7/0.3 as a hard label); ``soft`` keeps ties as target 0.5 and uses non-binary
    labels as soft targets. ``target`` is the probability that ``chosen`` is preferred.
    Optional canonical columns ``margin`` and ``weight`` are carried per pair.
    """
    dups = set(unit.duplicate_rows)
    for i, row in enumerate(table.to_pylist()):
        idx = unit.row_offset + i
        status, reason = OK, ""
        target = 1.0
        margin = _optional_float(row, "margin", 0.0)
        weight = _optional_float(row, "weight", 1.0)
        if unit.layout == "canonical":
            pid, chosen, rejected = row.get("pair_id"), row.get("chosen"), row.get("rejected")
            prompt = row.get("prompt")
            skip = {"pair_id", "prompt", "chosen", "rejected"}
        else:
            l0, l1 = row.get("label_0"), row.get("label_1")
            rid = row.get("ranking_id")
            pid = str(rid) if rid is not None else _content_id(row.get("jpg_0"), row.get("jpg_1"))
            prompt = row.get("caption")
            skip = {"jpg_0", "jpg_1", "caption"}
            if l0 is None or l1 is None or not (0 <= l0 <= 1 and 0 <= l1 <= 1):
                status, reason = QUARANTINED, f"invalid labels label_0={l0!r} label_1={l1!r}"
                chosen, rejected = row.get("jpg_0"), row.get("jpg_1")
            elif l0 == l1 and ties == "drop":
                status, reason = EXCLUDED, "tie"
                chosen, rejected = row.get("jpg_0"), row.get("jpg_1")
            elif l0 >= l1:
                chosen, rejected = row.get("jpg_0"), row.get("jpg_1")
                target = l0 / (l0 + l1) if ties == "soft" and l0 + l1 > 0 else 1.0
            else:
                chosen, rejected = row.get("jpg_1"), row.get("jpg_0")
                target = l1 / (l0 + l1) if ties == "soft" else 1.0
        if pid is None:
            pid = f"{unit.shard.uri}#{idx}"
            if status == OK:
                status, reason = QUARANTINED, "null pair_id"
        pid = str(pid)
        if status == OK and idx in dups:
            status, reason = EXCLUDED, "duplicate pair_id"
        if status == OK and (margin is None or weight is None or weight < 0):
            status, reason = QUARANTINED, (
                f"invalid margin/weight margin={row.get('margin')!r} weight={row.get('weight')!r}"
            )
        if status == OK and (chosen is None or rejected is None):
            side = "chosen" if chosen is None else "rejected"
            status, reason = QUARANTINED, f"null {side} image"
        yield {
            "pair_id": pid,
            "prompt": None if prompt is None else str(prompt),
            "chosen": chosen if status == OK else None,
            "rejected": rejected if status == OK else None,
            "shard": unit.shard.uri,
            "row": idx,
            "split": split_of(pid, eval_fraction) if eval_fraction is not None else "",
            "status": status,
            "reason": reason,
            "meta": _meta_json(row, skip),
            "target": target,
            "margin": margin if margin is not None else 0.0,
            "weight": weight if weight is not None else 1.0,
        }
