"""Fixtures for a real two-node setup on one machine: an S3 server (moto), an `mlflow server`
whose artifacts live in that S3 bucket, and a Ray cluster of two nodes (a head and a second
node joined to it) that do NOT share a filesystem path.

The second node runs in its own mount namespace (`unshare -m --propagation private`, needs
root) with a private tmpfs mounted on `node_local_dir`: the head and the second node both
write to that path, and neither sees the other's files, as on two machines. Everything that
must be shared goes through the S3 bucket, as it would on a real cluster.

Use from a test module (tests/ has no __init__.py; pytest puts tests/ on sys.path):

    pytest_plugins = ["two_nodes"]  # fixtures s3_server, s3_mlflow_server, two_node_cluster

and import helpers (`from two_nodes import ...`) inside the tests, not at module level
(a module imported before pytest loads it as a plugin is not assertion-rewritten).

Every process started here runs in its own session (process group) and is killed, with all
its descendants, at teardown, also when the test fails. Nothing here runs `ray stop` (that
would kill every Ray process on the machine, including the test session's own cluster).
The Ray nodes use their own temp dirs and explicit ports, so they do not collide with
conftest's `ray_cluster` (`ray.init(num_cpus=2)`) or test_job.py's head in the same session.

Without root, unshare(1) or moto these tests skip, naming what is missing; where CI is set or
VISUAL_DPO_REQUIRE_TWO_NODES=1 (.ci/run sets it) they fail instead.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import psutil
import pytest

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
BUCKET = "vdpo-test"
REQUIRED_ENV = "VISUAL_DPO_REQUIRE_TWO_NODES"


# -- prerequisites and the job upload -------------------------------------------------------


def two_nodes_required() -> bool:
    """CI (`CI` set, as CI services do) or VISUAL_DPO_REQUIRE_TWO_NODES=1 (.ci/run): these
    tests must run, so a missing prerequisite is a failure, not a skip."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false")
    return ci or os.environ.get(REQUIRED_ENV) == "1"


def missing_prerequisite(what: str) -> NoReturn:
    """Skip the test, naming what is missing; fail instead where two_nodes_required()."""
    if two_nodes_required():
        pytest.fail(f"two-node tests cannot run: {what}. They are required here (CI or "
                    f"{REQUIRED_ENV}=1 is set), so this is a failure, not a skip.",
                    pytrace=False)
    pytest.skip(what)


def job_excludes(makefile: Path = REPO / "Makefile") -> list[str]:
    """What `make submit` leaves out of a job's upload: the Makefile's JOB_EXCLUDES (a JSON
    list on one line), so a job test uploads what a user's submission uploads."""
    for line in makefile.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == "JOB_EXCLUDES":
            return json.loads(value)
    raise AssertionError(f"no `JOB_EXCLUDES = [...]` line in {makefile}")


# -- processes -----------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def free_port_block(size: int) -> int:
    """First port of `size` consecutive free ports below the ephemeral range (for Ray's
    --min-worker-port/--max-worker-port: two raylets must not hand out the same ports)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - size, 10)
        socks = []
        try:
            for p in range(base, base + size):
                s = socket.socket()
                socks.append(s)
                s.bind(("", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no block of {size} free ports")


class Managed:
    """A process started in its own session; `stop()` kills its process group and every
    descendant (Ray's raylet and workers may leave the group), TERM first, then KILL."""

    def __init__(self, cmd, log: Path, env=None, name: str = ""):
        self.name = name or Path(cmd[0]).name
        self.log = log
        self.proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT)
        self._seen: dict[int, psutil.Process] = {}
        self.remember()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def remember(self) -> None:
        """Record the current process tree (call once it is up: children that outlive a dead
        parent are re-parented and can no longer be found from it)."""
        try:
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                self._seen.setdefault(p.pid, p)
        except psutil.Error:
            pass

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _members(self) -> list[psutil.Process]:
        found = dict(self._seen)
        try:
            root = psutil.Process(self.proc.pid)
            for p in root.children(recursive=True):
                found.setdefault(p.pid, p)
        except psutil.Error:
            pass
        for p in psutil.process_iter():  # same session, even if re-parented
            try:
                if os.getsid(p.pid) == self.proc.pid:
                    found.setdefault(p.pid, p)
            except (OSError, psutil.Error):
                pass
        live = []
        for p in found.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    live.append(p)
            except psutil.Error:
                pass
        return live

    def stop(self, grace: float = 20) -> None:
        """TERM the leader (`ray start --block` shuts its node down itself), then TERM and
        finally KILL whatever of the group and the recorded tree is left. A zombie counts as
        gone (in a container pid 1 may never reap re-parented children)."""
        self.remember()
        t0 = time.time()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        leader = time.time() - t0
        left = self._members()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except OSError:
            pass
        for p in left:
            try:
                p.terminate()
            except psutil.Error:
                pass
        deadline = time.time() + 5
        while left and time.time() < deadline:
            time.sleep(0.2)
            left = self._members()
        self.stop_report = (f"{self.name}: leader exited in {leader:.1f} s; "
                            f"killed after TERM: {[_name(p) for p in left]}")
        for p in left:
            try:
                p.kill()
            except psutil.Error:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def _name(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline()[:2])[-80:] or p.name()
    except psutil.Error:
        return str(p.pid)


