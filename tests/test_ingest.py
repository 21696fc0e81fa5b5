"""Ray Data ingest on a real local cluster: decode pool, quarantine, counting invariant."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.datasets.contract import DataError, resolve_shards
from components.datasets.ingest import prepare, usable_pairs
from components.datasets.quarantine import RowCounts, check_quarantine, write_quarantine
from components.media.spec import MediaSpec
from tests.conftest import photo_bytes


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
    prepared = prepare(
        shards, str(tmp_path / "prepared"), layout="auto", spec=MediaSpec("image", 32, 10_000),
        decode_actors=2, cpus_per_actor=1, batch_size=4, eval_fraction=None, split="train",
    )
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
    p = prepare(shards, str(tmp_path / "p"), layout="canonical", spec=MediaSpec("image", 32, 10**6),
                decode_actors=1, cpus_per_actor=1, batch_size=16, eval_fraction=0.3)
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
    p = prepare(resolve_shards([str(d)]), str(tmp_path / "p"), layout="auto", spec=spec,
                decode_actors=1, cpus_per_actor=1, batch_size=4, eval_fraction=None, split="train")
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
    p2 = prepare(resolve_shards([str(d2)]), str(tmp_path / "p2"), layout="auto", spec=spec,
                 decode_actors=1, cpus_per_actor=1, batch_size=4, eval_fraction=None, split="train")
    assert (p2.counts["train"].used, p2.counts["train"].quarantined) == (0, 1)
