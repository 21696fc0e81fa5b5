"""Ray Data ingest on a real local cluster: decode pool, quarantine, counting invariant."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.datasets.contract import DataError, ReadPlan, resolve_shards
from components.datasets.decode_graph import DecodeOptions, usable_pairs
from components.datasets.prepare import prepare
from components.datasets.quarantine import RowCounts, check_quarantine, write_quarantine
from components.datasets.reading import SplitRule
from components.media.spec import MediaSpec
from tests.media_bytes import photo_bytes

TRAIN = SplitRule(fixed="train")


@pytest.fixture(scope="module")
def messy_shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("messy")
    good = [(photo_bytes(40, "JPEG", seed=i), photo_bytes(40, "PNG", seed=100 + i)) for i in range(10)]
    big = photo_bytes(200, "PNG", seed=7)  # 40,000 pixels: over the limit used below
    canonical = {
        "pair_id": [f"g{i}" for i in range(10)] + ["corrupt", "null", "big", "g3"],
        "chosen": [c for c, _ in good] + [b"\x89PNG broken", None, big, good[3][0]],
        "rejected": [r for _, r in good] + [good[0][1], good[0][1], good[0][1], good[3][1]],
    }
    pq.write_table(pa.table(canonical), d / "a-canonical.parquet", row_group_size=5)
    pickapic = {
        "caption": ["p0", "p1", "p2"],
        "jpg_0": [good[0][0], good[1][0], good[2][0]],
        "jpg_1": [good[0][1], good[1][1], good[2][1]],
        "label_0": [0.0, 0.5, 1.0],
        "label_1": [1.0, 0.5, 0.0],
        "ranking_id": [900, 901, 902],
    }
    pq.write_table(pa.table(pickapic), d / "b-pickapic.parquet")
    return d


def test_bad_rows_are_quarantined_and_every_row_is_counted(ray_cluster, messy_shards, tmp_path):
    shards = resolve_shards([str(messy_shards)])
    # Two actors of 0.5 CPU: with the read and write tasks they fit the 2-CPU test cluster.
    prepared = prepare(ReadPlan.of(shards, "auto"), str(tmp_path / "prepared"),
                       DecodeOptions(MediaSpec("image", 32, 10_000), actors=2,
                                     cpus_per_actor=0.5, batch_size=4), TRAIN)
    c = prepared.counts["train"]
    assert c.read == 14 + 3
    assert c.read == c.used + c.quarantined + c.excluded
    assert (c.used, c.quarantined, c.excluded) == (10 + 2, 3, 2)  # excluded: duplicate g3, tie
    assert c.reasons["duplicate pair_id"] == 1 and c.reasons["tie"] == 1

    q_path = tmp_path / "quarantine.parquet"
    assert write_quarantine([prepared], str(q_path)) == 3
    q = pq.read_table(q_path).to_pylist()
    by_id = {r["pair_id"]: r for r in q}
    assert set(by_id) == {"corrupt", "null", "big"}
    assert by_id["corrupt"]["row"] == 10 and by_id["corrupt"]["shard"].endswith("a-canonical.parquet")
    assert by_id["corrupt"]["reason"].startswith("chosen: not a decodable image")
    assert by_id["null"]["reason"] == "null chosen image"
    assert "over data.max_pixels=10000" in by_id["big"]["reason"]

    rows = usable_pairs(prepared.path, "train").take_all()
    assert len(rows) == 12
    assert rows[0]["chosen_px"].dtype == np.uint8 and rows[0]["chosen_px"].shape == (3, 32, 32)


def test_hash_split_assigns_every_row_once(ray_cluster, sample_dir, tmp_path):
    shards = resolve_shards([str(sample_dir / "train")])
    p = prepare(ReadPlan.of(shards, "canonical"), str(tmp_path / "p"),
                DecodeOptions(MediaSpec("image", 32, 10**6), layout="canonical", batch_size=16),
                SplitRule(eval_fraction=0.3))
    total = sum(pq.ParquetFile(s.path).metadata.num_rows for s in shards)
    assert p.counts["train"].read + p.counts["eval"].read == total
    assert 0.15 < p.counts["eval"].read / total < 0.45
    assert usable_pairs(p.path, "eval").count() == p.counts["eval"].used


def test_too_much_quarantine_fails_with_advice():
    counts = {"train": RowCounts(read=10, used=7, quarantined=3, reasons={"chosen: corrupt": 3})}
    with pytest.raises(DataError, match="3 of 10 rows quarantined.*max_quarantine_fraction=0.2"):
        check_quarantine(counts, 0.2)
    check_quarantine(counts, 0.3)


def test_video_frame_lists_are_decoded_and_bad_clips_quarantined(ray_cluster, tmp_path):
    """A canonical video shard whose sides are lists of encoded PNG frames (list<binary>), plus
    a clip container that is not a video: shapes, consistency columns and the counts."""
    import io

    from PIL import Image

    from components.media.video import encode_video
    from components.sample.images import load_photo

    photo = np.asarray(load_photo("astronaut.png").convert("RGB"))

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "PNG")
        return buf.getvalue()

    rows = []
    for i in range(6):
        frames = [photo[40 * i : 40 * i + 32, 4 * k : 4 * k + 32] for k in range(6)]
        rows.append({"pair_id": f"v{i}", "chosen": [png(f) for f in frames],
                     "rejected": [png(frames[k]) for k in (0, 5, 1, 4, 2, 3)]})
    rows.append({"pair_id": "bad", "chosen": rows[0]["chosen"], "rejected": [b"not a frame"]})
    d = tmp_path / "frames"
    d.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), d / "a.parquet")
    # Encoded containers (binary columns) in a run of their own: one run's shards use one form.
    spec = MediaSpec("video", 32, 10**7, frames=6)
    p = prepare(ReadPlan.of(resolve_shards([str(d)]), "auto"), str(tmp_path / "p"),
                DecodeOptions(spec, batch_size=4), TRAIN)
    c = p.counts["train"]
    assert (c.read, c.used, c.quarantined) == (7, 6, 1)
    assert p.consistency["train"]["chosen_more_consistent"] == 1.0  # smooth pan vs shuffled
    got = usable_pairs(p.path, "train").take_all()
    assert got[0]["chosen_px"].shape == (3, 6, 32, 32) and "chosen_c" in got[0]
    q = pq.read_table(tmp_path / "p").to_pandas()
    assert q.loc[q["pair_id"] == "bad", "reason"].item().startswith("rejected: frame 0")

    clip = encode_video(np.stack([photo[:32, k : k + 32] for k in range(6)]), "mp4")
    d2 = tmp_path / "clips"
    d2.mkdir()
    pq.write_table(pa.table({"pair_id": ["c0"], "chosen": [clip], "rejected": [b"\x00" * 64]}),
                   d2 / "b.parquet")
    p2 = prepare(ReadPlan.of(resolve_shards([str(d2)]), "auto"), str(tmp_path / "p2"),
                 DecodeOptions(spec, batch_size=4), TRAIN)
    assert (p2.counts["train"].used, p2.counts["train"].quarantined) == (0, 1)


# --- Hostile input (issue 12) --------------------------------------------------------------

def _pairs(path, ids, chosen=None, rejected=None):
    n = len(ids)
    chosen = chosen or [photo_bytes(32, "JPEG", seed=i) for i in range(n)]
    rejected = rejected or [photo_bytes(32, "JPEG", seed=50 + i) for i in range(n)]
    pq.write_table(pa.table({"pair_id": pa.array(ids, pa.string()),
                             "chosen": pa.array(chosen, pa.binary()),
                             "rejected": pa.array(rejected, pa.binary())}), path)


def test_empty_shards_count_as_zero_rows_and_no_rows_at_all_says_so(ray_cluster, tmp_path):
    """An empty shard next to full ones reads 0 rows; only empty shards is a DataError naming
    them, raised before any Ray work (it used to be ArrowInvalid from the empty output)."""
    d = tmp_path / "in"
    d.mkdir()
    _pairs(d / "a.parquet", ["a0", "a1", "a2"])
    _pairs(d / "b-empty.parquet", [])
    _pairs(d / "c-empty.parquet", [])
    spec = MediaSpec("image", 16, 10**6)
    p = prepare(ReadPlan.of(resolve_shards([str(d)]), "auto"), str(tmp_path / "p"),
                DecodeOptions(spec, batch_size=4), TRAIN)
    c = p.counts["train"]
    assert (c.read, c.used, c.quarantined, c.excluded) == (3, 3, 0, 0)
    empties = resolve_shards([str(d / "*-empty.parquet")])
    with pytest.raises(DataError) as e:
        ReadPlan.of(empties, "auto")  # the footers say it, before any Ray work
    assert str(e.value).startswith(f"no rows to read: 2 shard(s), 0 rows in all "
                                   f"({d / 'b-empty.parquet'}, {d / 'c-empty.parquet'})")


def test_an_item_over_max_bytes_is_quarantined_and_counted(ray_cluster, tmp_path):
    """MediaSpec.max_bytes bounds one encoded item: an oversized cell is a quarantine record
    with its size, not a crash (at full scale, ArrowCapacityError building the read block)."""
    d = tmp_path / "in"
    d.mkdir()
    big = photo_bytes(64, "PNG", seed=9)  # ~12 KB of noise
    _pairs(d / "a.parquet", ["a0", "a1", "big"],
           chosen=[photo_bytes(16, "JPEG", seed=0), photo_bytes(16, "JPEG", seed=1), big],
           rejected=[photo_bytes(16, "JPEG", seed=2)] * 3)
    spec = MediaSpec("image", 16, 10**6, max_bytes=4000)
    p = prepare(ReadPlan.of(resolve_shards([str(d)]), "auto"), str(tmp_path / "p"),
                DecodeOptions(spec, batch_size=4), TRAIN)
    c = p.counts["train"]
    assert (c.read, c.used, c.quarantined) == (3, 2, 1)
    assert c.reasons == {"chosen: over max_bytes=4000": 1}
    q = pq.read_table(tmp_path / "p", filters=[("status", "=", "quarantined")]).to_pylist()
    assert [(r["pair_id"], r["reason"]) for r in q] == [
        ("big", f"chosen: over max_bytes=4000 ({len(big)} bytes)")]


def test_read_blocks_are_bounded_in_bytes_so_arrow_offsets_cannot_overflow(monkeypatch):
    """A block holds at most READ_SLICE_BYTES of encoded bytes, or a single row: the binary
    columns stay under Arrow's 2 GiB per array whatever the clip sizes."""
    from components.datasets import reading

    monkeypatch.setattr(reading, "READ_SLICE_BYTES", 1000)
    sizes = [300, 300, 300, 300, 2500, 10, 990]
    rows = [{"pair_id": str(i), "chosen": b"c" * n, "rejected": b"r" * 5, "content_hash": ""}
            for i, n in enumerate(sizes)]
    blocks = list(reading.canonical_tables(iter(rows), frame_lists=False))
    assert [b.num_rows for b in blocks] == [3, 1, 1, 1, 1]
    for b in blocks:
        nbytes = sum(len(x) for col in ("chosen", "rejected") for x in b[col].to_pylist())
        assert nbytes <= 1000 or b.num_rows == 1


