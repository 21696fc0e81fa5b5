"""A million pairs: planning, the prepare step and a streaming epoch at 10k, 100k and 1M pairs.

Pick-a-Pic v2 is 959k training pairs in hundreds of shards; nothing else here ran beyond a few
thousand. This writes that many *small* pairs (16 px images: a handful of distinct images
encoded once as JPEG and PNG, their bytes reused, so writing is fast) as canonical Parquet
shards of ``--per-shard`` pairs (500: 1M pairs = 2,000 shards; 128-row row groups, as the
sample writer), and measures, each scale in fresh child processes:

1. **plan**: ``resolve_shards`` + ``ReadPlan.of`` (listing + every Parquet footer + the id
   column, on the driver), what ``visual-dpo run`` does before Ray starts. Footer reads are
   counted by wrapping ``pyarrow.parquet.ParquetFile`` (every footer read goes through it).
   Also the bytes ``record_run`` would log to MLflow for that many shards (params, tags,
   config.yaml, data/shards.json, the dataset inputs).
2. **run**: the real workflow, ``python -m pipelines run image --train DIR --eval EVAL
   data.cache=none --epochs 1`` (bn-cnn at 16 px, ``ray.init(num_cpus=2)``): planning again,
   the prepare step (every training row decoded once for its status table), one streaming
   epoch (read -> decode actor -> Ray Train), evaluation on a fixed 1,000-pair eval set,
   register. Timed per workflow step from MLflow's nested step runs; driver RSS and the RSS /
   PSS of the driver's whole process tree (GCS, raylet, Ray workers, actors) sampled every
   0.5 s; footer reads in the driver counted as above; everything the run wrote to MLflow
   measured afterwards (params, tags, metric points, artifacts, dataset inputs).
   With ``--train-budget-s`` the run is stopped that many seconds into its train step and
   the epoch's training rate is the slope of ``train/loss`` (logged every
   ``log_every_steps`` optimiser steps) over that window; with ``--prepare-budget-s`` it is
   stopped that many seconds into the prepare step, and the prepare rate is the rows its
   status table gained over the second half of that window. The step's time is then
   **extrapolated** (``*_extrapolated`` in the JSON), not measured.
3. **check** (the largest scale): ``visual-dpo run image --incremental --check`` against a
   tracking store holding a finished run that consumed every shard (its lineage written by
   ``lineage.record_run``: nothing new) and against an empty store (every shard new): listing
   + lineage, no Ray, no footer.

Writes ``benchmarks/million_pairs.json``.

    nice -n 10 .venv/bin/python benchmarks/million_pairs.py [--scales 10000,100000,1000000]
        [--epoch-budget-s 0,0,300] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The repo root on sys.path first. _kill_tree: SIGKILL a child and its local Ray cluster.
from benchmarks.streaming import (  # noqa: E402
    PeakSampler,
    _kill_tree,
    dir_bytes,
    tree_memory_mib,
)

PER_SHARD = 500
ROW_GROUP = 128
EVAL_PAIRS = 1000
SIZE = 16
NUM_CPUS = 2
BATCH = 64
LOG_EVERY = 20
OVERRIDES = ["model.name=bn-cnn", f"data.image_size={SIZE}", f"train.batch_size={BATCH}",
             "train.cpus_per_worker=0.5", "preprocess.actors=1", "data.cache=none",
             f"train.log_every_steps={LOG_EVERY}", "train.use_gpu=false"]


# ------------------------------------------------------------------------------ data

def _images(first: int) -> list[tuple[bytes, bytes]]:
    """(chosen, rejected) encoded pairs: 8 16 px gradients (pattern ``first`` on), clean (PNG)
    vs noisy (JPEG). The eval set uses other patterns: a pair with the same two images as a
    training pair is excluded from eval ("also in train")."""
    import numpy as np
    from PIL import Image

    out = []
    rng = np.random.default_rng(first)
    for k in range(first, first + 8):
        y, x = np.mgrid[0:SIZE, 0:SIZE]
        base = np.stack([(x * 16 + k * 30) % 256, (y * 16 + k * 50) % 256,
                         ((x + y) * 8 + k * 70) % 256], -1).astype(np.uint8)
        noisy = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
        enc = []
        for arr, fmt in ((base, "PNG"), (noisy, "JPEG")):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, fmt)
            enc.append(buf.getvalue())
        out.append((enc[0], enc[1]))
    return out


def write_shards(out_dir: str, pairs: int, per_shard: int, prefix: str, first: int = 0) -> dict:
    """``pairs`` canonical pairs in shards of ``per_shard`` rows; returns counts and time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(out_dir, exist_ok=True)
    imgs = _images(first)
    t0 = time.perf_counter()
    shards = 0
    for start in range(0, pairs, per_shard):
        n = min(per_shard, pairs - start)
        which = [(start + i) % len(imgs) for i in range(n)]
        table = pa.table({
            "pair_id": pa.array([f"{prefix}-{start + i:08d}" for i in range(n)], pa.string()),
            "prompt": pa.array([f"pattern {w}" for w in which], pa.string()),
            "chosen": pa.array([imgs[w][0] for w in which], pa.binary()),
            "rejected": pa.array([imgs[w][1] for w in which], pa.binary()),
        })
        pq.write_table(table, os.path.join(out_dir, f"part-{shards:05d}.parquet"),
                       row_group_size=ROW_GROUP)
        shards += 1
    return {"pairs": pairs, "shards": shards, "write_s": round(time.perf_counter() - t0, 2),
            "bytes": dir_bytes(out_dir)}


