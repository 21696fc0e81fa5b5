"""Every command's Ray resource plan is checked against the cluster before any work: it fits,
or it fails at once naming the setting to change. The defaults fit a 2-CPU machine."""

from __future__ import annotations

import json
import time

import pytest

from components.config import PreprocessConfig, TrainConfig, load_config
from components.runtime.resources import (
    ResourcePlanError,
    check,
    evaluate_phases,
    run_phases,
    score_phases,
)
from pipelines.__main__ import main

TWO_CPUS = {"CPU": 2.0}


@pytest.mark.parametrize("loss_type", ["bt", "dpo"])
def test_the_default_plans_fit_a_two_cpu_machine(loss_type):
    cfg = load_config(None, ["data.train=x", f"loss.type={loss_type}"])
    check(run_phases(cfg.preprocess, cfg.train, use_gpu=False), TWO_CPUS)
    check(evaluate_phases(cfg.preprocess), TWO_CPUS)
    check(score_phases(cfg.preprocess, use_gpu=False), TWO_CPUS)


def test_a_plan_that_cannot_fit_names_every_setting_to_change():
    with pytest.raises(ResourcePlanError) as e:
        check(run_phases(PreprocessConfig(actors=2), TrainConfig(workers=2), False),
              TWO_CPUS)
    text = str(e.value)
    assert "prepare (decode actors) needs 3 CPUs" in text and "preprocess.actors" in text
    assert "train (Ray Train workers) needs 3 CPUs" in text and "train.workers" in text
    with pytest.raises(ResourcePlanError, match="needs 2 GPUs but the Ray cluster has 1"):
        check(run_phases(PreprocessConfig(), TrainConfig(workers=2), True),
              {"CPU": 16.0, "GPU": 1.0})
    # Streaming: one decode actor next to one 1-CPU trainer and a read task is 2.5 CPUs; the
    # message says what to lower (or to cache the decoded pairs instead).
    with pytest.raises(ResourcePlanError, match="streaming .* needs 2.5 CPUs.*data.cache=decoded"):
        check(run_phases(PreprocessConfig(), TrainConfig(), False, streaming=True), TWO_CPUS)
    check(run_phases(PreprocessConfig(), TrainConfig(cpus_per_worker=0.5), False, streaming=True),
          TWO_CPUS)
    # The score command's plan used to need 2.5 CPUs (read tasks + decode + model actor).
    check(score_phases(PreprocessConfig(), use_gpu=False), TWO_CPUS)
    with pytest.raises(ResourcePlanError, match="preprocess.cpus_per_actor"):
        check(score_phases(PreprocessConfig(cpus_per_actor=2), use_gpu=False), TWO_CPUS)


@pytest.mark.slow
def test_run_fails_at_once_on_a_plan_the_cluster_cannot_schedule(ray_cluster, sample_dir, tmp_path, tracking_uri, capsys):
    summary = tmp_path / "s.json"
    rc = main(["run", "image", "--train", str(sample_dir / "train"), "--tracking-uri",
               tracking_uri, "--output-dir", str(tmp_path / "out"), "--summary", str(summary),
               "preprocess.actors=3"])
    capsys.readouterr()
    s = json.loads(summary.read_text())
    assert rc == 2 and "preprocess.actors" in s["reason"] and "cannot be scheduled" in s["reason"]
    assert not (tmp_path / "out").exists()  # nothing ran


def test_use_gpu_auto_counts_gpu_nodes_the_autoscaler_can_add(ray_cluster, monkeypatch, caplog):
    """No GPU node is up: with an autoscaler whose node types have GPUs, auto means GPU (Ray
    Train waits for the node); without one it trains on CPU and says so. The autoscaler's
    published config is read through components.runtime.cluster (no autoscaler runs here, so
    its answer is substituted)."""
    import logging

    from components.runtime import cluster
    from components.training.trainer import resolve_use_gpu

    auto = TrainConfig(use_gpu="auto")
    with caplog.at_level(logging.WARNING):
        assert resolve_use_gpu(auto) is False
    assert "training on CPU" in caplog.text
    assert cluster.autoscaler_max_resources() == {}  # a local cluster publishes no node types
    monkeypatch.setattr(cluster, "autoscaler_max_resources", lambda: {"CPU": 64.0, "GPU": 8.0})
    assert resolve_use_gpu(auto) is True
    assert cluster.cluster_resources()["GPU"] == 8.0  # the resource plan counts them too
    assert resolve_use_gpu(TrainConfig(use_gpu="false")) is False


def test_the_clusters_own_state_api_answers_for_its_live_actors(ray_cluster, tmp_path):
    """Ray Train's PlacementGroupCleaner (an actor of every run) asks the state API each
    second whether the run's controller is alive, and removes the run's placement group when
    the answer is not "alive". Asked from inside the test cluster, as the cleaner asks, with
    another Ray instance up on the machine (as the other xdist worker's cluster and the job
    tests' are), the state API must be this cluster's own and know a live actor. Asked with no
    address, a worker instead fails with "Found multiple active Ray instances", and a cluster
    without a dashboard asks 127.0.0.1:8265, where another cluster may answer "no such actor"
    (tests/conftest.py, ray_cluster)."""
    import shutil
    import sys
    import tempfile
    from pathlib import Path

    from tests.two_nodes import Managed, free_ports, ray_node_ports

    ray = ray_cluster

    @ray.remote(num_cpus=0)
    class Alive:
        def ping(self) -> int:
            return 1

    @ray.remote(num_cpus=0)
    def state_of(actor_id: str) -> str | None:
        from ray.util.state import get_actor

        found = get_actor(actor_id, timeout=30)
        return None if found is None else found.state

    # Another Ray instance on the machine: a bare head, no CPUs, no dashboard.
    gcs, client = free_ports(2)
    short = tempfile.mkdtemp(prefix="vdpo-other-", dir="/tmp")  # socket paths < 107 bytes
    other = Managed([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                     f"--port={gcs}", "--num-cpus=0", "--include-dashboard=false",
                     f"--ray-client-server-port={client}", f"--temp-dir={short}",
                     *[f"--{k}={v}" for k, v in ray_node_ports().items()]],
                    tmp_path / "other-head.log", name="other-ray-head")
    actor = Alive.remote()
    try:
        deadline = time.time() + 60
        while not list(Path(short).glob("session_*/sockets/raylet")):
            assert other.alive() and time.time() < deadline, (tmp_path / "other-head.log").read_text()
            time.sleep(0.5)
        assert ray.get(actor.ping.remote()) == 1
        assert ray.get(state_of.remote(actor._actor_id.hex())) == "ALIVE"
    finally:
        ray.kill(actor)
        other.stop()
        shutil.rmtree(short, ignore_errors=True)