def wait_http(url: str, proc: Managed, timeout: float = 90, headers=None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=3) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        time.sleep(0.5)
    raise RuntimeError(f"{proc.name} not up at {url} after {timeout} s:\n{proc.tail()}")


# -- S3 ------------------------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint_url: str  # http://127.0.0.1:PORT
    bucket: str
    env: dict[str, str]  # AWS_* variables for boto3/MLflow/pyarrow.fs.FileSystem.from_uri

    @property
    def endpoint(self) -> str:  # host:port, for pyarrow's endpoint_override
        return self.endpoint_url.split("://", 1)[1]

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key.lstrip('/')}"

    def filesystem(self):
        """pyarrow's S3FileSystem on this server (S3FileSystem() itself ignores
        AWS_ENDPOINT_URL; FileSystem.from_uri honours it in pyarrow 25)."""
        from pyarrow import fs

        return fs.S3FileSystem(endpoint_override=self.endpoint, scheme="http",
                               access_key="testing", secret_key="testing", region="us-east-1")

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


def s3_env(endpoint_url: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ENDPOINT_URL_S3": endpoint_url,
        "MLFLOW_S3_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with one bucket (`vdpo-test`)."""
    missing = [m for m in ("moto", "boto3") if importlib.util.find_spec(m) is None]
    if missing or not (BIN / "moto_server").exists():
        missing_prerequisite(f"needs the test extra's moto[server] and boto3 (missing: "
                             f"{', '.join(missing or [str(BIN / 'moto_server')])}): "
                             "pip install -e '.[test]'")
    d = tmp_path_factory.mktemp("s3")
    (port,) = free_ports(1)
    proc = Managed([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                   d / "moto.log", name="moto_server")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/moto-api/", proc, timeout=60)
        server = S3Server(url, BUCKET, s3_env(url))
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        proc.stop()


# -- MLflow --------------------------------------------------------------------------------


@dataclass
class MlflowServer:
    uri: str  # http://127.0.0.1:PORT, the tracking and registry URI
    artifact_uri: str  # s3://bucket/prefix where the server (or clients) put artifacts
    proxied: bool  # True: clients upload over HTTP to the server, which writes to S3
    process: Managed = field(repr=False)


def start_mlflow_server(d: Path, s3: S3Server, prefix: str = "mlflow",
                        proxied: bool = True) -> MlflowServer:
    """proxied=True: `--artifacts-destination s3://...` (served artifacts, the default in
    MLflow 3): clients upload to the server over HTTP (`mlflow-artifacts:/` URIs), the server
    writes to S3 with boto3; clients need no S3 credentials.
    proxied=False: `--default-artifact-root s3://... --no-serve-artifacts`: clients upload
    straight to S3 with boto3, so every client needs the S3 env vars."""
    (port,) = free_ports(1)
    artifact_uri = s3.uri(prefix)
    store = ["--artifacts-destination", artifact_uri] if proxied else [
        "--default-artifact-root", artifact_uri, "--no-serve-artifacts"]
    proc = Managed(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}",
         *store, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        d / "server.log", env={**os.environ, **s3.env}, name="mlflow-server")
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(uri + "/health", proc, timeout=120)
    except BaseException:
        proc.stop()
        raise
    return MlflowServer(uri, artifact_uri, proxied, proc)


@pytest.fixture(scope="session")
def s3_mlflow_server(tmp_path_factory, s3_server):
    """`mlflow server` with sqlite in tmp and proxied artifacts in s3://vdpo-test/mlflow."""
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-s3"), s3_server)
    try:
        yield server
    finally:
        server.process.stop()


# -- Ray: two nodes ------------------------------------------------------------------------


@dataclass
class TwoNodeCluster:
    gcs_address: str  # 127.0.0.1:PORT (ray.init(address=...) / ray start --address)
    dashboard_url: str  # http://127.0.0.1:PORT (JobSubmissionClient)
    token: str
    auth_env: dict[str, str]  # RAY_AUTH_MODE, RAY_AUTH_TOKEN
    head_node_id: str
    worker_node_id: str
    node_local_dir: Path  # same path on both nodes, different filesystems
    temp_root: Path  # /tmp/vdpo2n-XXXX: both nodes' temp dirs (h/, w/) and node-local/
    tmpfs_source: str  # the second node's tmpfs, as listed in /proc/PID/mounts
    hidden: list[Path]  # more paths the second node sees as empty tmpfs
    head: Managed = field(repr=False)
    worker: Managed = field(repr=False)
    client: object = field(repr=False)  # ray.job_submission.JobSubmissionClient

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def nodes(self) -> list[dict]:
        return alive_nodes(self.dashboard_url, self.headers)

    def run_job(self, entrypoint: str, runtime_env: dict | None = None,
                timeout: float = 600, **kw) -> tuple[str, str, str]:
        """Submit, wait for a terminal state; returns (job_id, status, logs)."""
        from ray.job_submission import JobStatus

        job_id = self.client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, **kw)
        deadline = time.time() + timeout
        status = self.client.get_job_status(job_id)
        while time.time() < deadline and not status.is_terminal():
            time.sleep(1)
            status = self.client.get_job_status(job_id)
        if not status.is_terminal():
            self.client.stop_job(job_id)
        logs = self.client.get_job_logs(job_id)
        return job_id, JobStatus(status).value, logs