# ------------------------------------------------------------------------------ measuring

class FooterCounter:
    """Counts ``pyarrow.parquet.ParquetFile`` constructions in this process (each reads and
    parses a footer unless it is handed ``metadata=``)."""

    def __init__(self):
        import pyarrow.parquet as pq

        self.parsed = self.given = 0
        cls = pq.ParquetFile
        original = cls.__init__
        counter = self

        def counting(self, source, *args, metadata=None, **kwargs):
            if metadata is None:
                counter.parsed += 1
            else:
                counter.given += 1
            return original(self, source, *args, metadata=metadata, **kwargs)

        cls.__init__ = counting


class MemorySampler(PeakSampler):
    """Peak RSS of this process (the driver) and RSS / PSS of its whole process tree."""

    def __init__(self, every_s: float = 0.5):
        super().__init__(every_s)
        self.peak = {"driver_rss_mib": 0.0, "tree_rss_mib": 0.0, "tree_pss_mib": 0.0,
                     "processes": 0}

    def sample(self) -> None:
        import psutil

        tree = tree_memory_mib(os.getpid())  # this process and its descendants
        cur = {"driver_rss_mib": psutil.Process().memory_info().rss / 2**20,
               "tree_rss_mib": tree["rss_mib"], "tree_pss_mib": tree["pss_mib"],
               "processes": tree["processes"]}
        for k, v in cur.items():
            self.peak[k] = max(self.peak[k], v)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every_s)

    def result(self) -> dict:
        out = {k: round(v, 1) for k, v in self.peak.items()}
        return out


