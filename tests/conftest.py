"""Shared fixtures: one real local Ray cluster per session, real sample data, real MLflow.

Tests that start Ray are marked `ray` here, from the fixtures they use (RAY_FIXTURES), so
`pytest -m "not slow and not ray"` (`make test-fast`) runs without Ray. A session that selects
no `ray` test enforces that: `ray.init` raises, and a test phase after which Ray is initialised
or a raylet runs under this process fails, naming the test to mark. Media helpers (`encode`,
`photo_bytes`) are in tests/media_bytes.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.xdist_groups import xdist_group

# Fixtures that start a Ray cluster or connect to one: ray_cluster (here, ray.init in this
# process), ray_head (tests/test_job.py, `ray start --head`), two_node_cluster
# (tests/two_nodes.py). Every test that runs the workflow (`main(["run" | "evaluate" |
# "score", ...])` past its up-front checks, which call ensure_ray) uses ray_cluster.
RAY_FIXTURES = frozenset({"ray_cluster", "ray_head", "two_node_cluster"})

# Ray Train settings for every cluster the tests start (this process's, `ray start` heads,
# job drivers and CLI subprocesses inherit the environment; Ray Train propagates these to its
# controller and workers). On one test machine: no preemption watcher (an actor process per
# run that polls node draining, which never happens here: about 3.5 CPU-seconds a run on 2
# cores), and the controller polls its workers every 0.5 s instead of 2 s, so a finished or
# killed worker is noticed sooner. And a node keeps up to 6 idle worker processes for reuse
# (Ray's default keeps as many as it has CPUs, 2 here, and kills the rest after 1 s): the short
# read, filter and shuffle tasks between the actor pools then reuse a process instead of
# starting a new one (about 3 CPU-seconds each). Measured on the image workflow test alone:
# 102 s -> 96 s, CPU of task-worker processes 34.6 -> 17.8 s (and with score's one-partition
# ranking, 80 s at a limit of 6 or 12). And no Prometheus metrics (Ray's own, which nothing
# here reads): an idle 2-CPU cluster used 5.1 CPU-seconds a minute with them and 4.5 without,
# and an image workflow run (the second in its process) 42.6 against 41.0 CPU-seconds.
# None of these changes what training does.
TEST_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
                "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
                "RAY_num_workers_soft_limit": "6",
                "RAY_enable_metrics_collection": "0"}
for _key, _value in TEST_RAY_ENV.items():
    os.environ.setdefault(_key, _value)
# Every `mlflow server` the tests start (they inherit this) runs without MLflow 3's job runner:
# the project submits no server jobs, and its `huey_consumer` processes, started with each
# server and polling while idle, used 71 CPU-seconds (21 processes) in the last 12 minutes
# of one full run (docs/cluster.md).
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")

# pytest-xdist 3.8 on pytest 9.2 ignores `xdist_group` (pytest-dev/pytest-xdist#1386: the
# worker appends the group to the node id, which pytest 9.2 no longer lets it change). Until
# that is fixed, each worker writes every test's group to a file and the controller schedules
# by it, as `--dist loadgroup` would.
_GROUPS_FILE = "visual_dpo_xdist_groups"  # the worker input naming that file
_GROUPS_PATH = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    groups = {}
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if RAY_FIXTURES.intersection(fixtures):
            item.add_marker(pytest.mark.ray)
        group = xdist_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
            groups[item.nodeid] = group
    path = getattr(config, "workerinput", {}).get(_GROUPS_FILE)
    if path:  # an xdist worker (each writes the same, whole)
        tmp = f"{path}.{os.getpid()}"
        Path(tmp).write_text(json.dumps(groups))
        os.replace(tmp, path)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist controller, per worker: the file that worker writes the groups to."""
    config = node.config
    if _GROUPS_PATH not in config.stash:
        fd, path = tempfile.mkstemp(prefix="xdist-groups-", suffix=".json")
        os.close(fd)
        config.stash[_GROUPS_PATH] = path
        config.add_cleanup(lambda: Path(path).unlink(missing_ok=True))
    node.workerinput[_GROUPS_FILE] = config.stash[_GROUPS_PATH]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class MarkedGroupScheduling(LoadGroupScheduling):
        """`--dist loadgroup` with the groups the workers wrote, read when the controller
        first splits the tests into units (every worker has collected by then)."""

        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                self.groups = json.loads(Path(config.stash[_GROUPS_PATH]).read_text() or "{}")
            return self.groups.get(nodeid) or super()._split_scope(nodeid)

    return MarkedGroupScheduling(config, log)


