"""The data contract on small real Parquet files: layouts, ties, duplicates, the hash split."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.datasets.contract import (
    DataError,
    canonical_rows,
    detect_layout,
    plan_reads,
    resolve_shards,
    split_of,
)
from tests.conftest import photo_bytes

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