def mlflow_bytes(uri: str, experiment: str) -> dict:
    """What the runs of ``experiment`` wrote to MLflow, in bytes: params and tags (key +
    value), metric points (key + 8-byte value + step + timestamp, as MLflow stores them),
    artifacts (file sizes) and dataset inputs (their JSON), plus ``data/shards.json``."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    out = {"params": 0, "tags": 0, "metric_points": 0, "metric_bytes": 0, "artifacts": 0,
           "dataset_inputs": 0, "shards_json": 0, "runs": 0, "largest_artifacts": []}
    if exp is None:
        return out
    sizes = []

    def walk(run_id: str, path: str | None = None) -> None:
        for a in client.list_artifacts(run_id, path):
            if a.is_dir:
                walk(run_id, a.path)
            else:
                out["artifacts"] += a.file_size or 0
                sizes.append((a.file_size or 0, a.path))
                if a.path == "data/shards.json":
                    out["shards_json"] += a.file_size or 0

    for r in client.search_runs([exp.experiment_id]):
        out["runs"] += 1
        out["params"] += sum(len(k) + len(v) for k, v in r.data.params.items())
        out["tags"] += sum(len(k) + len(v) for k, v in r.data.tags.items())
        for key in r.data.metrics:
            n = len(client.get_metric_history(r.info.run_id, key))
            out["metric_points"] += n
            out["metric_bytes"] += n * (len(key) + 24)
        for d in (r.inputs.dataset_inputs if r.inputs else []):
            ds = d.dataset
            out["dataset_inputs"] += len(ds.name) + len(ds.digest) + len(ds.source) + len(
                ds.profile or "") + len(ds.schema or "")
        walk(r.info.run_id)
    out["largest_artifacts"] = [f"{p}: {s}" for s, p in sorted(sizes, reverse=True)[:5]]
    out["total"] = sum(out[k] for k in ("params", "tags", "metric_bytes", "artifacts",
                                        "dataset_inputs"))
    return out


# ------------------------------------------------------------------------------ children

def child_plan(train_dir: str, result_path: str) -> None:
    """Planning only, as ``resolve_inputs`` does it, in a fresh process; and the MLflow
    lineage ``record_run`` writes for these shards, in a throwaway sqlite store."""
    counter = FooterCounter()
    from components.datasets.contract import ReadPlan, resolve_shards

    with MemorySampler(0.05) as mem:
        t0 = time.perf_counter()
        shards = resolve_shards([train_dir])
        list_s = time.perf_counter() - t0
        plan = ReadPlan.of(shards, "auto", "image")
        plan_s = time.perf_counter() - t0
    res = {"shards": len(shards), "units": len(plan.units), "rows": plan.rows,
           "list_s": round(list_s, 3), "plan_s": round(plan_s, 3),
           "footers_parsed": counter.parsed, "memory": mem.result()}
    res["lineage"] = lineage_bytes(shards)
    with open(result_path, "w") as f:
        json.dump(res, f)


def lineage_bytes(shards) -> dict:
    """Bytes ``lineage.record_run`` logs for these shards (a fresh sqlite store)."""

    with tempfile.TemporaryDirectory() as d:
        uri = f"sqlite:///{d}/m.db"
        t0 = time.perf_counter()
        record_lineage(uri, "lineage", shards)
        s = time.perf_counter() - t0
        return {**mlflow_bytes(uri, "lineage"), "record_run_s": round(s, 2)}


def record_lineage(uri: str, experiment: str, shards) -> None:
    """One FINISHED top-level run of workflow ``image``, model ``million``, whose lineage
    (``lineage.record_run``) lists ``shards``: what a finished run that consumed them leaves."""
    import mlflow

    from components.config import load_config
    from components.runtime.pinning import plan_for_run
    from components.tracking.lineage import record_run
    from components.tracking.runs import setup

    cfg = load_config(None, [f"data.train={os.path.dirname(shards[0].uri)}",
                             "tracking.model_name=million", *OVERRIDES])
    setup(uri, experiment)
    with mlflow.start_run():
        record_run(cfg, shards, [], plan_for_run(cfg.preprocess, cfg.train), {"CPU": 2.0})
    mlflow.set_tracking_uri("")


def child_run(train_dir: str, eval_dir: str, work: str, result_path: str) -> None:
    """The real workflow in this fresh process: ray.init(num_cpus=2), then the CLI."""
    counter = FooterCounter()
    import ray

    from pipelines.__main__ import main as cli_main

    uri = f"sqlite:///{os.path.join(work, 'mlflow.db')}"
    summary = os.path.join(work, "summary.json")
    argv = ["run", "image", "--train", train_dir, "--eval", eval_dir, "--epochs", "1",
            "--tracking-uri", uri, "--output-dir", os.path.join(work, "outputs"),
            "--experiment", "million", "--model-name", "million", "--summary", summary,
            *OVERRIDES]
    with open(os.path.join(work, "argv.json"), "w") as f:
        json.dump(argv, f)
    with MemorySampler() as mem:
        ray.init(num_cpus=NUM_CPUS, include_dashboard=False, log_to_driver=True)
        from components.runtime.cluster import ensure_ray

        ensure_ray()
        t0 = time.perf_counter()

        def partial(*_):  # the parent stops a bounded run: say what we have, then go
            mem.sample()
            with open(result_path + ".partial", "w") as f:
                json.dump({"memory": mem.result(), "footers_parsed_driver": counter.parsed,
                           "footers_given_driver": counter.given,
                           "cli_s_so_far": round(time.perf_counter() - t0, 1)}, f)
            os._exit(0)

        signal.signal(signal.SIGUSR1, partial)
        rc = cli_main(argv)
        cli_s = time.perf_counter() - t0
    ray.shutdown()
    with open(result_path, "w") as f:
        json.dump({"rc": rc, "cli_s": round(cli_s, 1), "memory": mem.result(),
                   "footers_parsed_driver": counter.parsed,
                   "footers_given_driver": counter.given}, f)


def child_check(train_dir: str, uri: str, work: str, result_path: str) -> None:
    """``--incremental --check`` in a fresh process; ``uri`` ending in ``consumed.db`` is
    first given a finished run that consumed every shard (so the check reads its lineage)."""
    if uri.endswith("consumed.db"):
        from components.datasets.contract import resolve_shards

        record_lineage(uri, "million", resolve_shards([train_dir]))
    counter = FooterCounter()
    from pipelines.__main__ import main as cli_main

    argv = ["run", "image", "--train", train_dir, "--incremental", "--check",
            "--tracking-uri", uri, "--output-dir", os.path.join(work, "outputs"),
            "--experiment", "million", "--model-name", "million",
            "--summary", os.path.join(work, "check.json"), *OVERRIDES]
    with MemorySampler(0.05) as mem:
        t0 = time.perf_counter()
        rc = cli_main(argv)
        s = time.perf_counter() - t0
    with open(os.path.join(work, "check.json")) as f:
        summary = json.load(f)
    with open(result_path, "w") as f:
        json.dump({"rc": rc, "check_s": round(s, 2), "status": summary.get("status"),
                   "new_shards": len(summary.get("new_shards", [])),
                   "shards_seen": summary.get("shards_seen"),
                   "footers_parsed": counter.parsed,
                   "driver_rss_peak_mib": mem.result()["driver_rss_mib"]}, f)


# ------------------------------------------------------------------------------ parent

def spawn(args: list[str], log_path: str, timeout_s: float | None = None,
          on_tick=None) -> int:
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, __file__, *args], stdout=log,
                                stderr=subprocess.STDOUT, cwd=ROOT)
        t0 = time.perf_counter()
        while proc.poll() is None:
            time.sleep(2)
            if on_tick is not None and on_tick(proc, time.perf_counter() - t0):
                break
            if timeout_s and time.perf_counter() - t0 > timeout_s:
                break
        if proc.poll() is None:
            proc.send_signal(signal.SIGUSR1)  # the child writes what it has and exits
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        _kill_tree(proc.pid)
        return proc.wait()


def _query(db: str, sql: str) -> list:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []


def step_start_ms(db: str, step: str) -> int | None:
    rows = _query(db, f"SELECT start_time FROM runs WHERE name = '{step}'")
    return rows[0][0] if rows else None


def train_progress(db: str) -> dict:
    """The train step's start and the ``train/loss`` points logged so far (step, ms)."""
    return {"points": _query(db, "SELECT step, timestamp FROM metrics WHERE key = 'train/loss' "
                                 "ORDER BY step"),
            "train_start_ms": step_start_ms(db, "train")}


