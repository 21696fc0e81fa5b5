"""Streaming (``data.cache=none``) against the decoded cache (``data.cache=decoded``), through
the CLI workflow (``pipelines.__main__.main(["run", "image", ...])``: prepare -> reference ->
train -> evaluate -> register) on the same sample data. Every figure is a ratio measured within
this one run.

1. Training throughput: ``train/steady_pairs_per_s`` (pairs/s after the epoch's first batch),
   ``train/pairs_per_s`` (data wait included) and ``train/time_to_first_batch_s`` of every
   Ray Train epoch, read back from MLflow, for both modes at the same data size, model
   (bn-cnn), batch and epochs. Both modes use ``train.cpus_per_worker=0.5``: on 2 CPUs
   streaming needs 1 decode actor + 0.5 trainer + 0.5 read task, and the decoded run gets
   the same trainer reservation (and so the same torch thread count) for a fair comparison.
   Wall time of the whole run and of each workflow step (MLflow's nested step runs) too.
2. Storage: ``data/bytes_written`` (the prepare step) per pair read, split into the training
   status table (``prepared/train``) and the eval pixels (``prepared/eval``) by the sizes of
   those directories.
3. Memory: peak resident (RSS) and proportional (PSS: shared pages, the object store's among
   them, divided among the processes mapping them) set size of the driver and every process
   below it (GCS, raylet, workers, actors), sampled every 0.5 s for the whole run, at 1x and
   8x the pairs, for both modes; the 8x / 1x ratio should stay near 1 when streaming.

Streaming on 2 CPUs is probed first (1x, ``ray.init(num_cpus=2)``). A run whose training
makes no epoch progress for ``STALL_S`` (``--stall-s``) is stopped and reported as stalled
with the Ray Data operator state; then every measurement runs on ``ray.init(num_cpus=3)``
(logical CPUs, the same 2 physical cores) for both modes, and the JSON says so (``streaming_on_2_cpus``).

Every run is a fresh child process with its own ``ray.init(num_cpus=N)`` (+ ``ensure_ray()``),
an sqlite MLflow store and output directory in a temporary folder, so runs do not share
warm processes and each peak memory counts that run only.

Writes ``benchmarks/out/streaming.json`` and prints the same JSON object.

    .venv/bin/python benchmarks/streaming.py [--pairs 240] [--epochs 3] [--quick]
        [--throughput-only] [--num-cpus N]

``--throughput-only``: only the throughput pair (1, decoded and streaming at the
``--throughput-pairs`` size), on ``--num-cpus`` logical CPUs (no probe, no memory runs):
time to first batch of every epoch and the steady rates, in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

NUM_CPUS = 2
FALLBACK_NUM_CPUS = 3  # logical only, when streaming on NUM_CPUS stalls (see main)
SAMPLE_EVERY_S = 0.5
# The same for both modes (see the docstring): only data.cache differs between runs.
COMMON_OVERRIDES = ["model.name=bn-cnn", "data.image_size=64", "train.batch_size=32",
                    "train.cpus_per_worker=0.5", "preprocess.actors=1",
                    "train.log_every_steps=1000", "train.use_gpu=false"]


def machine() -> dict:
    import torch

    return {"cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "ray_num_cpus": NUM_CPUS, "python": platform.python_version(),
            "torch": torch.__version__, "loadavg_1min_start": round(os.getloadavg()[0], 2)}


# ---------------------------------------------------------------- memory of the process tree

def _tree(root: int) -> list:
    import psutil

    try:
        p = psutil.Process(root)
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return []


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_memory_mib(root: int) -> dict:
    """RSS and PSS summed over ``root`` and its descendants, in MiB, and the process count."""
    import psutil

    rss = pss = n = 0
    for p in _tree(root):
        try:
            rss += p.memory_info().rss
        except psutil.Error:
            continue
        pss += _pss_kib(p.pid) * 1024
        n += 1
    return {"rss_mib": rss / 2**20, "pss_mib": pss / 2**20, "processes": n}


class PeakSampler:
    """Samples ``tree_memory_mib`` of this process in a background thread; keeps the peaks."""

    def __init__(self, every_s: float = SAMPLE_EVERY_S):
        self.every_s, self.samples = every_s, 0
        self.peak = {"rss_mib": 0.0, "pss_mib": 0.0, "processes": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            m = tree_memory_mib(os.getpid())
            self.samples += 1
            for k in self.peak:
                self.peak[k] = max(self.peak[k], m[k])
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- one run (child process)

def dir_bytes(path: str) -> int:
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(d, f))
            except OSError:
                pass
    return total


def mlflow_figures(uri: str, run_id: str) -> dict:
    """Per-epoch training metrics, the prepare metrics and each step's duration."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = client.get_run(run_id)
    exp = parent.info.experiment_id
    kids = client.search_runs([exp], f"tags.mlflow.parentRunId = '{run_id}'")
    metrics: dict = {}
    for r in [*kids, parent]:  # the parent's values win
        metrics.update(r.data.metrics)
    per_epoch = {}
    for key in ("train/steady_pairs_per_s", "train/pairs_per_s", "train/time_to_first_batch_s",
                "train/pairs_per_epoch"):
        hist = []
        for r in [parent, *kids]:
            hist = client.get_metric_history(r.info.run_id, key)
            if hist:
                break
        hist = sorted(hist, key=lambda m: (m.step, m.timestamp))
        per_epoch[key] = [round(m.value, 3) for m in hist]
    steps = {r.info.run_name: round(((r.info.end_time or 0) - r.info.start_time) / 1000, 2)
             for r in kids}
    return {"metrics": metrics, "per_epoch": per_epoch, "step_s": steps}


