"""Tracking-server behaviour that needs no server: an unreachable URI fails fast.

The workflow against a real `mlflow server` over HTTP is tested in tests/test_job.py: the Ray
job logs to the server, and a consumer loads the champion through it."""

import json

from pipelines.__main__ import main


def test_an_unreachable_tracking_server_fails_fast(sample_dir, tmp_path, capsys):
    rc = main(["run", "image", "--train", str(sample_dir / "train"), "--tracking-uri",
               "http://127.0.0.1:9", "--output-dir", str(tmp_path / "out"),
               "--summary", str(tmp_path / "s.json")])
    capsys.readouterr()
    s = json.loads((tmp_path / "s.json").read_text())
    assert rc == 1 and "http://127.0.0.1:9 is unreachable" in s["reason"]
    assert not (tmp_path / "out").exists()  # failed before any data was prepared
