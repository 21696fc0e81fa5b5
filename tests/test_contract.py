"""The data contract on small real Parquet files: layouts, ties, duplicates, the hash split."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.datasets.contract import (
    DataError,
    TrainPairs,
    canonical_rows,
    content_hash,
    detect_layout,
    plan_reads,
    resolve_shards,
    split_of,
)
from tests.media_bytes import photo_bytes

A, B = photo_bytes(seed=1), photo_bytes(seed=2)


def _rows(path, layout="auto", eval_fraction=0.5):
    units, total = plan_reads(resolve_shards([str(path)]), layout)
    rows = []
    for u in units:
        table = pq.read_table(u.shard.path).slice(u.row_offset, 10**9)
        rows.extend(canonical_rows(u, table, eval_fraction))
    assert len(rows) == total
    return rows


def test_canonical_layout_keeps_metadata_and_finds_duplicates(tmp_path):
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({
        "pair_id": ["a", "b", "a", None],
        "prompt": ["x", None, "x", "y"],
        "chosen": [A, A, A, A],
        "rejected": [B, None, B, B],
        "rater": ["r1", "r2", "r3", "r4"],
    }), p)
    rows = _rows(p)
    assert [r["status"] for r in rows] == ["ok", "quarantined", "excluded", "quarantined"]
    assert rows[1]["reason"] == "null rejected image"
    assert rows[2]["reason"] == "duplicate pair_id"
    assert rows[3]["reason"] == "null pair_id"
    assert rows[0]["chosen"] == A and rows[0]["rejected"] == B
    assert '"rater": "r1"' in rows[0]["meta"]
    assert [r["row"] for r in rows] == [0, 1, 2, 3]
    assert all(r["shard"] == str(p) for r in rows)


def test_pickapic_layout_maps_labels_and_excludes_ties(tmp_path):
    p = tmp_path / "pap.parquet"
    pq.write_table(pa.table({
        "caption": ["c0", "c1", "c2", "c3"],
        "jpg_0": [A, A, A, A],
        "jpg_1": [B, B, B, B],
        "label_0": pa.array([1.0, 0.0, 0.5, 0.7], pa.float64()),
        "label_1": pa.array([0.0, 1.0, 0.5, 0.3], pa.float64()),
        "ranking_id": pa.array([10, 11, 12, 13], pa.int64()),
        "model_0": ["m", "m", "m", "m"],
    }), p)
    rows = _rows(p)
    assert [r["pair_id"] for r in rows] == ["10", "11", "12", "13"]
    assert (rows[0]["chosen"], rows[0]["rejected"]) == (A, B)
    assert (rows[1]["chosen"], rows[1]["rejected"]) == (B, A)  # label_1 == 1 -> jpg_1 chosen
    assert (rows[2]["status"], rows[2]["reason"]) == ("excluded", "tie")
    assert rows[2]["chosen"] is None  # excluded rows carry no image bytes onward
    assert (rows[3]["chosen"], rows[3]["status"]) == (A, "ok")  # larger label wins
    assert rows[0]["prompt"] == "c0"


def test_pickapic_without_ranking_id_uses_a_content_hash(tmp_path):
    p = tmp_path / "pap.parquet"
    t = {"jpg_0": [A, B], "jpg_1": [B, A], "label_0": [1.0, 0.0], "label_1": [0.0, 1.0]}
    pq.write_table(pa.table(t), p)
    ids = [r["pair_id"] for r in _rows(p)]
    assert ids[0] != ids[1] and all(len(i) == 32 for i in ids)
    assert ids == [r["pair_id"] for r in _rows(p)]  # stable


def test_unknown_layout_names_the_file_and_missing_columns(tmp_path):
    p = tmp_path / "odd.parquet"
    pq.write_table(pa.table({"img_a": [A], "img_b": [B]}), p)
    with pytest.raises(DataError) as e:
        plan_reads(resolve_shards([str(p)]), "auto")
    msg = str(e.value)
    assert str(p) in msg and "'pair_id'" in msg and "'jpg_0'" in msg
    with pytest.raises(DataError, match="not in the Pick-a-Pic layout.*label_0"):
        detect_layout(pa.schema([("jpg_0", pa.binary())]), "x.parquet", "pickapic")


def test_inputs_as_file_directory_glob_and_uri(tmp_path):
    for i in range(3):
        pq.write_table(pa.table({"pair_id": [str(i)], "chosen": [A], "rejected": [B]}),
                       tmp_path / f"part-{i}.parquet")
    (tmp_path / "notes.txt").write_text("not a shard")
    assert len(resolve_shards([str(tmp_path)])) == 3
    assert len(resolve_shards([str(tmp_path / "part-[01].parquet")])) == 2
    assert len(resolve_shards([str(tmp_path / "part-2.parquet")])) == 1
    assert len(resolve_shards([f"file://{tmp_path}"])) == 3
    with pytest.raises(DataError, match="no Parquet shards found"):
        resolve_shards([str(tmp_path / "missing")])


def test_hash_split_is_deterministic_and_proportional():
    # Written out: the split must not change between runs, machines or versions.
    # (sha256("pair-0") starts 0x7e30128f -> bucket 0.4929 -> train at eval_fraction 0.2)
    evals = [i for i in range(20) if split_of(f"pair-{i}", 0.2) == "eval"]
    assert evals == [4, 12, 13, 15, 17]
    share = sum(split_of(f"p{i}", 0.2) == "eval" for i in range(5000)) / 5000
    assert 0.18 < share < 0.22
    # Monotone in the fraction: an eval pair stays eval when the fraction grows.
    ids = [f"q{i}" for i in range(500)]
    small = {i for i in ids if split_of(i, 0.1) == "eval"}
    large = {i for i in ids if split_of(i, 0.3) == "eval"}
    assert small <= large



def test_soft_ties_keep_ties_as_half_targets(tmp_path):
    p = tmp_path / "pap.parquet"
    pq.write_table(pa.table({
        "jpg_0": [A, A, A], "jpg_1": [B, B, B],
        "label_0": [0.5, 0.3, 1.0], "label_1": [0.5, 0.7, 0.0],
        "ranking_id": [1, 2, 3],
    }), p)
    units, _ = plan_reads(resolve_shards([str(p)]), "auto")
    rows = list(canonical_rows(units[0], pq.read_table(p), 0.5, ties="soft"))
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"]
    assert [r["target"] for r in rows] == [0.5, pytest.approx(0.7), 1.0]
    assert rows[1]["chosen"] == B  # the 0.7 side is chosen
    dropped = list(canonical_rows(units[0], pq.read_table(p), 0.5, ties="drop"))
    assert [r["status"] for r in dropped] == ["excluded", "ok", "ok"]
    assert dropped[1]["target"] == 1.0  # a majority label read as hard under drop


def test_margin_and_weight_columns_are_carried_and_validated(tmp_path):
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"pair_id": ["a", "b"], "chosen": [A, A], "rejected": [B, B],
                             "margin": [0.5, 0.0], "weight": [2.0, -1.0]}), p)
    rows = _rows(p)
    assert (rows[0]["margin"], rows[0]["weight"], rows[0]["status"]) == (0.5, 2.0, "ok")
    assert rows[1]["status"] == "quarantined" and "weight" in rows[1]["reason"]


# --- Hostile input (issue 12) --------------------------------------------------------------

NAN, INF = float("nan"), float("inf")


def test_non_finite_and_out_of_range_labels_are_quarantined_not_kept(tmp_path):
    """NaN, +-inf, out-of-range and missing labels, and 0/0 (no preference at all) are
    quarantined with the reason under both tie policies. Under ties=soft, 0/0 used to become
    a hard preference for jpg_0 (target 1.0)."""
    p = tmp_path / "pap.parquet"
    labels = [(1.0, 0.0), (NAN, 1.0), (1.0, INF), (-INF, 0.0), (1.5, 0.0), (0.2, -0.1),
              (None, 1.0), (0.0, 0.0)]
    pq.write_table(pa.table({
        "jpg_0": [A] * len(labels), "jpg_1": [B] * len(labels),
        "label_0": pa.array([a for a, _ in labels], pa.float64()),
        "label_1": pa.array([b for _, b in labels], pa.float64()),
        "ranking_id": list(range(len(labels))),
    }), p)
    units, _ = plan_reads(resolve_shards([str(p)]), "auto")
    for ties in ("drop", "soft"):
        rows = list(canonical_rows(units[0], pq.read_table(p), None, ties=ties))
        assert [r["status"] for r in rows] == ["ok"] + ["quarantined"] * 7, ties
        assert all(r["reason"].startswith("invalid labels (") for r in rows[1:])
        assert rows[1]["reason"] == ("invalid labels (label_0=nan, label_1=1.0: each must be a "
                                     "finite number in [0, 1])")
        assert rows[7]["reason"].endswith("both 0, no preference)")
        assert all(r["chosen"] is None and r["rejected"] is None for r in rows[1:])


def test_canonical_target_margin_and_weight_must_be_finite_and_in_range(tmp_path):
    """target in [0, 1] (the probability that chosen is preferred), margin finite, weight
    finite and >= 0; each violation is a quarantined row naming the column and the rule."""
    p = tmp_path / "c.parquet"
    cases = [  # (target, margin, weight, expected reason prefix or "ok")
        (1.0, 0.0, 1.0, "ok"),
        (NAN, 0.0, 1.0, "invalid target (target=nan"),
        (1.5, 0.0, 1.0, "invalid target (target=1.5"),
        (-0.1, 0.0, 1.0, "invalid target (target=-0.1"),
        (1.0, INF, 1.0, "invalid margin (margin=inf"),
        (1.0, NAN, 1.0, "invalid margin (margin=nan"),
        (1.0, 0.0, NAN, "invalid weight (weight=nan"),
        (1.0, 0.0, INF, "invalid weight (weight=inf"),
        (1.0, 0.0, -1.0, "invalid weight (weight=-1.0"),
        (None, 0.0, 1.0, "invalid target (target=None"),
    ]
    pq.write_table(pa.table({
        "pair_id": [f"p{i}" for i in range(len(cases))],
        "chosen": [A] * len(cases), "rejected": [B] * len(cases),
        "target": pa.array([c[0] for c in cases], pa.float64()),
        "margin": pa.array([c[1] for c in cases], pa.float64()),
        "weight": pa.array([c[2] for c in cases], pa.float64()),
    }), p)
    rows = _rows(p)
    for r, (*_, want) in zip(rows, cases, strict=True):
        if want == "ok":
            assert (r["status"], r["target"]) == ("ok", 1.0)
        else:
            assert r["status"] == "quarantined" and r["reason"].startswith(want), r["reason"]


def test_canonical_target_is_read_like_a_pair_of_labels(tmp_path):
    """target t reads as the labels (t, 1 - t): 0.5 is a tie; under drop the larger side is
    a hard preference; under soft t is the soft target, and t < 0.5 swaps the sides."""
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"pair_id": ["a", "b", "c"], "chosen": [A] * 3, "rejected": [B] * 3,
                             "target": [0.7, 0.5, 0.25]}), p)
    units, _ = plan_reads(resolve_shards([str(p)]), "auto")
    soft = list(canonical_rows(units[0], pq.read_table(p), None, ties="soft"))
    assert [r["target"] for r in soft] == [0.7, 0.5, 0.75]
    assert (soft[2]["chosen"], soft[2]["rejected"]) == (B, A)  # 0.25: rejected is preferred
    drop = list(canonical_rows(units[0], pq.read_table(p), None, ties="drop"))
    assert [(r["status"], r["target"]) for r in drop] == [("ok", 1.0), ("excluded", 1.0),
                                                          ("ok", 1.0)]
    assert drop[1]["reason"] == "tie" and drop[2]["chosen"] == B


@pytest.mark.parametrize("columns, column, found, expected", [
    ({"jpg_0": [A], "jpg_1": [B], "label_0": ["1.0"], "label_1": [0.0]},
     "label_0", "string", "a number (float64)"),
    ({"pair_id": ["a"], "chosen": pa.array([7], pa.int64()), "rejected": [B]},
     "chosen", "int64", "binary"),
    ({"pair_id": ["a"], "chosen": [A], "rejected": [B], "weight": ["heavy"]},
     "weight", "string", "a number (float64)"),
    ({"pair_id": [1.5], "chosen": [A], "rejected": [B]}, "pair_id", "double", "string"),
])
def test_a_wrongly_typed_column_fails_from_the_footer_naming_everything(
        tmp_path, columns, column, found, expected):
    p = tmp_path / "bad.parquet"
    pq.write_table(pa.table(columns), p)
    with pytest.raises(DataError) as e:
        plan_reads(resolve_shards([str(p)]), "auto")
    msg = str(e.value)
    assert msg.startswith(f"{p}: column {column!r} is {found}, expected {expected}"), msg
    assert "cast it" in msg or "binary column" in msg  # says what to do


def test_frame_lists_on_one_side_and_binary_on_the_other_is_one_clear_error(tmp_path):
    p = tmp_path / "mixed.parquet"
    pq.write_table(pa.table({"pair_id": ["a"], "chosen": [[A, B]], "rejected": [B]}), p)
    with pytest.raises(DataError, match=r"'chosen' is list<binary> but 'rejected' is binary; "
                                        "both sides of a pair must have the same form"):
        plan_reads(resolve_shards([str(p)]), "auto")
    ok = tmp_path / "frames.parquet"
    pq.write_table(pa.table({"pair_id": ["a"], "chosen": [[A, B]], "rejected": [[B, A]]}), ok)
    units, _ = plan_reads(resolve_shards([str(ok)]), "auto", "video")
    assert units[0].frame_lists
    with pytest.raises(DataError, match="only video runs read"):
        plan_reads(resolve_shards([str(ok)]), "auto", "image")
    one = tmp_path / "one.parquet"
    pq.write_table(pa.table({"pair_id": ["b"], "chosen": [A], "rejected": [B]}), one)
    with pytest.raises(DataError, match="the shards mix media forms"):
        plan_reads(resolve_shards([str(ok), str(one)]), "auto", "video")


def test_all_problems_of_all_shards_are_reported_at_once(tmp_path):
    """One run, one error: every wrong column of every shard, so one pass fixes them all."""
    a, b, c = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    pq.write_table(pa.table({"jpg_0": [A], "jpg_1": [B], "label_0": ["1"], "label_1": ["0"]}), a)
    pq.write_table(pa.table({"pair_id": ["x"], "chosen": [1], "rejected": [B]}), b)
    c.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(DataError) as e:
        plan_reads(resolve_shards([str(tmp_path)]), "auto")
    msg = str(e.value)
    assert msg.startswith("4 problems with the input data:")
    assert f"{a}: column 'label_0' is string" in msg and f"{a}: column 'label_1' is string" in msg
    assert f"{b}: column 'chosen' is int64" in msg
    assert f"{c}: cannot read as Parquet" in msg


def test_an_empty_shard_is_zero_rows_and_no_rows_at_all_is_an_error(tmp_path):
    import pandas as pd

    full, empty, from_pandas = (tmp_path / n for n in ("a.parquet", "b.parquet", "c.parquet"))
    pq.write_table(pa.table({"pair_id": ["a"], "chosen": [A], "rejected": [B]}), full)
    pq.write_table(pa.table({"pair_id": pa.array([], pa.string()),
                             "chosen": pa.array([], pa.binary()),
                             "rejected": pa.array([], pa.binary())}), empty)
    # pandas writes an empty frame's columns as float64: no rows, so no type can hurt.
    pd.DataFrame({"pair_id": [], "chosen": [], "rejected": []}).to_parquet(from_pandas)
    units, total = plan_reads(resolve_shards([str(tmp_path)]), "auto")
    assert total == 1 and len(_rows(full)) == 1
    with pytest.raises(DataError) as e:
        plan_reads(resolve_shards([str(empty), str(from_pandas)]), "auto")
    assert str(e.value).startswith(f"no rows to read: 2 shard(s), 0 rows in all ({empty}, "
                                   f"{from_pandas})")


def test_an_item_over_max_bytes_is_quarantined_before_any_table_is_built(tmp_path):
    """The per-row byte limit (MediaSpec.max_bytes) is checked on the encoded size, for an
    encoded item and for the sum of a frame list, so an oversized cell never reaches Arrow."""
    p = tmp_path / "c.parquet"
    small, big = b"\x01" * 100, b"\xff" * 5000  # not decoded here: only sizes matter
    pq.write_table(pa.table({"pair_id": ["ok", "big-chosen", "big-rejected"],
                             "chosen": [small, big, small], "rejected": [small, small, big]}), p)
    units, _ = plan_reads(resolve_shards([str(p)]), "auto")
    rows = list(canonical_rows(units[0], pq.read_table(p), None, max_bytes=4999))
    assert [r["status"] for r in rows] == ["ok", "quarantined", "quarantined"]
    assert rows[1]["reason"] == "chosen: over max_bytes=4999 (5000 bytes)"
    assert rows[2]["reason"] == "rejected: over max_bytes=4999 (5000 bytes)"
    assert [r["status"] for r in canonical_rows(units[0], pq.read_table(p), None,
                                                 max_bytes=5000)] == ["ok"] * 3
    f = tmp_path / "frames.parquet"
    pq.write_table(pa.table({"pair_id": ["v"], "chosen": [[b"x" * 3000, b"y" * 3000]],
                             "rejected": [[b"z"]]}), f)
    units, _ = plan_reads(resolve_shards([str(f)]), "auto", "video")
    (row,) = canonical_rows(units[0], pq.read_table(f), None, max_bytes=5999)
    assert row["reason"] == "chosen: over max_bytes=5999 (6000 bytes)"


def test_an_eval_pair_already_in_train_is_excluded_by_id_or_by_content(tmp_path):
    """The same pair_id, or the same two images under another id and in either order, is
    excluded as "also in train"; the content hash does not depend on which side is chosen."""
    C = photo_bytes(seed=3)
    train = TrainPairs.of(["t1"], [content_hash(A, B)])
    p = tmp_path / "eval.parquet"
    pq.write_table(pa.table({"pair_id": ["t1", "renamed", "fresh"],
                             "chosen": [A, B, A], "rejected": [C, A, C]}), p)
    units, _ = plan_reads(resolve_shards([str(p)]), "auto")
    rows = list(canonical_rows(units[0], pq.read_table(p), None, in_train=train))
    assert [(r["status"], r["reason"]) for r in rows] == [
        ("excluded", "also in train"), ("excluded", "also in train"), ("ok", "")]
    assert rows[1]["content_hash"] == content_hash(A, B) and rows[2]["content_hash"]
    assert [r["status"] for r in canonical_rows(units[0], pq.read_table(p), None)] == ["ok"] * 3
