"""The data contract: finding shards, recognising their layout, mapping rows to canonical pairs.

Canonical image layout, one row per pair:
    pair_id  string           unique id of the pair (required, non-null)
    prompt   string, nullable (optional column)
    chosen   binary           encoded JPEG/PNG/WebP of the preferred image
    rejected binary           encoded image of the other one
    target   float, optional  P(chosen is preferred), in [0, 1]; default 1
    margin   float, optional  finite; default 0
    weight   float, optional  finite, >= 0; default 1
Any other column is kept as metadata (a JSON string) and ignored by training.

Pick-a-Pic layout: ``jpg_0``, ``jpg_1`` binary, ``label_0``, ``label_1`` float64 (1/0; 0.5/0.5
is a tie), ``caption``, ``ranking_id`` and more. The image with the larger label is chosen;
ties are excluded by policy and counted; ``pair_id`` is ``ranking_id`` when present, else a
content hash of both images.

Hostile input is stopped at one of two gates. A shard whose *schema* is wrong (a missing or
wrongly typed column, an empty dataset) fails the run in ``plan_reads``, from the footers, on
the driver, before Ray starts. A *row* that is wrong (a null, NaN or out-of-range number, a
null image, a cell over the byte limit) becomes a quarantined row with its reason in
``canonical_rows``, so one bad row never stops a run and every row read is counted.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..runtime import storage

CANONICAL_REQUIRED = ("pair_id", "chosen", "rejected")
PICKAPIC_REQUIRED = ("jpg_0", "jpg_1", "label_0", "label_1")

# Status of each row after ingest; every row read ends in exactly one of these.
OK, EXCLUDED, QUARANTINED = "ok", "excluded", "quarantined"
log = logging.getLogger(__name__)


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
    """Files, directories (all ``*.parquet`` below) or globs; local paths or pyarrow URIs.
    Each file once: a local file by its real path (symbolic links resolved), a file that two
    specs name once, with a warning."""
    first: dict[str, str] = {}
    unique, again = [], []
    for spec in specs:
        found = _resolve_one(spec)
        if not found:
            raise DataError(
                f"{spec}: no Parquet shards found; pass a .parquet file, a directory holding "
                "*.parquet files, or a glob such as 'data/train-*.parquet'"
            )
        for s in found:
            if s.uri in first:
                again.append(f"{s.uri} (by {spec} and {first[s.uri]})")
            else:
                first[s.uri] = spec
                unique.append(s)
    if again:
        log.warning("%d shard(s) named more than once, each read once: %s", len(again),
                    "; ".join(again[:5]) + ("; ..." if len(again) > 5 else ""))
    return unique


def _resolve_one(spec: str) -> list[Shard]:
    try:
        return _list_one(spec)
    except OSError as e:  # an unreachable endpoint, a bucket without access, a vanished file
        raise DataError(f"{spec}: cannot list shards ({type(e).__name__}: {e}); check the "
                        "path, AWS_ENDPOINT_URL and the credentials in the environment") from e


def _list_one(spec: str) -> list[Shard]:
    if _is_uri(spec):
        scheme = spec.split("://", 1)[0]
        has_glob = any(c in spec for c in "*?[")
        base = spec.split("*", 1)[0].rsplit("/", 1)[0] if has_glob else spec
        fs, base_path = storage.filesystem(base)  # AWS_ENDPOINT_URL applies to s3://
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
    repeats: list[str] = []
    if os.path.isdir(local):
        paths, repeats = storage.walk_local(local)
        paths = [p for p in paths if p.endswith(".parquet")]
    elif "**" in local:  # glob's own ** goes round a symbolic link cycle (exponentially)
        parts = os.path.abspath(local).split(os.sep)
        fixed = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
        base = os.sep.join(parts[:fixed]) or os.sep
        paths, repeats = storage.walk_local(base) if os.path.isdir(base) else ([], [])
        paths = [p for p in paths if storage.glob_matches(os.sep.join(parts), p)]
    elif any(c in local for c in "*?["):
        paths = [p for p in sorted(glob.glob(local)) if not os.path.isdir(p)]
    elif os.path.isfile(local) or os.path.islink(local):  # a dangling link: said below
        paths = [local]
    else:
        return []
    return _local_shards(spec, paths, repeats)


def _local_shards(spec: str, paths: list[str], repeats: list[str]) -> list[Shard]:
    """One shard per real file (``os.path.realpath``), named by that path: a file reached
    through symbolic links, or twice, is read once, with a warning naming its aliases."""
    aliases: dict[str, list[str]] = {}
    for p in paths:
        aliases.setdefault(os.path.realpath(p), []).append(os.path.abspath(p))
    fs = pafs.LocalFileSystem()
    out = []
    for real, names in sorted(aliases.items()):
        try:
            st = os.stat(real)
        except OSError as e:
            raise DataError(f"{names[0]}: cannot be read ({e.strerror}); a symbolic link to "
                            f"{real}, which does not exist? Remove the link or restore the "
                            "file") from e
        out.append(Shard(real, real, st.st_size, st.st_mtime_ns, fs))
    twice = [f"{real} (as {', '.join(n)})" for real, n in aliases.items() if len(n) > 1]
    if twice:
        log.warning("%s: %d shard file(s) listed under more than one path (symbolic links), "
                    "each read once: %s", spec, len(twice),
                    "; ".join(twice[:5]) + ("; ..." if len(twice) > 5 else ""))
    if repeats:
        log.warning("%s: %d director(ies) not entered again (a symbolic link to a directory "
                    "already read, or a link cycle): %s", spec, len(repeats),
                    "; ".join(repeats[:5]) + ("; ..." if len(repeats) > 5 else ""))
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
        f"{missing_p}). See docs/data-contract.md."
    )


def split_of(pair_id: str, eval_fraction: float) -> str:
    """Deterministic train/eval split by a hash of pair_id: same answer on every machine."""
    bucket = int.from_bytes(hashlib.sha256(pair_id.encode("utf-8")).digest()[:8], "big")
    return "eval" if bucket / 2**64 < eval_fraction else "train"


def in_validation(pair_id: str, val_fraction: float) -> bool:
    """Whether a training pair is held out for validation during training: a second hash of
    pair_id (salted, so independent of the eval split), the same on every machine."""
    if val_fraction <= 0:
        return False
    bucket = int.from_bytes(hashlib.sha256(b"val:" + pair_id.encode("utf-8")).digest()[:8], "big")
    return bucket / 2**64 < val_fraction


def _id_column(layout: str, names: list[str]) -> str | None:
    if layout == "canonical":
        return "pair_id"
    return "ranking_id" if "ranking_id" in names else None


# --- Column types, checked from the footer -------------------------------------------------

# Arrow keeps binary offsets as int32: one cell of a ``binary`` column holds < 2 GiB, and the
# read stage builds ``binary`` columns. A larger cell is quarantined before the table is built.
BINARY_CELL_MAX = 2**31 - 1


def _plain(t: pa.DataType) -> pa.DataType:
    """A dictionary-encoded column (pandas categoricals) reads as its values."""
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_bytes(t: pa.DataType) -> bool:
    return (pa.types.is_binary(t) or pa.types.is_large_binary(t)
            or pa.types.is_fixed_size_binary(t) or pa.types.is_binary_view(t))


def _is_frame_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t)
            or pa.types.is_large_list_view(t) or pa.types.is_fixed_size_list(t)) and (
        _is_bytes(_plain(t.value_type)) or pa.types.is_null(t.value_type))


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _media_form(t: pa.DataType) -> str | None:
    """``binary`` (one encoded item per cell), ``frames`` (list<binary>), or None (all null)."""
    t = _plain(t)
    if pa.types.is_null(t):
        return None
    return "frames" if _is_frame_list(t) else "binary" if _is_bytes(t) else "wrong"


def _type_name(t: pa.DataType) -> str:
    t = _plain(t)
    if hasattr(t, "value_type"):  # lists: list<binary>, not "list<item: binary>"
        return f"{str(t).split('<', 1)[0]}<{_type_name(t.value_type)}>"
    return str(t)


_MEDIA_FIX = (
    "store each item's encoded bytes (JPEG/PNG/WebP, or a video container) in a binary column; "
    "if the column holds file paths or URLs, read the files into it; if base64, decode it first"
)


def column_type_problems(schema: pa.Schema, layout: str, uri: str,
                         modality: str | None = None) -> list[str]:
    """What is wrong with the types of a shard's columns, one sentence each (empty: nothing).

    Each names the shard, the column, the type found, the type expected and the fix. A column
    of type ``null`` (all values null) passes: its rows are quarantined one by one.
    ``modality`` (``image``/``video``, None: either) rejects frame lists in image runs.
    """
    problems: list[str] = []

    def wrong(col: str, expected: str, fix: str) -> None:
        found = _type_name(schema.field(col).type)
        problems.append(f"{uri}: column {col!r} is {found}, expected {expected}; {fix}")

    media = ("chosen", "rejected") if layout == "canonical" else ("jpg_0", "jpg_1")
    forms = {}
    for col in media:
        form = _media_form(schema.field(col).type)
        if form == "wrong" or (form == "frames" and layout == "pickapic"):
            expected = "binary (or list<binary> of encoded frames, for video)" if (
                layout == "canonical") else "binary"
            wrong(col, expected, _MEDIA_FIX)
        elif form is not None:
            forms[col] = form
    if len(set(forms.values())) > 1:
        a, b = media
        problems.append(
            f"{uri}: column {a!r} is {_type_name(schema.field(a).type)} but {b!r} is "
            f"{_type_name(schema.field(b).type)}; both sides of a pair must have the same form: "
            "both encoded items (binary) or both lists of encoded frames (list<binary>)")
    elif modality == "image" and "frames" in forms.values():
        problems.append(
            f"{uri}: columns {list(media)} hold lists of encoded frames (list<binary>), which "
            "only video runs read; run 'visual-dpo run video', or store one encoded image per cell")

    numbers = (("label_0", "label_1") if layout == "pickapic" else ("target",)) + (
        "margin", "weight")
    for col in numbers:
        if col in schema.names and not (_is_number(_plain(schema.field(col).type))
                                        or pa.types.is_null(schema.field(col).type)):
            wrong(col, "a number (float64)",
                  "cast it to float64 when writing the shard (pandas: .astype('float64'))")
    id_col = _id_column(layout, schema.names)
    if id_col:
        t = _plain(schema.field(id_col).type)
        if not (_is_text(t) or pa.types.is_integer(t) or pa.types.is_null(t)):
            wrong(id_col, "string (or an integer id)", "cast it to string when writing the shard")
    text_col = "prompt" if layout == "canonical" else "caption"
    if text_col in schema.names:
        t = _plain(schema.field(text_col).type)
        if not (_is_text(t) or pa.types.is_null(t)):
            wrong(text_col, "string", "cast it to string, or drop the column")
    return problems


def _data_error(problems: list[str]) -> DataError:
    """One error for everything found, so a user fixes all shards in one pass."""
    if len(problems) == 1:
        return DataError(problems[0])
    shown = "\n".join(f"  - {p}" for p in problems[:20])
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return DataError(f"{len(problems)} problems with the input data:\n{shown}{more}")


@dataclass(frozen=True)
class ReadUnit:
    """One Parquet row group of one shard: the unit of parallel reading."""

    shard: Shard
    layout: str
    row_group: int
    row_offset: int  # index of the row group's first row within the shard
    duplicate_rows: tuple[int, ...]  # shard row indices whose pair_id was already seen
    frame_lists: bool = False  # canonical video: each side is list<binary> of encoded frames


@dataclass(frozen=True)
class ReadPlan:
    """One dataset's shards as read units, planned from their footers once per run: every
    stage that reads the dataset (prepare, streaming epochs, evaluation) reuses it, so
    thousands of object-store footers are read once."""

    shards: tuple[Shard, ...]
    units: tuple[ReadUnit, ...]
    rows: int
    """Rows the footers declare: the counting invariant is checked against this."""

    @classmethod
    def of(cls, shards: list[Shard], layout: str, modality: str | None = None) -> ReadPlan:
        """``plan_reads``: raises one ``DataError`` for every problem of every shard."""
        units, rows = plan_reads(shards, layout, modality)
        return cls(tuple(shards), tuple(units), rows)


def plan_reads(shards: list[Shard], layout: str,
               modality: str | None = None) -> tuple[list[ReadUnit], int]:
    """Read each footer (and only the id column, to find duplicates) on the driver.

    Returns the read units and the total number of rows, counted from Parquet metadata so the
    counting invariant is checked against an independent number. Raises one ``DataError``
    listing every shard that is unreadable, in no known layout or has a wrongly typed column
    (``column_type_problems``), when the shards mix encoded items and frame lists, and when
    all the shards together hold no rows.
    """
    units: list[ReadUnit] = []
    total = 0
    seen: set[str] = set()
    problems: list[str] = []
    form_of: dict[str, str] = {}  # media form -> the first shard holding it
    for shard in shards:
        try:
            with shard.filesystem.open_input_file(shard.path) as f:
                pf = pq.ParquetFile(f)
                schema, md = pf.schema_arrow, pf.metadata
                try:
                    shard_layout = detect_layout(schema, shard.uri, layout)
                except DataError as e:
                    problems.append(str(e))
                    continue
                media = ("chosen", "rejected") if shard_layout == "canonical" else ("jpg_0", "jpg_1")
                forms = {_media_form(schema.field(c).type) for c in media} - {None}
                frame_lists = "frames" in forms
                # An empty shard reads nothing, so its column types cannot hurt (pandas writes an
                # empty frame's columns as float64): it is planned and counted as 0 rows.
                if md.num_rows:
                    found = column_type_problems(schema, shard_layout, shard.uri, modality)
                    if found:
                        problems.extend(found)
                        continue
                    for form in forms:  # none when both sides are all null
                        form_of.setdefault(form, shard.uri)
                id_col = _id_column(shard_layout, schema.names)
                # Once something is wrong the run fails: read only footers from then on.
                ids = (pf.read(columns=[id_col]).column(0).to_pylist()
                       if id_col and md.num_rows and not problems else [])
        except (pa.ArrowException, OSError) as e:
            problems.append(f"{shard.uri}: cannot read as Parquet ({e}); remove or re-export it")
            continue
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
    if len(form_of) > 1:
        problems.append(
            f"the shards mix media forms: {form_of['binary']} holds one encoded item per cell "
            f"(binary) and {form_of['frames']} lists of encoded frames (list<binary>); one run's "
            "shards use one form: re-export them in one form or run them separately")
    if problems:
        raise _data_error(problems)
    if total == 0:
        listed = ", ".join(s.uri for s in shards[:10]) + (" ..." if len(shards) > 10 else "")
        raise DataError(
            f"no rows to read: {len(shards)} shard(s), 0 rows in all ({listed}). Check that the "
            "paths point at the intended data: an export that failed can leave shards with a "
            "schema and no rows.")
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


# --- Rows ----------------------------------------------------------------------------------

def _meta_json(row: dict[str, Any], skip: set[str]) -> str:
    out = {}
    for k, v in row.items():
        if k in skip or isinstance(v, (bytes, bytearray)):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            v = str(v)  # strict JSON has no NaN/inf: keep the value readable, the JSON valid
        out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
    return json.dumps(out, sort_keys=True)


def _content_id(a: bytes | None, b: bytes | None) -> str:
    h = hashlib.sha256()
    h.update(a or b"")
    h.update(b"\0")
    h.update(b or b"")
    return h.hexdigest()[:32]


def _media_digest(item: bytes | list[bytes | None]) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return hashlib.sha256(item).digest()
    h = hashlib.sha256(b"frames")
    for frame in item:
        h.update(len(frame or b"").to_bytes(8, "big"))
        h.update(frame or b"")
    return h.digest()


def content_hash(a: bytes | list, b: bytes | list) -> str:
    """SHA-256 of a pair's two media, in either order: the same two images (or clips) give the
    same hash whichever side is chosen, so a pair is found again under another pair_id."""
    da, db = sorted((_media_digest(a), _media_digest(b)))
    return hashlib.sha256(da + db).hexdigest()[:32]


def encoded_size(item: bytes | list[bytes | None] | None) -> int:
    """Bytes of one side of a pair: an encoded item, or the sum of its encoded frames."""
    if item is None:
        return 0
    if isinstance(item, (bytes, bytearray)):
        return len(item)
    return sum(len(frame or b"") for frame in item)


def _number(row: dict[str, Any], key: str, default: float | None) -> float | None:
    """The cell as a float; None when it is null, not a number, NaN or infinite."""
    v = row.get(key, default)
    try:
        f = None if v is None else float(v)
    except (TypeError, ValueError):
        return None
    return f if f is not None and math.isfinite(f) else None


def _preference(first: float, second: float, ties: str) -> tuple[str, str, bool, float]:
    """``(status, reason, swap, target)`` from the labels of the two sides (finite, in [0, 1],
    not both 0). The larger label is chosen (``swap``: the second side is); ``target`` is the
    probability that chosen is preferred: 1 under ``drop`` (a tie is excluded), the larger
    label's share under ``soft`` (a tie is 0.5)."""
    if first == second:
        return (EXCLUDED, "tie", False, 1.0) if ties == "drop" else (OK, "", False, 0.5)
    hi, lo = max(first, second), min(first, second)
    return OK, "", second > first, hi / (hi + lo) if ties == "soft" else 1.0