def child(cache: str, pairs: int, epochs: int, data_dir: str, work: str, num_cpus: int) -> dict:
    """One workflow run in this (fresh) process: Ray with ``num_cpus``, then the CLI."""
    import ray

    from pipelines.__main__ import main as cli_main

    baseline = tree_memory_mib(os.getpid())
    uri = f"sqlite:///{os.path.join(work, 'mlflow.db')}"
    summary_path = os.path.join(work, "summary.json")
    argv = ["run", "image", "--train", os.path.join(data_dir, "train"),
            "--eval", os.path.join(data_dir, "eval"), "--epochs", str(epochs),
            "--tracking-uri", uri, "--output-dir", os.path.join(work, "outputs"),
            "--experiment", f"bench-streaming-{cache}-{pairs}",
            "--model-name", f"bench-{cache}-{pairs}", "--summary", summary_path,
            f"data.cache={cache}", *COMMON_OVERRIDES]
    with PeakSampler() as sampler:
        t0 = time.perf_counter()
        # log_to_driver: the training worker's "epoch k/E ..." lines reach this log, which
        # the parent watches to tell a stalled run from a slow one.
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
        with open(os.path.join(work, "session_dir.txt"), "w") as f:
            f.write(ray._private.worker._global_node.get_session_dir_path())
        from components.runtime.cluster import ensure_ray

        ensure_ray()
        ray_init_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        rc = cli_main(argv)
        cli_s = time.perf_counter() - t1
    ray.shutdown()
    out: dict = {"cache": cache, "pairs_generated": pairs, "epochs": epochs, "exit_code": rc,
                 "ray_num_cpus": num_cpus,
                 "argv": argv, "ray_init_s": round(ray_init_s, 2), "cli_wall_s": round(cli_s, 2),
                 "memory": {"driver_before_ray_mib": round(baseline["rss_mib"], 1),
                            "peak_rss_tree_mib": round(sampler.peak["rss_mib"], 1),
                            "peak_pss_tree_mib": round(sampler.peak["pss_mib"], 1),
                            "peak_processes": sampler.peak["processes"],
                            "samples": sampler.samples}}
    with open(summary_path) as f:
        summary = json.load(f)
    out["summary_status"] = summary.get("status")
    if rc != 0:
        out["failure"] = summary
        return out
    out["summary_wall_s"] = summary["wall_s"]
    out["rows"] = summary["rows"]
    out["eval_accuracy"] = summary["metrics"].get("eval/accuracy")
    figs = mlflow_figures(uri, summary["run_id"])
    m = figs["metrics"]
    out["per_epoch"] = figs["per_epoch"]
    out["step_s"] = figs["step_s"]
    out["data"] = {k: m.get(k) for k in ("data/bytes_written", "data/decode_s", "data/streaming")}
    prepared = os.path.join(summary["output_dir"], "prepared")
    out["prepared_dir_bytes"] = {d: dir_bytes(os.path.join(prepared, d))
                                 for d in sorted(os.listdir(prepared))}
    return out


