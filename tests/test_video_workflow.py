"""The video workflow through its real entry point: local Ray cluster, sqlite MLflow, real MP4s."""

import json

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from components.media.video import encode_video
from pipelines.__main__ import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    from components.sample.videos import write_video_pairs

    d = tmp_path_factory.mktemp("video")
    write_video_pairs(str(d), pairs=160, size=32, frames=8, shards=2, seed=0)
    return d


def test_video_workflow_learns_registers_and_scores_mp4(ray_cluster, video_dir, tracking_uri,
                                                         tmp_path, capsys):
    train = video_dir / "train"
    # One corrupt clip in its own shard: quarantined, counted, the run goes on.
    shard = pq.read_table(sorted(train.glob("*.parquet"))[0])
    good = shard.slice(0, 1).to_pylist()[0]
    bad = {**good, "pair_id": "corrupt-clip", "rejected": b"\x00\x00\x00 ftypisom" + b"\x17" * 300}
    pq.write_table(pa.Table.from_pylist([bad], schema=shard.schema), train / "z-bad.parquet")

    summary_path = tmp_path / "s.json"
    rc = main(["run", "video", "--train", str(train), "--eval", str(video_dir / "eval"),
               "--epochs", "4", "--tracking-uri", tracking_uri, "--output-dir", str(tmp_path / "out"),
               "data.image_size=32", "data.video.frames=8", "train.batch_size=16",
               "train.lr=3e-3", "--summary", str(summary_path)])
    s = json.loads(summary_path.read_text())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == s
    assert rc == 0, s

    # Learned: eval clips are camera moves over photos never seen in training.
    assert s["metrics"]["eval/accuracy"] >= 0.75, s["metrics"]
    # Counting invariant, against the files on disk; the truncated clip is quarantined.
    for split, d in (("train", train), ("eval", video_dir / "eval")):
        r = s["rows"][split]
        on_disk = sum(pq.ParquetFile(p).metadata.num_rows for p in d.glob("*.parquet"))
        assert r["read"] == on_disk == r["used"] + r["quarantined"] + r["excluded"]
    assert s["rows"]["train"]["quarantined"] == 1
    quarantine = pq.read_table(tmp_path / "out" / s["run_id"] / "quarantine.parquet").to_pylist()
    assert [q["pair_id"] for q in quarantine] == ["corrupt-clip"]
    assert quarantine[0]["reason"].startswith("rejected:")

    # Registered as video-scorer in the video-dpo experiment; consistency statistics logged.
    assert (s["model_name"], s["model_version"], s["promoted"]) == ("video-scorer", "1", True)
    assert s["experiment"] == "video-dpo"
    client = MlflowClient(tracking_uri, tracking_uri)
    run = client.get_run(s["run_id"])
    assert run.data.params["model.name"] == "bn-c3d" and run.data.params["data.video.pad"] == "repeat"
    m = run.data.metrics
    assert m["data/train/chosen_mean_c"] > m["data/train/rejected_mean_c"]
    assert 0.5 < m["data/train/chosen_more_consistent"] <= 1.0
    assert "eval/consistency_accuracy" in m and "eval/scorer_accuracy" in m

    # A consumer loads the champion by alias and scores raw MP4 bytes (and a WebM).
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model("models:/video-scorer@champion")
    ev = pq.read_table(video_dir / "eval").to_pandas()
    s_c = model.predict(pd.DataFrame({"video": ev["chosen"]}))
    s_r = model.predict(pd.DataFrame({"video": ev["rejected"]}))
    assert len(s_c) == len(ev) and np.isfinite(s_c).all()
    assert (s_c > s_r).mean() >= 0.75
    frames = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    assert np.isfinite(model.predict(pd.DataFrame({"video": [encode_video(frames, "webm")]}))).all()
    with pytest.raises(ValueError, match="row 1: not a decodable video"):
        model.predict(pd.DataFrame({"video": [ev["chosen"][0], b"junk"]}))
    with pytest.raises(MlflowException, match="missing inputs \\['video'\\]"):
        model.predict(pd.DataFrame({"image": [ev["chosen"][0]]}))
