"""The image workflow through its real entry point: local Ray cluster, sqlite MLflow, real files."""

import json

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from pipelines.__main__ import main

pytestmark = pytest.mark.slow

FAST = ["data.image_size=48", "train.batch_size=16", "train.log_every_steps=2"]


def _run(args, tmp_path, capsys, name="s.json"):
    summary_path = tmp_path / name
    rc = main(["run", "image", *args, "--summary", str(summary_path)])
    out_lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(summary_path.read_text())
    assert json.loads(out_lines[-1]) == summary  # the last stdout line is the summary
    return rc, summary


def test_image_workflow_learns_registers_and_serves(ray_cluster, sample_dir, tracking_uri, tmp_path, capsys):
    args = ["--train", str(sample_dir / "train"), "--eval", str(sample_dir / "eval"),
            "--epochs", "5", "--tracking-uri", tracking_uri, "--output-dir", str(tmp_path / "out"),
            *FAST, "eval.slices=degradation,photo"]
    rc, s = _run(args, tmp_path, capsys)
    assert rc == 0, s
    assert s["status"] == "ok"

    # Learned: eval pairs come from photos never seen in training.
    assert s["metrics"]["eval/accuracy"] >= 0.75, s["metrics"]
    assert s["metrics"]["train/loss"] < 0.6

    # Counting invariant, against the row counts in the files themselves.
    for split in ("train", "eval"):
        r = s["rows"][split]
        on_disk = sum(pq.ParquetFile(p).metadata.num_rows for p in (sample_dir / split).glob("*.parquet"))
        assert r["read"] == on_disk == r["used"] + r["quarantined"] + r["excluded"]

    # Registered, and promoted because there was no champion.
    assert (s["model_name"], s["model_version"], s["promoted"]) == ("image-scorer", "1", True)
    assert set(s["aliases"]) == {"challenger", "champion"}

    client = MlflowClient(tracking_uri, tracking_uri)
    run = client.get_run(s["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "5" and run.data.params["model.name"] == "bn-cnn"
    assert len(run.data.tags["data.train.fingerprint"]) == 16
    assert "CPU" in json.loads(run.data.tags["ray.cluster_resources"])
    assert run.data.metrics["rows/train/read"] == s["rows"]["train"]["read"]
    # Slice metrics reach a real store under valid names (one per degradation and photo).
    assert 0.0 <= run.data.metrics["eval/slice/degradation/blur/accuracy"] <= 1.0
    assert run.data.metrics["eval/slice/photo/chelsea.png/pairs"] > 0
    steps = client.get_metric_history(s["run_id"], "train/loss")
    assert len(steps) >= 4  # per step (every 2) and per epoch, from rank 0
    artifacts = {a.path for a in client.list_artifacts(s["run_id"])} | {
        a.path for a in client.list_artifacts(s["run_id"], "data")}
    assert {"config.yaml", "data/quarantine.parquet", "data/report.json", "promotion.json"} <= artifacts
    assert json.loads(client.get_model_version("image-scorer", "1").tags["promotion"])["promote"] is True
    # The eval metrics are linked to the logged model; system metrics were recorded.
    version = client.get_model_version("image-scorer", "1")
    (logged,) = client.search_logged_models([run.info.experiment_id],
                                            filter_string=f"source_run_id = '{s['run_id']}'")
    linked = {m.key: m.value for m in logged.metrics or []}
    assert linked["eval/accuracy"] == pytest.approx(s["metrics"]["eval/accuracy"])
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), run.data.metrics
    assert version.tags["weights_sha256"] and len(version.tags["weights_sha256"]) == 64

    # CPU pinning (preprocess.pin_cpus=auto): each process reported the cores it pinned
    # itself to; the plan is in the params; with >= 2 cores the sets are disjoint.
    import os

    from components.runtime.pinning import read_reports

    node = sorted(os.sched_getaffinity(0))
    reports = read_reports(str(tmp_path / "out" / s["run_id"] / "pinning"))
    by_role = {r["role"]: r for r in reports}
    assert set(by_role) == {"preprocess", "train"}, reports
    assert run.data.params["pinning.mode"] == "auto"
    for r in reports:
        assert r["affinity"] == r["planned"] and set(r["affinity"]) <= set(node)
        assert r["omp_num_threads"] == str(len(r["planned"]))
    assert by_role["train"]["torch_threads"] == len(by_role["train"]["planned"])
    assert run.data.params["pinning.train.cpus_each"] == "1"
    assert all(r["node_id"] for r in reports)  # each report names its node
    if len(node) >= 2:
        assert not set(by_role["train"]["affinity"]) & set(by_role["preprocess"]["affinity"])
    assert {"pinning"} <= {a.path for a in client.list_artifacts(s["run_id"])}

    # A consumer loads the champion by alias and scores raw encoded bytes.
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model("models:/image-scorer@champion")
    ev = pq.read_table(sample_dir / "eval").to_pandas()
    s_c = model.predict(pd.DataFrame({"image": ev["chosen"]}))
    s_r = model.predict(pd.DataFrame({"image": ev["rejected"]}))
    assert len(s_c) == len(ev)
    assert (s_c > s_r).mean() >= 0.75
    with pytest.raises(ValueError, match="row 1: not a decodable image"):
        model.predict(pd.DataFrame({"image": [ev["chosen"][0], b"junk"]}))
    _consumer_with_its_own_components_package(tmp_path, tracking_uri, list(ev["chosen"][:4]),
                                              s_c[:4])

    # Batch scoring (best-of-N): groups of one clean crop and two degraded versions of it,
    # from eval photos, plus one corrupt row that must be quarantined.
    candidates = _candidates(tmp_path / "candidates.parquet", groups=24)
    rc = main(["score", "--model", "models:/image-scorer@champion", "--input", str(candidates),
               "--output", str(tmp_path / "scored"), "--group-by", "group",
               "--tracking-uri", tracking_uri, "--summary", str(tmp_path / "sc.json")])
    capsys.readouterr()
    sc = json.loads((tmp_path / "sc.json").read_text())
    assert rc == 0, sc
    assert sc["rows"] == {"read": 73, "scored": 72, "quarantined": 1, "written": 72}
    out = pq.read_table(tmp_path / "scored").to_pandas()
    assert len(out) == 72 and {"group", "kind", "score", "rank"} <= set(out.columns)
    assert "image" not in out.columns
    best = out[out["rank"] == 1]
    assert len(best) == 24 and (best["kind"] == "clean").mean() > 0.5
    q = pq.read_table(sc["quarantine"]).to_pandas()
    assert list(q["group"]) == ["broken"] and "not a decodable image" in q["reason"][0]
    # Outputs never destroy data: a directory score did not write is refused (before any
    # work), kept intact, and replaced only with --overwrite; its own output is replaced.
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    score = ["score", "--model", "models:/image-scorer@champion", "--input", str(candidates),
             "--tracking-uri", tracking_uri, "--summary", str(tmp_path / "sc2.json")]
    rc = main([*score, "--output", str(precious)])
    capsys.readouterr()
    refused = json.loads((tmp_path / "sc2.json").read_text())
    assert rc == 2 and "--overwrite" in refused["reason"]
    assert (precious / "notes.txt").read_text() == "keep me"
    rc = main([*score, "--output", str(tmp_path / "scored"), "--group-by", "group",
               "--top-k", "1"])
    capsys.readouterr()
    again = json.loads((tmp_path / "sc2.json").read_text())
    assert rc == 0 and again["rows"] == {"read": 73, "scored": 72, "quarantined": 1,
                                         "written": 24}

    # The evaluation pictures, and the evaluate command on the same data: the same accuracy.
    pictures = {a.path for a in client.list_artifacts(s["run_id"], "eval")}
    assert {"eval/score_histograms.png", "eval/reliability.png",
            "eval/most_confidently_wrong.png", "eval/scores.json"} <= pictures
    rc = main(["evaluate", "--model", "models:/image-scorer@champion", "--data",
               str(sample_dir / "eval"), "--tracking-uri", tracking_uri, "--output-dir",
               str(tmp_path / "out-eval"), "--summary", str(tmp_path / "e.json")])
    capsys.readouterr()
    e = json.loads((tmp_path / "e.json").read_text())
    assert rc == 0, e
    assert e["metrics"]["eval/accuracy"] == pytest.approx(s["metrics"]["eval/accuracy"], abs=1e-9)
    assert 0.0 <= e["metrics"]["eval/ece"] <= 1.0
    assert client.get_run(e["run_id"]).data.tags["workflow"] == "evaluate"


def _consumer_with_its_own_components_package(tmp_path, tracking_uri, items, expected):
    """A registry consumer whose own project has a ``components`` package with a ``models``
    module imports it, then loads the champion: the model scores, and the consumer's package
    is still its own (the model's code ships as ``visual_dpo_components``)."""
    import base64
    import subprocess
    import sys

    project = tmp_path / "consumer"
    (project / "components").mkdir(parents=True)
    (project / "components" / "__init__.py").write_text("")
    (project / "components" / "models.py").write_text('OWNER = "consumer"\n')
    script = f"""
import base64, json, sys
import components.models
import mlflow, pandas as pd
mlflow.set_tracking_uri({tracking_uri!r})
model = mlflow.pyfunc.load_model("models:/image-scorer@champion")
items = [base64.b64decode(b) for b in json.loads(sys.stdin.read())]
scores = model.predict(pd.DataFrame({{"image": items}}))
import components.models as again
print(json.dumps({{"scores": [float(x) for x in scores], "owner": again.OWNER,
                  "file": again.__file__, "shipped": "visual_dpo_components" in sys.modules}}))
"""
    payload = json.dumps([base64.b64encode(b).decode() for b in items])
    res = subprocess.run([sys.executable, "-c", script], cwd=project, input=payload,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["owner"] == "consumer" and out["file"].startswith(str(project))
    assert out["shipped"]
    np.testing.assert_allclose(out["scores"], expected, rtol=1e-5, atol=1e-5)


def _candidates(path, groups):
    import pyarrow as pa

    from components.sample.images import EVAL_PHOTOS, _crop, degrade, encode, load_photo

    rng = np.random.default_rng(5)
    rows = {"group": [], "kind": [], "image": []}
    for g in range(groups):
        photo = load_photo(EVAL_PHOTOS[g % len(EVAL_PHOTOS)])
        photo = photo if photo.mode in ("L", "RGB") else photo.convert("RGB")
        clean = _crop(photo, 48, rng)
        kinds = rng.choice(["blur", "noise", "jpeg", "downsample"], 2, replace=False)
        for kind, img in [("clean", clean), *((k, degrade(clean, k, rng)) for k in kinds)]:
            rows["group"].append(f"g{g}")
            rows["kind"].append(str(kind))
            rows["image"].append(encode(img, "PNG"))
    rows["group"].append("broken")
    rows["kind"].append("corrupt")
    rows["image"].append(b"not an image")
    pq.write_table(pa.table(rows), path)
    return path


def test_bad_config_and_bad_data_fail_with_one_line_reasons(ray_cluster, tmp_path, tracking_uri, capsys):
    rc, s = _run(["--train", str(tmp_path / "nothing-here"), "train.lr=-1",
                  "--tracking-uri", tracking_uri], tmp_path, capsys)
    assert rc == 2 and s["status"] == "failed" and "train.lr" in s["reason"]
    rc, s = _run(["--train", str(tmp_path / "nothing-here"), "--tracking-uri", tracking_uri],
                 tmp_path, capsys)
    assert rc == 2 and "no Parquet shards found" in s["reason"]