def pytest_collection_finish(session):
    """No selected test is marked `ray`: starting Ray in this session is an error."""
    if session.items and not any(i.get_closest_marker("ray") for i in session.items):
        _forbid_ray(session.config)


_RAY_FORBIDDEN = pytest.StashKey[dict]()


def _forbid_ray(config) -> None:
    """`ray.init` raises, and records the call: code under test may catch the error (the
    workflow turns it into a failed run), the check after the test phase still reports it."""
    import ray

    state = {"calls": [], "reported": set()}

    def refuse(*args, **kwargs):
        state["calls"].append("ray.init was called")
        raise RuntimeError("ray.init in a session that selected no `ray` test (make test-fast): "
                           "a test that starts Ray must use ray_cluster (tests/conftest.py)")

    config.stash[_RAY_FORBIDDEN] = state
    mp = pytest.MonkeyPatch()
    mp.setattr(ray, "init", refuse)
    config.add_cleanup(mp.undo)


def _ray_nodes() -> dict[int, str]:
    """Ray node processes (raylet, gcs_server) among this process's descendants, by pid."""
    import psutil

    found = {}
    for p in psutil.Process().children(recursive=True):
        try:
            if p.name() in ("raylet", "gcs_server"):
                found[p.pid] = f"{p.name()} (pid {p.pid})"
        except psutil.Error:
            pass
    return found