@dataclass(frozen=True)
class TrainPairs:
    """The usable pairs of the training data, by pair_id and by content hash (``content_hash``),
    kept as sorted 64-bit keys: 16 bytes a pair, small enough to ship to every read task.
    An eval row that matches either is excluded ("also in train"). A 64-bit key collides by
    chance with probability ~n_train * n_eval / 2**64 (~1e-7 for 1M x 1M pairs)."""

    ids: np.ndarray  # uint64, sorted
    contents: np.ndarray  # uint64, sorted

    @staticmethod
    def _key(s: str) -> int:
        return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "big")

    @classmethod
    def of(cls, pair_ids: Iterable[str], content_hashes: Iterable[str]) -> TrainPairs:
        def keys(values: Iterable[str]) -> np.ndarray:
            return np.unique(np.fromiter((cls._key(v) for v in values if v), dtype=np.uint64))

        return cls(keys(pair_ids), keys(content_hashes))

    def holds(self, pair_id: str, content: str) -> bool:
        def has(keys: np.ndarray, k: int) -> bool:
            i = int(np.searchsorted(keys, np.uint64(k)))
            return i < len(keys) and int(keys[i]) == k

        return has(self.ids, self._key(pair_id)) or bool(content) and has(
            self.contents, self._key(content))


def canonical_rows(
    unit: ReadUnit, table: pa.Table, eval_fraction: float | None, ties: str = "drop", *,
    max_bytes: int | None = None, in_train: TrainPairs | None = None,
) -> Iterator[dict[str, Any]]:
    """Map one row group to canonical rows with provenance, split and a status/reason.

    ``eval_fraction=None`` means the split is fixed by the caller (the row's split is set
    later); otherwise it is the hash split. ``ties``: ``drop`` excludes 0.5/0.5 pairs (and
    reads 0.7/0.3 as a hard label); ``soft`` keeps ties as target 0.5 and uses non-binary
    labels as soft targets. ``target`` is the probability that ``chosen`` is preferred.
    Optional canonical columns ``target`` (in [0, 1], default 1; read like the Pick-a-Pic
    labels ``(target, 1 - target)``), ``margin`` and ``weight`` are carried per pair.

    Quarantined (with the reason): labels/target that are null, NaN, infinite, outside [0, 1]
    or both 0; a margin that is not finite, a weight that is not finite and >= 0; a null
    pair_id or image; an item over ``max_bytes`` (and always over ``BINARY_CELL_MAX``).
    Excluded: ties (``drop``), repeated pair_ids, and pairs ``in_train`` ("also in train").
    """
    dups = set(unit.duplicate_rows)
    limit = BINARY_CELL_MAX if max_bytes is None else min(max_bytes, BINARY_CELL_MAX)
    for i, row in enumerate(table.to_pylist()):
        idx = unit.row_offset + i
        margin = _number(row, "margin", 0.0)
        weight = _number(row, "weight", 1.0)
        r = _labelled(row, unit.layout, ties)
        status, reason, pid, prompt = r.status, r.reason, r.pair_id, r.prompt
        chosen, rejected = (r.second, r.first) if r.swap else (r.first, r.second)
        if pid is None:
            pid = f"{unit.shard.uri}#{idx}"
            if status == OK:
                status, reason = QUARANTINED, "null pair_id"
        pid = str(pid)
        if status == OK:
            status, reason = _pair_problem(row, idx in dups, margin, weight, chosen, rejected,
                                           limit)
        content = content_hash(chosen, rejected) if status == OK else ""
        if status == OK and in_train is not None and in_train.holds(pid, content):
            status, reason = EXCLUDED, "also in train"
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
            "meta": _meta_json(row, r.skip),
            "target": r.target,
            "margin": margin if margin is not None else 0.0,
            "weight": weight if weight is not None else 1.0,
            "content_hash": content,
        }