def rows_written(work: str) -> int:
    """Rows the prepare step has written so far (its training status table), from the
    footers of the finished Parquet files."""
    import glob

    import pyarrow.parquet as pq

    n = 0
    for p in glob.glob(os.path.join(work, "outputs", "*", "prepared", "train", "*.parquet")):
        try:
            n += pq.read_metadata(p).num_rows
        except Exception:  # noqa: BLE001 - a file being written
            pass
    return n


class Window:
    """Stops a run ``prepare_s`` into its prepare step (0: never) or ``train_s`` into its
    train step (0: never), and keeps what the rates are measured from: for the prepare step,
    the rows written at half the window and at its end."""

    def __init__(self, work: str, prepare_s: float, train_s: float):
        self.db = os.path.join(work, "mlflow.db")
        self.work, self.prepare_s, self.train_s = work, prepare_s, train_s
        self.prepare: dict = {}
        self.stopped_in = None

    def __call__(self, proc, elapsed) -> bool:
        now = time.time() * 1000
        if self.prepare_s and self.stopped_in is None:
            start = step_start_ms(self.db, "prepare")
            if start is not None and step_start_ms(self.db, "reference") is None:
                into = (now - start) / 1000
                if into > self.prepare_s / 2 and "half" not in self.prepare:
                    self.prepare["half"] = (round(into, 1), rows_written(self.work))
                if into > self.prepare_s:
                    self.prepare["end"] = (round(into, 1), rows_written(self.work))
                    self.stopped_in = "prepare"
                    return True
        if self.train_s:
            start = step_start_ms(self.db, "train")
            if start is not None and now - start > self.train_s * 1000:
                self.stopped_in = "train"
                return True
        return False