def test_eval_pairs_that_are_also_in_train_are_excluded_from_eval(ray_cluster, tmp_path):
    """With separate --eval data, an eval pair whose pair_id or whose two images (either
    order) a usable training pair has is excluded as "also in train" and counted; a pair
    whose training copy was quarantined (never trained on) stays in eval."""
    from components.config import DataConfig, PreprocessConfig
    from components.datasets.prepare import prepare_splits

    img = [photo_bytes(16, "JPEG", seed=i) for i in range(12)]
    (tmp_path / "train").mkdir()
    (tmp_path / "eval").mkdir()
    _pairs(tmp_path / "train" / "t.parquet", ["t0", "t1", "t2", "t3"],
           chosen=[img[0], img[1], img[2], b"corrupt"], rejected=[img[4], img[5], img[6], img[7]])
    _pairs(tmp_path / "eval" / "e.parquet", ["t0", "renamed", "t3", "e0", "e1"],
           chosen=[img[8], img[5], img[3], img[9], img[10]],
           rejected=[img[9], img[1], img[7], img[10], img[11]])
    opts = DecodeOptions.from_config(DataConfig(), PreprocessConfig(batch_size=4), "drop",
                                     MediaSpec("image", 16, 10**6))
    out = prepare_splits(ReadPlan.of(resolve_shards([str(tmp_path / "train")]), "auto"),
                         ReadPlan.of(resolve_shards([str(tmp_path / "eval")]), "auto"),
                         str(tmp_path / "run"), opts, DataConfig())
    tr, ev = out.counts["train"], out.counts["eval"]
    assert (tr.read, tr.used, tr.quarantined) == (4, 3, 1)
    assert (ev.read, ev.used, ev.quarantined, ev.excluded) == (5, 3, 0, 2)
    assert ev.reasons == {"also in train": 2}
    assert ev.read == ev.used + ev.quarantined + ev.excluded
    assert out.metrics["rows/eval/excluded"] == 2
    kept = {r["pair_id"] for r in usable_pairs(out.eval_path, "eval", with_ids=True).take_all()}
    assert kept == {"t3", "e0", "e1"}


