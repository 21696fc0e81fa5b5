"""Hostile input at the contract level (no Ray): whatever a set of shards holds, the contract
either refuses it from the footers, before anything is decoded, with a ``DataError`` naming a
shard, or maps every row to exactly one canonical row whose status accounts for it.

The property is two-sided: the generator knows which shards it broke (unreadable, a missing
column, a wrongly typed column, no rows at all, mixed media forms), and the contract must
refuse exactly those datasets.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from components.datasets.contract import (
    DataError,
    canonical_rows,
    encoded_size,
    plan_reads,
    resolve_shards,
)
from components.datasets.reading import canonical_tables
from tests.media_bytes import photo_bytes

A, B = photo_bytes(8, "PNG", seed=1), photo_bytes(8, "JPEG", seed=2)
MAX_BYTES = max(len(A), len(B)) + 16
BIG = b"\x00" * (MAX_BYTES + 1)  # one byte over the limit

NAN, INF = float("nan"), float("inf")


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """Good values three times in four, so that generated rows are also used, not only
    quarantined."""
    return st.integers(0, 3).flatmap(lambda i: bad if i == 0 else good)


# Corrupt bytes are good at this level: they are only decoded (and quarantined) later.
ITEMS = mostly(st.one_of(st.sampled_from([A, B, b"", b"\x89PNG\r\n truncated"]),
                         st.binary(min_size=1, max_size=24)),
               st.sampled_from([None, BIG]))
FRAMES = mostly(st.lists(ITEMS, min_size=1, max_size=3), st.sampled_from([None, []]))
FLOATS = mostly(st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0, 1)),
                st.sampled_from([NAN, INF, -INF, -1.0, 2.0, 1e308, -0.0, 0.5, None]))
INTS = mostly(st.sampled_from([0, 1]), st.sampled_from([5, -3, None]))
IDS = mostly(st.text("abcdefgh", min_size=1, max_size=6), st.sampled_from(["a", "", None]))
TEXTS = st.sampled_from(["a cat", "", "\u00e9\u00e8", None])

# kind -> the types the contract accepts, each with its values
GOOD = {
    "media": [(pa.binary(), ITEMS), (pa.large_binary(), ITEMS)],
    "number": [(pa.float64(), FLOATS), (pa.float32(), FLOATS), (pa.int64(), INTS)],
    "id": [(pa.string(), IDS), (pa.large_string(), IDS), (pa.int64(), INTS), ("dict", IDS)],
    "text": [(pa.string(), TEXTS), (pa.large_string(), TEXTS)],
}
# kind -> types it must be refused as
WRONG = {
    "media": [(pa.int64(), INTS), (pa.string(), TEXTS), (pa.float64(), FLOATS)],
    "number": [(pa.string(), st.sampled_from(["1.0", "0", None])), (pa.binary(), ITEMS)],
    "id": [(pa.float64(), FLOATS), (pa.binary(), ITEMS), (pa.list_(pa.string()),
                                                           st.lists(TEXTS, max_size=2))],
    "text": [(pa.int64(), INTS), (pa.binary(), ITEMS)],
}
# Checked columns of each layout: (name, kind, required).
LAYOUTS = {
    "canonical": [("pair_id", "id", True), ("chosen", "media", True), ("rejected", "media", True),
                  ("prompt", "text", False), ("target", "number", False),
                  ("margin", "number", False), ("weight", "number", False)],
    "pickapic": [("jpg_0", "media", True), ("jpg_1", "media", True), ("label_0", "number", True),
                 ("label_1", "number", True), ("ranking_id", "id", False),
                 ("caption", "text", False), ("margin", "number", False),
                 ("weight", "number", False)],
}
# Metadata columns: any type is fine (the other layout's optional columns among them).
EXTRAS = {"rater": (pa.string(), TEXTS), "score": (pa.float64(), FLOATS),
          "blob": (pa.binary(), ITEMS), "tags": (pa.list_(pa.string()), st.lists(TEXTS, max_size=2)),
          "created_at": (pa.timestamp("s"), st.sampled_from([0, 1_700_000_000, None]))}


@dataclass
class Drawn:
    """One generated shard and what the contract must make of it."""

    name: str
    columns: dict[str, pa.Array] = field(default_factory=dict)
    rows: int = 0
    row_group_size: int = 1
    refused: bool = False  # unreadable, no layout, or a wrongly typed column in a non-empty shard
    form: str | None = None  # "binary" / "frames" when the shard has rows and media of a form
    content_ids: bool = False  # Pick-a-Pic without ranking_id: pair_id is a content hash
    corrupt: bytes | None = None


def _array(draw, typ, values, n):
    vals = [draw(values) for _ in range(n)]
    if typ == "dict":
        return pa.array(vals, pa.string()).dictionary_encode()
    return pa.array(vals, typ)


@st.composite
def shards(draw, name: str, frames: bool, hostile: bool) -> Drawn:
    """A shard; unless ``hostile``, one the contract must accept (its rows may still be bad)."""
    d = Drawn(name, rows=draw(st.sampled_from([0, 1, 2, 3, 5, 8])),
              row_group_size=draw(st.integers(1, 4)))
    kinds = ["canonical"] * 4 + ["pickapic"] * 4 + ["neither", "corrupt"] if hostile else (
        ["canonical"] if frames else ["canonical", "pickapic"])
    kind = draw(st.sampled_from(kinds))
    n = d.rows
    if kind == "corrupt":
        d.refused, d.corrupt = True, draw(st.sampled_from([b"", b"PAR1", b"not parquet at all"]))
        return d
    if kind == "neither":  # a strict subset of each layout's required columns, plus metadata
        for col in draw(st.sampled_from([["pair_id", "chosen"], ["jpg_0", "label_0"], []])):
            d.columns[col] = pa.array([A] * n if col in ("chosen", "jpg_0") else ["x"] * n)
        d.refused = True
    else:
        d.content_ids = kind == "pickapic"
        forms = set()
        for col, what, required in LAYOUTS[kind]:
            present = (not hostile or draw(st.integers(0, 9)) > 0) if required else draw(
                st.booleans())
            if not present:
                d.refused |= required
                continue
            # 0: all null (allowed), 1: a wrong type (hostile only), else a good type
            choice = draw(st.integers(0, 11) if hostile else st.sampled_from([0, *range(2, 12)]))
            if choice == 0:  # a null-typed column passes; its rows are quarantined one by one
                d.columns[col] = pa.nulls(n)
            elif choice == 1:
                typ, values = draw(st.sampled_from(WRONG[what]))
                d.columns[col] = _array(draw, typ, values, n)
                d.refused |= n > 0
            elif what == "media" and kind == "canonical" and frames:
                d.columns[col] = _array(draw, pa.list_(pa.binary()), FRAMES, n)
                forms.add("frames")
            else:
                typ, values = draw(st.sampled_from(GOOD[what]))
                d.columns[col] = _array(draw, typ, values, n)
                if what == "media":
                    forms.add("binary")
        if n and not d.refused and forms:
            d.form = forms.pop()
    for col in draw(st.lists(st.sampled_from(sorted(EXTRAS)), unique=True, max_size=2)):
        d.columns[col] = _array(draw, *EXTRAS[col], n)
    return d


@st.composite
def datasets(draw) -> tuple[list[Drawn], bool, str]:
    """1-3 shards, all encoded items or (video) canonical frame lists, and a tie policy."""
    frames, hostile = draw(st.booleans()), draw(st.booleans())
    count = draw(st.integers(1, 3))
    return ([draw(shards(f"part-{i}.parquet", frames, hostile)) for i in range(count)], frames,
            draw(st.sampled_from(["drop", "soft"])))


def _strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _must_refuse(drawn: list[Drawn]) -> bool:
    forms = {d.form for d in drawn if d.form}
    return (any(d.refused for d in drawn) or sum(d.rows for d in drawn) == 0
            or len(forms) > 1)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets())
def test_every_row_is_accounted_for_or_the_shards_are_refused_up_front(dataset):
    drawn, frames, ties = dataset
    with tempfile.TemporaryDirectory() as tmp:
        for d in drawn:
            path = Path(tmp) / d.name
            if d.corrupt is not None:
                path.write_bytes(d.corrupt)
            else:
                table = pa.table(d.columns) if d.columns else pa.table({"x": pa.nulls(d.rows)})
                pq.write_table(table, path, row_group_size=d.row_group_size)
        shards_ = resolve_shards([tmp])
        try:
            units, total = plan_reads(shards_, "auto", "video" if frames else "image")
        except DataError as e:
            assert _must_refuse(drawn), f"refused a well-formed dataset: {e}"
            bad = [s.uri for s in shards_ for d in drawn if s.uri.endswith(d.name) and d.refused]
            assert any(uri in str(e) for uri in bad or [s.uri for s in shards_]), (
                f"names no offending shard: {e}")
            event("refused")
            return
        assert not _must_refuse(drawn), "accepted a dataset that must be refused"

        by_metadata = {s.uri: pq.ParquetFile(s.path).metadata.num_rows for s in shards_}
        assert total == sum(by_metadata.values())
        rows = []
        for u in units:
            table = pq.ParquetFile(u.shard.path).read_row_group(u.row_group)
            got = list(canonical_rows(u, table, 0.3, ties, max_bytes=MAX_BYTES))
            built = list(canonical_tables(iter(got), u.frame_lists))  # the read stage's blocks
            assert sum(b.num_rows for b in built) == len(got) == table.num_rows
            rows.extend(got)

        # read = used + quarantined + excluded, and read is what the footers declare
        statuses = [r["status"] for r in rows]
        event(f"accepted, {'some' if 'ok' in statuses else 'no'} rows used")
        assert len(rows) == total
        assert statuses.count("ok") + statuses.count("quarantined") + statuses.count(
            "excluded") == total
        for uri, n in by_metadata.items():
            assert sorted(r["row"] for r in rows if r["shard"] == uri) == list(range(n))
        pickapic = {s.uri for s in shards_ for d in drawn if s.uri.endswith(d.name)
                    and d.content_ids}
        for r in rows:
            assert r["split"] in ("train", "eval") and isinstance(r["pair_id"], str)
            meta = _strict_json(r["meta"])
            if r["status"] == "ok" and r["shard"] in pickapic:  # the labels are in meta
                l0, l1 = meta["label_0"], meta["label_1"]
                assert l0 + l1 > 0 and (ties == "soft" or l0 != l1)
                assert r["target"] == (max(l0, l1) / (l0 + l1) if ties == "soft" else 1.0)
            if r["status"] == "ok":
                assert r["reason"] == "" and len(r["content_hash"]) == 32
                assert r["chosen"] is not None and r["rejected"] is not None
                assert max(encoded_size(r["chosen"]), encoded_size(r["rejected"])) <= MAX_BYTES
                assert 0.5 <= r["target"] <= 1.0
                assert math.isfinite(r["margin"]) and math.isfinite(r["weight"])
                assert r["weight"] >= 0
            else:
                assert r["reason"] and r["chosen"] is None and r["rejected"] is None
        # No pair_id is used twice. Pick-a-Pic rows without a ranking_id are left out: their
        # id is a hash of the images, which the driver does not read to find repeats.
        used = [r["pair_id"] for r in rows if r["status"] == "ok"
                and not (r["shard"] in pickapic and len(r["pair_id"]) == 32)]
        assert len(used) == len(set(used))


def test_visual_dpo_run_stops_on_a_wrongly_typed_shard_before_mlflow_or_ray(tmp_path, capsys):
    """The type check reads footers only, so the run fails before it starts Ray or opens the
    tracking store: no run, no prepared data, one line naming shard, column and types."""
    from pipelines.__main__ import EXIT_USAGE, main

    shard = tmp_path / "train" / "part-0.parquet"
    shard.parent.mkdir()
    pq.write_table(pa.table({"pair_id": ["a"], "chosen": pa.array([7], pa.int64()),
                             "rejected": [A]}), shard)
    db = tmp_path / "mlflow.db"
    rc = main(["run", "image", "--train", str(shard.parent), "--tracking-uri", f"sqlite:///{db}",
               "--output-dir", str(tmp_path / "out"), "--summary", str(tmp_path / "s.json")])
    assert rc == EXIT_USAGE  # bad input data: exit 2 with one line, as a bad config
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["status"] == "failed"
    assert summary["reason"].startswith(
        f"DataError: {shard}: column 'chosen' is int64, expected binary")
    assert not db.exists() and not (tmp_path / "out").exists()