def step_times(uri: str) -> dict:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("million")
    out = {}
    for r in client.search_runs([exp.experiment_id]):
        name = r.data.tags.get("visual_dpo.step")
        if name:
            end = r.info.end_time
            out[name] = round((end - r.info.start_time) / 1000, 1) if end else None
    return out


def run_metrics(uri: str) -> dict:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("million")
    m = {}
    parents = [r for r in client.search_runs([exp.experiment_id])
               if "mlflow.parentRunId" not in r.data.tags]
    if parents:
        m = {k: v for k, v in parents[0].data.metrics.items()
             if k.startswith(("rows/train", "data/", "train/pairs_per_s", "train/steady",
                              "train/time_to_first", "eval/accuracy", "train/loss"))}
    return m


def measure_scale(pairs: int, tmp: str, eval_dir: str, prepare_s: float, train_s: float) -> dict:
    train_dir = os.path.join(tmp, f"train-{pairs}")
    res: dict = {"pairs": pairs}
    shutil.rmtree(train_dir, ignore_errors=True)
    res["write"] = write_shards(train_dir, pairs, PER_SHARD, f"p{pairs}")
    print(f"[{pairs}] wrote {res['write']}", flush=True)

    plan_out = os.path.join(tmp, f"plan-{pairs}.json")
    spawn(["--child-plan", train_dir, plan_out], os.path.join(tmp, f"plan-{pairs}.log"))
    with open(plan_out) as f:
        res["plan"] = json.load(f)
    print(f"[{pairs}] plan {res['plan']}", flush=True)

    work = os.path.join(tmp, f"run-{pairs}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    db = os.path.join(work, "mlflow.db")
    uri = f"sqlite:///{db}"
    run_out = os.path.join(work, "result.json")
    window = Window(work, prepare_s, train_s)
    t0 = time.perf_counter()
    rc = spawn(["--child-run", train_dir, eval_dir, work, run_out], os.path.join(work, "child.log"),
               on_tick=window)
    res["run_wall_s"] = round(time.perf_counter() - t0, 1)
    if os.path.exists(run_out):
        with open(run_out) as f:
            res["run"] = json.load(f)
        res["bounded"] = False
    else:
        with open(run_out + ".partial") as f:
            res["run"] = json.load(f)
        res["bounded"] = True
    res["stopped_in"] = window.stopped_in
    res["run"]["child_exit"] = rc
    res["steps_s"] = step_times(uri)
    res["metrics"] = run_metrics(uri)
    if window.stopped_in == "prepare" and "half" in window.prepare:
        (s0, r0), (s1, r1) = window.prepare["half"], window.prepare["end"]
        rate = (r1 - r0) / (s1 - s0) if s1 > s0 else 0.0
        res["prepare_window"] = {"half": window.prepare["half"], "end": window.prepare["end"],
                                 "rows_per_s": round(rate, 1)}
        if rate:  # EXTRAPOLATED: the rest of the rows at the rate of the window's second half
            res["prepare_s_extrapolated"] = round(s1 + (pairs - r1) / rate, 0)
    prog = train_progress(db)
    pts = prog["points"]
    if len(pts) >= 2:
        # Training rate inside the epoch: optimiser steps x batch over the logged window.
        (s0, t0ms), (s1, t1ms) = pts[0], pts[-1]
        rate = (s1 - s0) * BATCH / ((t1ms - t0ms) / 1000)
        res["epoch_window"] = {"first_step": s0, "last_step": s1,
                               "seconds": round((t1ms - t0ms) / 1000, 1),
                               "pairs_per_s": round(rate, 1),
                               "first_point_after_train_start_s":
                                   round((t0ms - prog["train_start_ms"]) / 1000, 1)
                                   if prog["train_start_ms"] else None}
        if window.stopped_in == "train":  # EXTRAPOLATED, as above
            res["epoch_s_extrapolated"] = round(
                res["epoch_window"]["first_point_after_train_start_s"] + pairs / rate, 0)
    res["mlflow"] = mlflow_bytes(uri, "million")
    res["prepared_bytes"] = dir_bytes(os.path.join(work, "outputs"))
    res["uri"] = uri
    res["train_dir"] = train_dir
    print(f"[{pairs}] run {json.dumps(res)}", flush=True)
    return res


def measure_check(train_dir: str, tmp: str) -> dict:
    out = {}
    for name, u in (("after_a_run_consumed_all", f"sqlite:///{os.path.join(tmp, 'consumed.db')}"),
                    ("empty_store", f"sqlite:///{os.path.join(tmp, 'empty.db')}")):
        work = os.path.join(tmp, f"check-{name}")
        os.makedirs(work, exist_ok=True)
        p = os.path.join(work, "result.json")
        t0 = time.perf_counter()
        spawn(["--child-check", train_dir, u, work, p], os.path.join(work, "child.log"))
        wall = time.perf_counter() - t0
        with open(p) as f:
            out[name] = {**json.load(f), "process_wall_s": round(wall, 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", default="10000,100000,1000000")
    ap.add_argument("--prepare-budget-s", default="0,0,0",
                    help="per scale: stop the run this long into its prepare step (0: never)")
    ap.add_argument("--train-budget-s", default="0,0,300",
                    help="per scale: stop the run this long into its train step (0: never)")
    ap.add_argument("--append", action="store_true",
                    help="add these scales to the results already in --out")
    ap.add_argument("--keep", default="", help="work directory to keep (default: a temp dir)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "million_pairs.json"))
    a = ap.parse_args()
    scales = [int(s) for s in a.scales.split(",")]
    prep = [float(b) for b in a.prepare_budget_s.split(",")]
    train = [float(b) for b in a.train_budget_s.split(",")]
    tmp = a.keep or tempfile.mkdtemp(prefix="million-")
    os.makedirs(tmp, exist_ok=True)
    import torch

    result = {"machine": {"cores": os.cpu_count(), "ray_num_cpus": NUM_CPUS,
                          "python": platform.python_version(), "torch": torch.__version__,
                          "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
              "config": {"per_shard": PER_SHARD, "row_group": ROW_GROUP, "image_px": SIZE,
                         "eval_pairs": EVAL_PAIRS, "overrides": OVERRIDES, "epochs": 1},
              "command": "nice -n 10 .venv/bin/python benchmarks/million_pairs.py "
                         + " ".join(sys.argv[1:]),
              "scales": []}
    if a.append and os.path.exists(a.out):
        with open(a.out) as f:
            before = json.load(f)
        result["scales"] = before["scales"]
        result["commands"] = before.get("commands", [before.get("command")])
    result.setdefault("commands", [])
    result["commands"].append(result.pop("command"))
    eval_dir = os.path.join(tmp, "eval")
    if not os.path.isdir(eval_dir):
        write_shards(eval_dir, EVAL_PAIRS, PER_SHARD, "eval", first=8)
    for pairs, p_s, t_s in zip(scales, prep, train, strict=True):
        result["scales"].append(measure_scale(pairs, tmp, eval_dir, p_s, t_s))
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    last = result["scales"][-1]
    result["incremental_check"] = {"shards": last["write"]["shards"],
                                   **measure_check(last["train_dir"], tmp)}
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result["incremental_check"]), flush=True)
    if not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child-plan":
        child_plan(*sys.argv[2:4])
    elif len(sys.argv) > 1 and sys.argv[1] == "--child-run":
        child_run(*sys.argv[2:6])
    elif len(sys.argv) > 1 and sys.argv[1] == "--child-check":
        child_check(*sys.argv[2:6])
    else:
        main()