def _check_ray_free(item, phase: str) -> None:
    state = item.config.stash.get(_RAY_FORBIDDEN, None)
    if state is None:
        return
    started, state["calls"][:] = list(state["calls"]), []
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        started.append("ray.is_initialized() is True")
        ray.shutdown()
    nodes = {pid: what for pid, what in _ray_nodes().items() if pid not in state["reported"]}
    state["reported"].update(nodes)  # reported once, not again by every later test
    started += nodes.values()
    if started:
        pytest.fail(f"{item.nodeid} ({phase}) started Ray in a session that selected no `ray` "
                    f"test: {'; '.join(started)}. A test that starts Ray must use ray_cluster "
                    "(or another of RAY_FIXTURES in tests/conftest.py), which marks it `ray`.",
                    pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    try:
        return (yield)
    finally:
        _check_ray_free(item, "setup")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    finally:
        _check_ray_free(item, "call")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    try:
        return (yield)
    finally:
        _check_ray_free(item, "teardown")


@pytest.fixture(scope="session")
def fault_plan_path(tmp_path_factory) -> Path:
    """Where the test-only fault hook of the training worker looks for its plan
    (components/training/worker.py); set in the environment before Ray starts its workers."""
    from components.runtime import test_faults

    path = tmp_path_factory.mktemp("faults") / "plan.json"
    os.environ[test_faults.ENV] = str(path)
    return path


@pytest.fixture
def fail_training_once(fault_plan_path, tmp_path):
    """Call with an epoch: rank 0 fails once at the start of that epoch (marker: the path
    returned, written when the failure fires). The plan is removed after the test."""

    def arm(epoch: int) -> Path:
        marker = tmp_path / "injected-failure"
        fault_plan_path.write_text(json.dumps({"epoch": epoch, "marker": str(marker)}))
        return marker

    yield arm
    fault_plan_path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def ray_cluster(fault_plan_path):
    """A real local Ray cluster sized like the machine a user runs on: 2 CPUs, not more, so a
    resource plan that cannot be scheduled on it shows up here (as the plan check's error, or
    as a hang the test timeout reports), not on a user's laptop."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # With a dashboard of its own (a free port, loopback): Ray Train's PlacementGroupCleaner
    # asks the state API every second whether the run's controller is alive. A cluster
    # without a dashboard still records 127.0.0.1:8265 as its API server, so when another
    # cluster's dashboard holds that port (the lease-race test's subprocess runs start one,
    # while this cluster trains) the answer comes from that cluster: no such actor, read as
    # a dead controller, and the live run's placement group is removed ("Destroying worker
    # since its placement group was removed"). Measured from a task on this cluster:
    # get_actor(live actor) raised ServerUnavailable alone and returned None with another
    # cluster's dashboard on 8265; with its own dashboard, ALIVE in both cases.
    # The cluster's workers are told where that state API is (RAY_API_SERVER_ADDRESS, in the
    # environment of the raylet that starts them): asked with no address, a worker looks for
    # the machine's Ray instance, and with another cluster up (the other xdist worker's, a job
    # test's) it fails with "Found multiple active Ray instances" (seen in a full run). Set
    # only while ray.init starts the cluster, so that the clusters this process starts later
    # (`ray start` in tests/test_job.py, tests/two_nodes.py) do not inherit it.
    # Ray Serve's ingress as `visual-dpo serve` starts a local cluster (settings.ingress=auto:
    # HAProxy here), so the reward-service tests go through the ingress users get.
    from components.serving.service import ingress_env, scoped_environ

    port = _free_port()
    with scoped_environ({"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}",
                         **ingress_env("auto")}):
        ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                 dashboard_port=port, log_to_driver=False)
    from components.runtime.cluster import ensure_ray

    ensure_ray()  # the pipelines' Ray Data settings, on the cluster just started
    try:
        yield ray
    finally:
        _shutdown_leaving_nothing(ray)


def _shutdown_leaving_nothing(ray) -> None:
    """``ray.shutdown()``, then end whatever the cluster started that is still running 10 s
    later: in one full run a Ray Train controller whose core worker had shut down stayed
    alive for an hour, holding 800 MB (its Python exit waited on a thread)."""
    import psutil

    started = [p for p in psutil.Process().children(recursive=True) if _is_ray(p)]
    ray.shutdown()
    _, alive = psutil.wait_procs(started, timeout=10)
    for p in alive:
        try:
            sys.stderr.write(f"ray_cluster teardown: killing {p.pid} {p.name()}, still running\n")
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)


def _is_ray(p) -> bool:
    """A process of a Ray node: GCS, raylet, a worker (``ray::...``), dashboard, monitors,
    Serve's HAProxy."""
    import psutil

    try:
        cmd = p.cmdline()
        return p.name() in ("raylet", "gcs_server", "haproxy") or bool(cmd) and (
            cmd[0].startswith(("ray::", "ray-dashboard")) or
            any("site-packages/ray/" in a for a in cmd[:3]))
    except psutil.Error:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    """Canonical sample pairs from the scikit-image photos (train/eval photos disjoint)."""
    from components.sample.images import write_image_pairs

    d = tmp_path_factory.mktemp("sample")
    write_image_pairs(str(d), pairs=240, size=48, shards=2, seed=0)
    return d


@pytest.fixture(scope="session")
def _tracking_store_template(tmp_path_factory) -> Path:
    """An empty sqlite tracking store with MLflow's schema, created once per session: MLflow
    creates and migrates the tables of a new store file (1.0-2.2 s on 2 cores), which every
    test's own store would otherwise repeat. Runs that create their store themselves (the CLI
    and job subprocesses, the demo) still take that path."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(tmp_path, _tracking_store_template):
    """A test's own sqlite tracking store: a copy of the session's empty, migrated one."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(_tracking_store_template, db)
    return f"sqlite:///{db}"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server`: sqlite backend store, local artifacts destination."""
    d = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    proc = subprocess.Popen(
        [mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}",
         "--artifacts-destination", str(d / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=open(d / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        raise RuntimeError((d / "server.log").read_text())
    yield uri
    proc.terminate()
    proc.wait(30)