def test_an_empty_hash_split_fails_in_plain_words():
    from components.datasets.prepare import PreparedSplits

    counts = {"train": RowCounts(read=3, used=3), "eval": RowCounts()}
    with pytest.raises(DataError, match="eval data is empty: the hash split of pair_id put none "
                                        "of the 3 rows read in it"):
        PreparedSplits("p", "p", counts, "q.parquet", 32).check(0.1)


def test_a_row_that_kills_its_decode_actor_is_quarantined_and_the_run_goes_on(ray_cluster, tmp_path, fault_plan_path):
    """A decode that ends the actor process (a decoder segfault, the OOM killer; here a
    test-only hook) is retried a bounded number of times, then that row is quarantined and
    every other row is decoded: the run neither stalls nor fails."""
    import json

    d = tmp_path / "in"
    d.mkdir()
    _pairs(d / "a.parquet", ["a0", "poison", "a2", "a3", "a4"])
    fault_plan_path.write_text(json.dumps({"decode_crash_pair_id": "poison"}))
    try:
        p = prepare(ReadPlan.of(resolve_shards([str(d)]), "auto"), str(tmp_path / "p"),
                    DecodeOptions(MediaSpec("image", 16, 10**6), batch_size=4), TRAIN)
    finally:
        fault_plan_path.unlink()
    c = p.counts["train"]
    assert (c.read, c.used, c.quarantined, c.excluded) == (5, 4, 1, 0)
    assert c.reasons == {"the decoder process died 2 times on this pair": 1}
