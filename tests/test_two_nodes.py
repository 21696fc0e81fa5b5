"""A real two-node Ray cluster (head + a second node in its own mount namespace), a moto S3
server and an `mlflow server` storing artifacts in it: node-local paths differ between the
nodes, the S3 bucket is shared. Infrastructure in tests/two_nodes.py."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time

import pytest

# The fixtures (s3_server, s3_mlflow_server, two_node_cluster) live in tests/two_nodes.py.
pytest_plugins = ["two_nodes"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def no_leaks():
    """Set up before the cluster, torn down after it: none of its raylets and no tmpfs left
    behind (the cluster's own teardown also asserts this). Other raylets on the machine (the
    session's ray_cluster, test_job's head, other users) are only counted."""
    from two_nodes import count_raylets, mounts_named

    before = count_raylets()
    seen = {}
    yield seen
    after = count_raylets()
    print(f"\nraylets on the machine: before {before}, after {after}")
    if "temp_root" not in seen:  # the cluster failed to start; its own teardown checked it
        return
    root, tmpfs = seen["temp_root"], seen["tmpfs_source"]
    assert count_raylets(str(root)) == 0
    assert mounts_named(tmpfs) == []
    assert not root.exists()


def test_pyarrow_and_boto3_reach_the_s3_server(s3_server, monkeypatch):
    from pyarrow import fs

    pa_fs = s3_server.filesystem()
    with pa_fs.open_output_stream(f"{s3_server.bucket}/probe/a.txt") as f:
        f.write(b"hello")
    assert pa_fs.open_input_file(f"{s3_server.bucket}/probe/a.txt").read() == b"hello"
    assert "probe/a.txt" in s3_server.keys("probe/")
    # pyarrow 25: FileSystem.from_uri honours AWS_ENDPOINT_URL (a plain S3FileSystem() does
    # not); Ray Train resolves an s3:// storage_path through from_uri.
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    uri_fs, path = fs.FileSystem.from_uri(s3_server.uri("probe/a.txt"))
    assert uri_fs.open_input_file(path).read() == b"hello"


PROBE = textwrap.dedent('''
    import json, os, socket
    import ray
    from pyarrow import fs

    ray.init()
    LOCAL = os.environ["NODE_LOCAL_DIR"]
    HEAD_ONLY = os.environ["HEAD_ONLY_FILE"]  # written by pytest, under its base temp dir
    BUCKET = os.environ["S3_BUCKET"]

    def s3():
        endpoint = os.environ["AWS_ENDPOINT_URL"].split("://", 1)[1]
        return fs.S3FileSystem(endpoint_override=endpoint, scheme="http")

    @ray.remote
    def write(name):
        with open(os.path.join(LOCAL, name), "w") as f:
            f.write(name)
        return ray.get_runtime_context().get_node_id()

    @ray.remote
    def look(name, other):
        return {"node": ray.get_runtime_context().get_node_id(),
                "own": os.path.exists(os.path.join(LOCAL, name)),
                "other": os.path.exists(os.path.join(LOCAL, other)),
                "listing": sorted(os.listdir(LOCAL)),
                "head_only": os.path.exists(HEAD_ONLY)}

    @ray.remote
    def put_s3(key, data):
        with s3().open_output_stream(f"{BUCKET}/{key}") as f:
            f.write(data.encode())
        return ray.get_runtime_context().get_node_id()

    @ray.remote
    def get_s3(key):
        # through FileSystem.from_uri and AWS_ENDPOINT_URL, as Ray Train resolves storage_path
        uri_fs, path = fs.FileSystem.from_uri(f"s3://{BUCKET}/{key}")
        return ray.get_runtime_context().get_node_id(), uri_fs.open_input_file(path).read().decode()

    W, H = {"resources": {"worker_node": 1}}, {"resources": {"head": 1}}
    ids = ray.get([write.options(**W).remote("from-worker"), write.options(**H).remote("from-head")])
    seen = ray.get([look.options(**W).remote("from-worker", "from-head"),
                    look.options(**H).remote("from-head", "from-worker")])
    put_node = ray.get(put_s3.options(**W).remote("shared/probe.txt", "via-s3"))
    get_node, text = ray.get(get_s3.options(**H).remote("shared/probe.txt"))
    print("PROBE " + json.dumps({"write_nodes": ids, "worker": seen[0], "head": seen[1],
                                 "put_node": put_node, "get_node": get_node, "text": text,
                                 "driver_node": ray.get_runtime_context().get_node_id()}))
''')


def test_two_nodes_have_separate_disks_and_share_s3(no_leaks, two_node_cluster, s3_server,
                                                      tmp_path):
    from two_nodes import count_raylets, mounts_named

    c = two_node_cluster
    no_leaks.update(temp_root=c.temp_root, tmpfs_source=c.tmpfs_source)
    assert count_raylets(str(c.temp_root)) == 2
    mounted_in = mounts_named(c.tmpfs_source)  # the second node's processes, not this one
    assert mounted_in and f"/proc/{os.getpid()}/mounts" not in mounted_in
    assert c.head_node_id != c.worker_node_id
    assert {n["node_id"] for n in c.nodes()} == {c.head_node_id, c.worker_node_id}
    work = tmp_path / "job"
    work.mkdir()
    (work / "probe.py").write_text(PROBE)
    t0 = time.time()
    job_id, status, logs = c.run_job(
        f"{sys.executable} probe.py",
        runtime_env={"working_dir": str(work),
                     "env_vars": {**s3_server.env, "NODE_LOCAL_DIR": str(c.node_local_dir),
                                  "S3_BUCKET": s3_server.bucket,
                                  "HEAD_ONLY_FILE": str(work / "probe.py")}},
        timeout=300)
    print(f"\njob {job_id} {status} in {time.time() - t0:.1f} s")
    assert status == "SUCCEEDED", logs[-5000:]
    probe = json.loads([ln for ln in logs.splitlines() if ln.startswith("PROBE ")][-1][6:])
    worker, head = probe["worker"], probe["head"]
    assert probe["write_nodes"] == [c.worker_node_id, c.head_node_id]
    assert worker["node"] == c.worker_node_id and head["node"] == c.head_node_id
    assert probe["driver_node"] == c.head_node_id
    # Same path, two filesystems: each node sees its own file only.
    assert worker["own"] and not worker["other"] and worker["listing"] == ["from-worker"]
    assert head["own"] and not head["other"] and head["listing"] == ["from-head"]
    assert sorted(p.name for p in c.node_local_dir.iterdir()) == ["from-head"]  # this process
    # pytest's tmp dirs are hidden from the second node too.
    assert head["head_only"] and not worker["head_only"]
    # Shared object storage: written on the second node, read on the head.
    assert probe["put_node"] == c.worker_node_id and probe["get_node"] == c.head_node_id
    assert probe["text"] == "via-s3"
    assert "shared/probe.txt" in s3_server.keys("shared/")


def _upload_sample(s3_server, tmp_path) -> tuple[str, str]:
    """Sample shards into the bucket: the second node cannot see pytest's temp dir."""
    from components.sample.images import write_image_pairs

    local = tmp_path / "sample"
    write_image_pairs(str(local), pairs=160, size=32, shards=2, seed=0)
    pa_fs = s3_server.filesystem()
    for split in ("train", "eval"):
        for p in sorted((local / split).glob("*.parquet")):
            with pa_fs.open_output_stream(f"{s3_server.bucket}/data/{split}/{p.name}") as f:
                f.write(p.read_bytes())
    return s3_server.uri("data/train"), s3_server.uri("data/eval")