class _Labelled(NamedTuple):
    """One row read in its layout: the pair id, the items in file order, the prompt, the
    columns that are not metadata, and what the label says (status, whether to swap the
    items so that ``chosen`` comes first, and the target)."""

    pair_id: Any
    first: Any
    second: Any
    prompt: Any
    skip: set[str]
    status: str
    reason: str
    swap: bool
    target: float


def _labelled(row: dict[str, Any], layout: str, ties: str) -> _Labelled:
    status, reason, swap, target = OK, "", False, 1.0
    if layout == "canonical":
        t = _number(row, "target", 1.0)
        if t is None or not 0 <= t <= 1:
            status, reason = QUARANTINED, (
                f"invalid target (target={row.get('target')!r}: must be a finite number "
                "in [0, 1])")
        else:
            status, reason, swap, target = _preference(t, 1.0 - t, ties)
        return _Labelled(row.get("pair_id"), row.get("chosen"), row.get("rejected"),
                         row.get("prompt"), {"pair_id", "prompt", "chosen", "rejected"},
                         status, reason, swap, target)
    rid = row.get("ranking_id")
    first, second = row.get("jpg_0"), row.get("jpg_1")
    l0, l1 = _number(row, "label_0", None), _number(row, "label_1", None)
    shown = f"label_0={row.get('label_0')!r}, label_1={row.get('label_1')!r}"
    if l0 is None or l1 is None or not (0 <= l0 <= 1 and 0 <= l1 <= 1):
        status, reason = QUARANTINED, (
            f"invalid labels ({shown}: each must be a finite number in [0, 1])")
    elif l0 == l1 == 0:
        status, reason = QUARANTINED, f"invalid labels ({shown}: both 0, no preference)"
    else:
        status, reason, swap, target = _preference(l0, l1, ties)
    return _Labelled(str(rid) if rid is not None else _content_id(first, second), first, second,
                     row.get("caption"), {"jpg_0", "jpg_1", "caption"}, status, reason, swap,
                     target)


def _pair_problem(row: dict[str, Any], duplicate: bool, margin: float | None,
                  weight: float | None, chosen: Any, rejected: Any, limit: int) -> tuple[str, str]:
    """The status and reason of a row whose label is usable: the first problem found."""
    if duplicate:
        return EXCLUDED, "duplicate pair_id"
    if margin is None:
        return QUARANTINED, (
            f"invalid margin (margin={row.get('margin')!r}: must be a finite number)")
    if weight is None or weight < 0:
        return QUARANTINED, (
            f"invalid weight (weight={row.get('weight')!r}: must be a finite number >= 0)")
    if chosen is None or rejected is None:
        return QUARANTINED, f"null {'chosen' if chosen is None else 'rejected'} image"
    for side, item in (("chosen", chosen), ("rejected", rejected)):
        if (n := encoded_size(item)) > limit:
            return QUARANTINED, f"{side}: over max_bytes={limit} ({n} bytes)"
    return OK, ""
