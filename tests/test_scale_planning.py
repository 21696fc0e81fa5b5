"""What must not grow with the shard count, checked on a few hundred tiny shards without Ray
(the timings at 10k-1M pairs are in benchmarks/million_pairs.py and docs/scale.md):

- each shard's Parquet footer is parsed once when planning, and once per read process for
  all its row groups and every pass over them (the prepare step, each streaming epoch);
- what a run logs to MLflow about its data (params, tags, dataset inputs, config.yaml, the
  prepare step's inputs) is the same size for 50 and 500 shards; only data/shards.json,
  the list ``--incremental`` compares against, grows, by its URI and ~55 bytes a shard;
- the prepare step counts rows from its status table a record batch at a time, with the
  same result as counting row by row.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from types import SimpleNamespace

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from components.config import load_config
from components.datasets import reading
from components.datasets.contract import OK, ReadPlan, resolve_shards
from components.datasets.prepare import _status_counts
from components.datasets.reading import SplitRule, read_unit
from components.runtime.pinning import plan_for_run
from components.tracking.lineage import record_run
from components.tracking.runs import setup
from pipelines.stages import prepare_key
from tests.media_bytes import photo_bytes

ROWS, ROW_GROUP = 4, 2  # two row groups a shard: two read units


def _write_shards(d, n: int, prefix: str) -> list:
    img = photo_bytes(16, "PNG", seed=1), photo_bytes(16, "JPEG", seed=2)
    d.mkdir()
    for k in range(n):
        pq.write_table(pa.table({
            "pair_id": [f"{prefix}{k}-{i}" for i in range(ROWS)],
            "chosen": [img[0]] * ROWS, "rejected": [img[1]] * ROWS,
        }), d / f"part-{k:05d}.parquet", row_group_size=ROW_GROUP)
    return resolve_shards([str(d)])


@pytest.fixture
def footer_reads(monkeypatch):
    """Counts the ``ParquetFile``s opened without a footer handed in: each parses one."""
    counts = Counter()
    original = pq.ParquetFile.__init__

    def counting(self, source, *args, metadata=None, **kwargs):
        counts["parsed" if metadata is None else "given"] += 1
        original(self, source, *args, metadata=metadata, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "__init__", counting)
    monkeypatch.setattr(reading, "_footers", type(reading._footers)())  # a fresh read process
    return counts


def test_each_footer_is_parsed_once_to_plan_and_once_per_read_process(tmp_path, footer_reads):
    shards = _write_shards(tmp_path / "train", 300, "p")
    plan = ReadPlan.of(shards, "auto", "image")
    assert footer_reads["parsed"] == 300  # planning: one footer a shard, on the driver
    assert len(plan.units) == 600 and plan.rows == 1200

    footer_reads.clear()
    rule = SplitRule(fixed="train")
    for _ in range(3):  # the prepare step's status pass, then two streaming epochs
        rows = sum(t.num_rows for i in range(len(plan.units))
                   for t in read_unit({"unit": [i]}, list(plan.units), rule, "drop", 10**6, None))
        assert rows == 1200
    # 600 units x 3 passes opened the shards 1,800 times; each footer was parsed once.
    assert footer_reads == {"parsed": 300, "given": 1800}


def test_a_replaced_shard_has_its_footer_parsed_again(tmp_path, footer_reads):
    shards = _write_shards(tmp_path / "train", 2, "p")
    plan = ReadPlan.of(shards, "auto", "image")
    unit = plan.units[0]
    list(read_unit({"unit": [0]}, [unit], SplitRule(fixed="train"), "drop", 10**6, None))
    footer_reads.clear()
    changed = replace(unit, shard=replace(unit.shard, mtime_ns=1))
    list(read_unit({"unit": [0]}, [changed], SplitRule(fixed="train"), "drop", 10**6, None))
    assert footer_reads["parsed"] == 1


def _logged(client: MlflowClient, run_id: str, tmp_path) -> dict[str, int]:
    r = client.get_run(run_id)
    sizes = {"params": len(json.dumps(r.data.params, sort_keys=True)),
             "tags": len(json.dumps({k: v for k, v in r.data.tags.items()
                                     if k != "mlflow.runName"}, sort_keys=True)),
             "dataset_inputs": len(json.dumps([d.dataset.source + d.dataset.name
                                               for d in r.inputs.dataset_inputs]))}
    for a in client.list_artifacts(run_id) + client.list_artifacts(run_id, "data"):
        if not a.is_dir:
            sizes[a.path] = a.file_size
    return sizes


def test_what_a_run_logs_about_its_data_does_not_grow_with_the_shards(tmp_path):
    few = _write_shards(tmp_path / "d050", 50, "f")
    many = _write_shards(tmp_path / "d500", 500, "m")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    setup(uri, "scale")
    client = MlflowClient(uri)
    logged, keys = {}, {}
    try:
        for name, shards in (("d050", few), ("d500", many)):
            cfg = load_config(None, [f"data.train={tmp_path / name}"])
            with mlflow.start_run() as run:
                record_run(cfg, shards, [], plan_for_run(cfg.preprocess, cfg.train), {"CPU": 2.0})
            logged[name] = _logged(client, run.info.run_id, tmp_path)
            inputs = SimpleNamespace(train=SimpleNamespace(shards=tuple(shards)), eval=None,
                                     spec=SimpleNamespace(text="", context_length=0,
                                                          vocab_size=0, tokenizer=""),
                                     cache="none")
            keys[name] = len(json.dumps(prepare_key(cfg, inputs), sort_keys=True))
    finally:
        mlflow.set_tracking_uri("")
    few_s, many_s = logged["d050"], logged["d500"]
    shards_json = "data/shards.json"
    assert set(few_s) == set(many_s)
    # Equal but for a digit of the shard count (tag data.train.shards: "50", "500").
    assert all(abs(many_s[k] - few_s[k]) <= 1 for k in few_s if k != shards_json), (few_s, many_s)
    assert keys["d050"] == keys["d500"]  # the prepare step's inputs: a fingerprint, not a list
    # The one per-shard record (what --incremental compares against): one compact line each,
    # the URI and ~55 bytes of size, mtime and keys.
    per_shard = (many_s[shards_json] - few_s[shards_json]) / 450
    uri = sum(len(s.uri) for s in many) / len(many)
    assert per_shard < uri + 64, (per_shard, uri)


def test_status_counts_by_record_batch_match_a_row_by_row_count(tmp_path):
    statuses = [("train", OK, None, "16x16,16x16"),
                ("train", "quarantined", "chosen: not a decodable image (looks like TIFF)", None),
                ("train", "quarantined", "chosen: not a decodable image (empty)", "16x16"),
                ("train", "excluded", "duplicate pair_id", "16x16,16x16"),
                ("eval", OK, None, "32x16,16x16"), ("eval", "excluded", "also in train", None)]
    out = tmp_path / "prepared"
    out.mkdir()
    rows = []
    for k in range(3):  # several files, so several record batches
        part = [statuses[(k + i) % len(statuses)] for i in range(1000 + k)]
        rows += part
        pq.write_table(pa.table({c: [r[j] for r in part] for j, c in
                                 enumerate(("split", "status", "reason", "source_sizes"))}),
                       out / f"part-{k}.parquet")
    counts, sizes, written = _status_counts(str(out))
    assert written == len(rows)
    for split in ("train", "eval"):
        mine = [r for r in rows if r[0] == split]
        c = counts[split]
        assert (c.read, c.used, c.quarantined, c.excluded) == (
            len(mine), sum(r[1] == OK for r in mine), sum(r[1] == "quarantined" for r in mine),
            sum(r[1] == "excluded" for r in mine))
        expected = Counter(r[2].split(" (", 1)[0] if r[1] == "quarantined" else r[2]
                           for r in mine if r[1] != OK)
        assert c.reasons == dict(expected)
    assert sizes == Counter(s for r in rows if r[3] for s in r[3].split(","))


def test_ranking_shuffles_in_partitions_sized_by_the_scored_rows():
    """`score --group-by` shuffles by group: a few thousand candidates in one partition (not
    Ray Data's 200, 7-8 s of scheduling on 2 cores for 72 rows), more as rows grow, capped."""
    from ray.data import DataContext

    from components.evaluation.batch_scoring import ROWS_PER_RANK_PARTITION, rank_partitions

    most = DataContext.get_current().default_hash_shuffle_parallelism
    assert rank_partitions(0) == rank_partitions(72) == rank_partitions(ROWS_PER_RANK_PARTITION) == 1
    assert rank_partitions(ROWS_PER_RANK_PARTITION + 1) == 2
    assert rank_partitions(10**12) == most