def alive_nodes(dashboard_url: str, headers: dict) -> list[dict]:
    req = urllib.request.Request(dashboard_url + "/api/v0/nodes?detail=1&limit=100",
                                 headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        body = json.load(r)
    return [n for n in body["data"]["result"]["result"] if n["state"] == "ALIVE"]


def ray_node_ports() -> dict[str, int]:
    names = ["node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    base = free_port_block(100)
    ports["min-worker-port"], ports["max-worker-port"] = base, base + 99
    return ports


def count_raylets(marker: str | None = None) -> int:
    """Raylet processes on this machine (whoever started them), or only those whose command
    line mentions `marker` (a cluster's temp dir)."""
    n = 0
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            if (p.info["name"] == "raylet" or cmd[:1] and cmd[0].endswith("/raylet")) and (
                    marker is None or any(marker in a for a in cmd)):
                n += 1
        except psutil.Error:
            pass
    return n


def processes_mentioning(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(
                    marker in a for a in p.info["cmdline"] or []):
                found.append(p)
        except psutil.Error:
            pass
    return found


def mounts_named(source: str) -> list[str]:
    """/proc/PID/mounts files (any mount namespace) that still list a mount of `source`."""
    found = []
    for path in glob.glob("/proc/[0-9]*/mounts"):
        try:
            with open(path) as f:
                if any(line.split(" ", 1)[0] == source for line in f):
                    found.append(path)
        except OSError:
            pass
    return found


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory):
    """A Ray head (`--resources={"head": 1}`, 1 CPU, token auth, dashboard) and a second node
    (`{"worker_node": 1}`, 1 CPU) joined to it, started inside `unshare -m` with a private
    tmpfs on `node_local_dir` and another over pytest's base temp dir. Object store 256 MB per
    node. For other sizes, use
    `start_two_node_cluster(...)` in a fixture of your own."""
    missing = [what for what, ok in [
        (f"root (running as uid {os.geteuid()})", os.geteuid() == 0),
        ("unshare(1) (util-linux; not on PATH)", shutil.which("unshare") is not None)] if not ok]
    if missing:
        missing_prerequisite(f"needs {' and '.join(missing)} for the second node's mount "
                             "namespace")
    # The second node sees pytest's base temp dir empty: what tests write there (sample data,
    # tmp_path) is on the head only, as on a real cluster.
    with start_two_node_cluster(tmp_path_factory.mktemp("two-nodes"),
                                hide=[tmp_path_factory.getbasetemp()]) as cluster:
        yield cluster


@contextlib.contextmanager
def start_two_node_cluster(logs: Path, head_cpus: int = 1, worker_cpus: int = 1,
                           object_store_mb: int = 256, tmpfs_mb: int = 256,
                           extra_env: dict[str, str] | None = None,
                           hide: list[Path] = ()):
    """The cluster behind `two_node_cluster`; node logs (head.log, worker.log) go to `logs`.
    `extra_env` is added to both nodes' environment (and so to every worker and job).
    `hide`: more directories the second node sees empty (an empty tmpfs over each), e.g.
    pytest's base temp dir, so files a test writes there exist on the head only."""
    from ray.job_submission import JobSubmissionClient

    # Short temp dirs (socket paths < 107 bytes), one per node, outside /tmp/ray so a plain
    # ray.init() elsewhere in the session never finds this cluster (ray_current_cluster).
    root = Path(tempfile.mkdtemp(prefix="vdpo2n-", dir="/tmp"))
    head_tmp, worker_tmp = root / "h", root / "w"
    node_local = root / "node-local"
    for p in (head_tmp, worker_tmp, node_local):
        p.mkdir()
    token = secrets.token_hex(32)
    auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    # No 30 s drain on SIGTERM (`ray start --block` waits for the node to drain first).
    env = {**os.environ, **auth_env, "PATH": f"{BIN}:{os.environ['PATH']}",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", **(extra_env or {})}
    env.pop("RAY_ADDRESS", None)
    gcs, dash, client_port = free_ports(3)
    # Both nodes' workers ask this head's dashboard for actor states (tests/conftest.py).
    env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dash}"
    ray_bin = str(BIN / "ray")
    common = ["--block", "--num-gpus=0", "--node-ip-address=127.0.0.1",
              f"--object-store-memory={object_store_mb * 2**20}"]
    head_ports = ray_node_ports()
    head_cmd = [ray_bin, "start", "--head", *common, f"--num-cpus={head_cpus}", f"--port={gcs}",
                '--resources={"head": 1}', "--include-dashboard=true",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                f"--ray-client-server-port={client_port}", f"--temp-dir={head_tmp}",
                *[f"--{k}={v}" for k, v in head_ports.items()]]
    worker_ports = ray_node_ports()
    worker_cmd = [ray_bin, "start", f"--address=127.0.0.1:{gcs}", *common,
                  f"--num-cpus={worker_cpus}",
                  '--resources={"worker_node": 1}', f"--temp-dir={worker_tmp}",
                  *[f"--{k}={v}" for k, v in worker_ports.items()]]
    # The mount is private to the namespace: it disappears with the last process in it.
    tmpfs = f"vdpo-{root.name}"  # the mount's source name: unique, findable in /proc/*/mounts
    mounts = " && ".join(f"mount -t tmpfs -o size={tmpfs_mb}m {tmpfs} {shlex.quote(str(d))}"
                         for d in [node_local, *hide])
    shell = f"{mounts} && exec {shlex.join(worker_cmd)}"
    unshare = ["unshare", "--mount", "--propagation", "private", "sh", "-c", shell]

    dashboard_url = f"http://127.0.0.1:{dash}"
    headers = {"Authorization": f"Bearer {token}"}
    head = worker = None
    t0 = time.time()
    try:
        head = Managed(head_cmd, logs / "head.log", env=env, name="ray-head")
        client = None
        deadline = time.time() + 120
        while client is None:
            try:
                client = JobSubmissionClient(dashboard_url, headers=headers)
                client.list_jobs()
            except Exception:
                client = None
                if not head.alive():
                    raise RuntimeError("Ray head exited:\n" + head.tail()) from None
                if time.time() > deadline:
                    raise RuntimeError("Ray head did not come up:\n" + head.tail()) from None
                time.sleep(1)
        head.remember()
        t_head = time.time() - t0
        worker = Managed(unshare, logs / "worker.log", env=env, name="ray-worker-node")
        deadline = time.time() + 120
        nodes = []
        while len(nodes) < 2:
            if not worker.alive():
                raise RuntimeError("second Ray node exited:\n" + worker.tail())
            if time.time() > deadline:
                raise RuntimeError("second Ray node did not join:\n" + worker.tail())
            time.sleep(1)
            try:
                nodes = alive_nodes(dashboard_url, headers)
            except OSError:
                nodes = []
        head.remember()
        worker.remember()
        by_res = {("worker_node" if "worker_node" in n["resources_total"] else "head"): n
                  for n in nodes}
        cluster = TwoNodeCluster(
            temp_root=root, tmpfs_source=tmpfs, hidden=list(hide),
            gcs_address=f"127.0.0.1:{gcs}", dashboard_url=dashboard_url, token=token,
            auth_env=auth_env, head_node_id=by_res["head"]["node_id"],
            worker_node_id=by_res["worker_node"]["node_id"], node_local_dir=node_local,
            head=head, worker=worker, client=client)
        print(f"\ntwo-node cluster up: head {t_head:.1f} s, both {time.time() - t0:.1f} s; "
              f"gcs {gcs} dashboard {dash} head ports {head_ports} worker ports {worker_ports}")
        yield cluster
    finally:
        t1 = time.time()
        # Second node first: the head going away first makes it retry for a while.
        for m in (worker, head):
            if m is not None:
                m.stop()
        print(f"\ntwo-node cluster stopped in {time.time() - t1:.1f} s")
        for m in (worker, head):
            if m is not None:
                print(getattr(m, "stop_report", ""))
        leaks = processes_mentioning(str(root))
        for p in leaks:
            try:
                p.kill()
            except psutil.Error:
                pass
        mounts = mounts_named(tmpfs)
        shutil.rmtree(root, ignore_errors=True)
        assert not leaks, f"processes left behind: {[_name(p) for p in leaks]}"
        assert not mounts, f"tmpfs {tmpfs} still mounted in {mounts}"