# ---------------------------------------------------------------- parent: data, runs, figures

def write_data(out: str, pairs: int) -> str:
    from components.sample.images import write_image_pairs

    write_image_pairs(out, pairs=pairs, size=64, shards=2, seed=1)
    return out


EPOCH_LINE = re.compile(r"epoch \d+/\d+ .*pairs/s")
STALL_S = 75.0  # no "epoch k/E" line this long after the train step started: a stalled run
RUN_TIMEOUT_S = 360.0


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it (the child's local Ray cluster), by pid."""
    import psutil

    procs = _tree(pid)
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def ray_data_progress(work: str) -> str:
    """The last "Execution Progress" block of the training dataset's Ray Data log."""
    try:
        with open(os.path.join(work, "session_dir.txt")) as f:
            logs = os.path.join(f.read().strip(), "logs", "ray-data")
        names = sorted(n for n in os.listdir(logs) if n.startswith("ray-data-train"))
        name = names[-1] if names else "ray-data.log"
        with open(os.path.join(logs, name)) as f:
            lines = f.read().splitlines()
    except (OSError, IndexError):
        return ""
    plan = [ln for ln in lines if "Execution plan of Dataset train" in ln][-1:]
    starts = [i for i, ln in enumerate(lines) if "Execution Progress:" in ln]
    block = lines[starts[-1]:starts[-1] + 8] if starts else []
    return "\n".join(plan + [ln.split(" -- ", 1)[-1] for ln in block])


def epochs_logged(work: str) -> int:
    """Epoch metrics the training worker has logged to this run's sqlite store so far."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{os.path.join(work, 'mlflow.db')}?mode=ro", uri=True,
                              timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM metrics WHERE key = "
                               "'train/steady_pairs_per_s'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def run_child(cache: str, pairs: int, epochs: int, data_dir: str, tmp: str,
              num_cpus: int = NUM_CPUS, stall_s: float = STALL_S,
              timeout_s: float = RUN_TIMEOUT_S) -> dict:
    """One run in a fresh process; a run whose training makes no epoch progress for ``stall_s``
    seconds (or that passes ``timeout_s``) is stopped and reported as stalled, with the Ray
    Data operator state."""
    work = os.path.join(tmp, f"run-{cache}-{pairs}-cpus{num_cpus}")
    os.makedirs(work, exist_ok=True)
    log_path = os.path.join(work, "child.log")
    result_path = os.path.join(work, "result.json")
    t0 = time.perf_counter()
    stalled = None
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, __file__, "--child", cache, "--pairs", str(pairs),
                                 "--epochs", str(epochs), "--data", data_dir, "--work", work,
                                 "--num-cpus", str(num_cpus), "--result", result_path],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        last_progress = None
        while proc.poll() is None:
            time.sleep(2)
            with open(log_path, errors="replace") as f:
                text = f.read()
            if last_progress is None and "step train: started" in text:
                last_progress = (time.perf_counter(), 0)
            if last_progress is not None:
                n = max(len(EPOCH_LINE.findall(text)), epochs_logged(work))
                if n != last_progress[1]:
                    last_progress = (time.perf_counter(), n)
                elif "step train: finished" not in text and \
                        time.perf_counter() - last_progress[0] > stall_s:
                    stalled = (f"no training progress for {stall_s:.0f} s after "
                               f"{n} finished epoch(s)")
            if stalled is None and time.perf_counter() - t0 > timeout_s:
                stalled = f"over {timeout_s:.0f} s"
            if stalled:
                progress = ray_data_progress(work)
                _kill_tree(proc.pid)
                proc.wait()
                break
    wall = time.perf_counter() - t0
    with open(log_path, errors="replace") as f:
        tail = f.read()[-4000:]
    if stalled:
        print(f"[{cache} x {pairs}, {num_cpus} CPUs] STALLED ({stalled}); Ray Data state:\n"
              f"{progress}", file=sys.stderr, flush=True)
        return {"cache": cache, "pairs_generated": pairs, "ray_num_cpus": num_cpus,
                "stalled": stalled, "ray_data_state": progress,
                "process_wall_s": round(wall, 1), "log": log_path}
    if proc.returncode != 0 or not os.path.exists(result_path):
        print(f"[{cache} x {pairs}] child failed (exit {proc.returncode}); log {log_path}:\n{tail}",
              file=sys.stderr, flush=True)
        return {"cache": cache, "pairs_generated": pairs, "ray_num_cpus": num_cpus,
                "child_exit_code": proc.returncode, "process_wall_s": round(wall, 1),
                "log": log_path, "log_tail": tail}
    with open(result_path) as f:
        res = json.load(f)
    res["process_wall_s"] = round(wall, 1)
    if res.get("exit_code"):
        res["log_tail"] = tail
        print(f"[{cache} x {pairs}] the CLI failed: {json.dumps(res.get('failure'))}\n{tail}",
              file=sys.stderr, flush=True)
    print(f"[{cache} x {pairs}, {num_cpus} CPUs] "
          f"{json.dumps({k: res.get(k) for k in ('process_wall_s', 'per_epoch', 'memory')})}",
          flush=True)
    return res


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 2) if xs else None


def throughput(res: dict) -> dict:
    pe = res.get("per_epoch") or {}
    steady = pe.get("train/steady_pairs_per_s", [])
    incl = pe.get("train/pairs_per_s", [])
    ttfb = pe.get("train/time_to_first_batch_s", [])
    return {"steady_pairs_per_s_per_epoch": steady, "pairs_per_s_incl_wait_per_epoch": incl,
            "time_to_first_batch_s_per_epoch": ttfb,
            "steady_pairs_per_s_after_epoch_1": _mean(steady[1:]),
            "pairs_per_s_incl_wait_after_epoch_1": _mean(incl[1:]),
            "steady_pairs_per_s_last_epoch": steady[-1] if steady else None,
            "time_to_first_batch_s_first_epoch": ttfb[0] if ttfb else None,
            "time_to_first_batch_s_later_epochs": _mean(ttfb[1:]),
            "train_step_s": res.get("step_s", {}).get("train"),
            "prepare_step_s": res.get("step_s", {}).get("prepare"),
            "step_s": res.get("step_s"), "run_wall_s": res.get("summary_wall_s"),
            "process_wall_s": res.get("process_wall_s"),
            "decode_s": (res.get("data") or {}).get("data/decode_s"),
            "train_pairs": (res.get("rows") or {}).get("train", {}).get("used"),
            "eval_accuracy": res.get("eval_accuracy")}


def storage_figures(res: dict) -> dict:
    rows = res.get("rows") or {}
    written = (res.get("data") or {}).get("data/bytes_written")
    dirs = res.get("prepared_dir_bytes") or {}
    read = {s: c.get("read", 0) for s, c in rows.items()}
    out: dict = {"bytes_written": written, "rows_read": read, "prepared_dir_bytes": dirs}
    total_read = sum(read.values())
    if written is not None and total_read:
        out["bytes_per_pair_read"] = round(written / total_read, 1)
    for split in ("train", "eval", "val"):
        if split in dirs and read.get(split):
            what = ("status table" if res["cache"] == "none" else "decoded pixels") \
                if split == "train" else "decoded pixels"
            out[f"{split}_bytes_per_pair"] = {"bytes": round(dirs[split] / read[split], 1),
                                              "what": what}
    return out


def ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def throughput_pair(runs: dict, n: int) -> dict:
    """Decoded against streaming at ``n`` pairs: the per-epoch figures and their ratios."""
    dec, stream = throughput(runs[f"decoded@{n}"]), throughput(runs[f"none@{n}"])
    return {
        "pairs_generated": n, "decoded": dec, "none": stream,
        "steady_ratio_none_over_decoded": ratio(stream["steady_pairs_per_s_after_epoch_1"],
                                                dec["steady_pairs_per_s_after_epoch_1"]),
        "incl_wait_ratio_none_over_decoded": ratio(stream["pairs_per_s_incl_wait_after_epoch_1"],
                                                   dec["pairs_per_s_incl_wait_after_epoch_1"]),
        "train_step_ratio_none_over_decoded": ratio(stream["train_step_s"], dec["train_step_s"]),
        "prepare_step_ratio_none_over_decoded": ratio(stream["prepare_step_s"],
                                                      dec["prepare_step_s"]),
        "run_wall_ratio_none_over_decoded": ratio(stream["run_wall_s"], dec["run_wall_s"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=240, help="1x pairs (memory); 8x is 8 times")
    ap.add_argument("--throughput-pairs", type=int, default=0,
                    help="pairs of the throughput comparison (default: the 8x size)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out", "streaming.json"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--child", choices=["none", "decoded"])
    ap.add_argument("--data")
    ap.add_argument("--work")
    ap.add_argument("--result")
    ap.add_argument("--num-cpus", type=int, default=NUM_CPUS)
    ap.add_argument("--throughput-only", action="store_true",
                    help="only the decoded/streaming throughput pair, on --num-cpus CPUs")
    ap.add_argument("--stall-s", type=float, default=STALL_S,
                    help="a run with no finished epoch for this long is stopped (loaded hosts)")
    ap.add_argument("--timeout-s", type=float, default=RUN_TIMEOUT_S, help="per run")
    a = ap.parse_args()
    if a.child:
        res = child(a.child, a.pairs, a.epochs, a.data, a.work, a.num_cpus)
        with open(a.result, "w") as f:
            json.dump(res, f, indent=2, default=str)
        return

    t_start = time.perf_counter()
    n1 = 40 if a.quick else a.pairs
    epochs = 2 if a.quick else a.epochs
    n8 = 8 * n1
    n_tp = a.throughput_pairs or n8
    tmp = tempfile.mkdtemp(prefix="vdpo-streaming-")
    command = [os.path.relpath(sys.executable, ROOT), "benchmarks/streaming.py", *sys.argv[1:]]
    results: dict = {"machine": machine(), "command": " ".join(command),
                     "config": {"overrides": COMMON_OVERRIDES, "epochs": epochs,
                                "ray_num_cpus": NUM_CPUS, "data": "components.sample.images."
                                "write_image_pairs, 64 px sources, 2 train shards, a quarter "
                                "of the pairs in eval/ (--eval)",
                                "note": "train.cpus_per_worker=0.5 in both modes: streaming on "
                                "2 CPUs needs 1 decode actor + 0.5 trainer + 0.5 read task; the "
                                "decoded run gets the same trainer reservation (1 torch thread)"}}
    if a.throughput_only:
        data = write_data(os.path.join(tmp, f"data-{n_tp}"), n_tp)
        runs = {f"{c}@{n_tp}": run_child(c, n_tp, epochs, data, tmp, a.num_cpus, a.stall_s,
                                         a.timeout_s)
                for c in ("decoded", "none")}
        results["config"]["ray_num_cpus"] = results["machine"]["ray_num_cpus"] = a.num_cpus
        results["runs"] = runs
        results["throughput"] = throughput_pair(runs, n_tp)
        return finish(results, a, tmp, t_start)
    datasets = {n: write_data(os.path.join(tmp, f"data-{n}"), n) for n in sorted({n1, n8, n_tp})}
    runs: dict = {}
    # Probe: streaming at 1x on NUM_CPUS (the 1x memory run when it works). If it stalls, the
    # measurements run on FALLBACK_NUM_CPUS logical CPUs (the same 2 physical cores) for both
    # modes, and the stall is reported with the Ray Data operator state.
    probe = run_child("none", n1, epochs, datasets[n1], tmp, NUM_CPUS)
    cpus = NUM_CPUS
    if probe.get("stalled"):
        cpus = FALLBACK_NUM_CPUS
        results["streaming_on_2_cpus"] = {
            "ok": False, "stalled": probe["stalled"], "ray_data_state": probe["ray_data_state"],
            "what": f"data.cache=none with train.cpus_per_worker=0.5 on ray.init(num_cpus="
                    f"{NUM_CPUS}) made no training progress; every figure below is measured with "
                    f"ray.init(num_cpus={FALLBACK_NUM_CPUS}) (logical CPUs; same physical cores) "
                    "for both modes"}
        results["runs"] = {f"none@{n1}@{NUM_CPUS}cpus(probe)": probe}
    else:
        results["streaming_on_2_cpus"] = {"ok": True}
        runs[f"none@{n1}"] = probe
    results["config"]["ray_num_cpus"] = results["machine"]["ray_num_cpus"] = cpus
    # The throughput pair back to back (the same machine load), then the 1x runs.
    for cache, n in [("decoded", n_tp), ("none", n_tp), ("none", n8), ("none", n1),
                     ("decoded", n8), ("decoded", n1)]:
        key = f"{cache}@{n}"
        if key not in runs:
            runs[key] = run_child(cache, n, epochs, datasets[n], tmp, cpus)
    results.setdefault("runs", {}).update(runs)

    results["throughput"] = throughput_pair(runs, n_tp)
    results["storage"] = {"decoded": storage_figures(runs[f"decoded@{n_tp}"]),
                          "none": storage_figures(runs[f"none@{n_tp}"])}
    results["storage"]["bytes_ratio_none_over_decoded"] = ratio(
        results["storage"]["none"].get("bytes_written"),
        results["storage"]["decoded"].get("bytes_written"))
    mem: dict = {}
    for cache in ("none", "decoded"):
        small, big = runs[f"{cache}@{n1}"], runs[f"{cache}@{n8}"]
        ms, mb = small.get("memory", {}), big.get("memory", {})
        mem[cache] = {
            "pairs": [n1, n8],
            "peak_pss_tree_mib": [ms.get("peak_pss_tree_mib"), mb.get("peak_pss_tree_mib")],
            "peak_rss_tree_mib": [ms.get("peak_rss_tree_mib"), mb.get("peak_rss_tree_mib")],
            "pss_ratio_8x": ratio(mb.get("peak_pss_tree_mib"), ms.get("peak_pss_tree_mib")),
            "rss_ratio_8x": ratio(mb.get("peak_rss_tree_mib"), ms.get("peak_rss_tree_mib")),
        }
    mem["what"] = ("peak over the whole run (ray.init, prepare, train, evaluate, register) of "
                   "the summed RSS / PSS of the driver and every process below it, sampled every "
                   f"{SAMPLE_EVERY_S} s; RSS counts shared pages (object store) once per process")
    results["memory"] = mem
    finish(results, a, tmp, t_start)


def finish(results: dict, a: argparse.Namespace, tmp: str, t_start: float) -> None:
    results["machine"]["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    results["wall_s"] = round(time.perf_counter() - t_start, 1)
    if not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        results["tmp"] = tmp
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2, default=str)
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