@pytest.mark.timeout(1500)  # above the two jobs' own deadlines (900 s + 300 s), which report logs
def test_run_image_as_a_job_on_two_nodes_with_s3_storage(no_leaks, two_node_cluster, s3_server,
                                                         s3_mlflow_server, tmp_path, monkeypatch):
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from components.runtime import storage

    c = two_node_cluster
    no_leaks.update(temp_root=c.temp_root, tmpfs_source=c.tmpfs_source)
    train, evals = _upload_sample(s3_server, tmp_path)
    run_root = s3_server.uri("runs")
    base = (f"{sys.executable} -m pipelines run image --train {train} --eval {evals} "
            f"--epochs 2 --tracking-uri {s3_mlflow_server.uri} --experiment two-nodes "
            "--model-name two-node-scorer data.image_size=32 train.batch_size=16 "
            # Decode actors on the second node, the training worker on the head.
            "preprocess.node_resource=worker_node train.node_resource=head "
            # Sharded training state: DCP shards written to, and read back from, the bucket.
            "train.strategy=fsdp")
    from two_nodes import REPO, job_excludes

    # Uploaded as `make submit` uploads it: without the Makefile's JOB_EXCLUDES.
    env = {"working_dir": str(REPO), "excludes": job_excludes(),
           "env_vars": dict(s3_server.env)}
    t0 = time.time()
    job_id, status, logs = c.run_job(f"{base} --storage {run_root} --run-name two-nodes",
                                     runtime_env=env, timeout=900)
    print(f"\njob {job_id} {status} in {time.time() - t0:.1f} s")
    assert status == "SUCCEEDED", logs[-6000:]
    summary = json.loads([ln for ln in logs.strip().splitlines() if ln.startswith("{")][-1])
    assert summary["status"] == "ok" and summary["model_version"] == "1", summary
    for split in ("train", "eval"):
        r = summary["rows"][split]
        assert r["read"] == r["used"] + r["quarantined"] + r["excluded"] and r["read"] > 0
    assert summary["rows"]["train"]["read"] + summary["rows"]["eval"]["read"] == 160

    run_dir = summary["output_dir"]
    assert run_dir == f"{run_root}/two-nodes"
    for k, v in s3_server.env.items():  # for this test only: later tests set their own
        monkeypatch.setenv(k, v)
    files = storage.list_files(run_dir)
    assert any("/ray_results/" in f and f.endswith("/state.pt") for f in files), files[:20]
    assert any("/ray_results/" in f and f.endswith("/sharded/.metadata") for f in files)
    assert any("/ray_results/" in f and f.endswith("/sharded/__0_0.distcp") for f in files)
    assert any("/ray_results/" in f and f.endswith("/weights.pt") for f in files)  # merged
    assert f"{run_dir}/quarantine.parquet" in files
    assert any(f.startswith(f"{run_dir}/prepared/train/") for f in files)

    # Decode actors and the training worker ran on different nodes (their pinning reports,
    # written to the bucket, name the node).
    reports = [storage.read_json(f) for f in files if "/pinning/" in f and f.endswith(".json")]
    nodes = {r["role"]: r["node_id"] for r in reports}
    assert nodes.get("preprocess") == c.worker_node_id, reports
    assert nodes.get("train") == c.head_node_id, reports

    # The registered model loads by alias through the server (artifacts in the same bucket).
    # (The registry URI too: an earlier test of the session may have pointed it elsewhere.)
    mlflow.set_tracking_uri(s3_mlflow_server.uri)
    mlflow.set_registry_uri(s3_mlflow_server.uri)
    model = mlflow.pyfunc.load_model("models:/two-node-scorer@champion")
    from tests.media_bytes import photo_bytes

    assert model.predict(pd.DataFrame({"image": [photo_bytes(32)]})).shape == (1,)
    client = MlflowClient(s3_mlflow_server.uri)
    assert any(k.endswith("MLmodel") for k in s3_server.keys("mlflow/"))
    assert client.get_run(summary["run_id"]).data.tags["visual_dpo.run_dir"] == run_dir

    # The same job with node-local run state fails fast, before any work, saying what to set.
    local = c.node_local_dir / "runs"
    job_id, status, logs = c.run_job(f"{base} --output-dir {local} --run-name local",
                                     runtime_env=env, timeout=300)
    assert status == "FAILED", logs[-3000:]
    assert "--storage s3://" in logs and "storage.shared=true" in logs
    assert not local.exists()
