"""``make bench``: is the pipeline fast? Every figure is a ratio measured within this one run.

1. Decode efficiency: pairs/s through the Ray Data decode stage (``decode_graph.decode_stage``:
   read -> canonical rows -> decode in the preprocessing actor pool, streamed to the driver)
   with k actors, over k times the pairs/s of a single-process decode loop over the same rows
   (the per-core limit); k = 1 and k = 2. Steady state: the stage runs on N/3 and on N pairs
   and the rate is the difference of pairs over the difference of time, so the fixed start-up
   (actor start, plan) is reported apart. The whole prepare step (the same stage plus writing
   the uint8 tensors to Parquet) is timed too.
2. Pipeline overhead: steady-state training pairs/s of the full pipeline (Ray Data -> Ray
   Train, 1 worker; ``train/steady_pairs_per_s`` of the last epoch) over a plain PyTorch loop
   over the same decoded tensors in memory, same model, batch size and thread count. Also in
   CPU seconds per pair of the training process (``train/steady_cpu_s_per_pair``, every
   thread of the worker) against the plain loop's: the part of the overhead that is work
   in the trainer, apart from waiting and other processes taking its core.
3. Streaming memory: peak proportional set size (PSS: private memory plus a share of shared
   pages, which includes the object store's shared memory) of the driver and every process
   below it (raylet, workers, actors), for a prepare + 1-epoch run on N and on 8N pairs, each
   in a fresh process with its own Ray cluster.
4. Pinning: ``benchmarks/pinning.py`` (m decode+train process pairs, pinned vs default).
5. Time to first batch (first epoch and later epochs) and fixed overheads (``ray.init``,
   MLflow store setup + run start).
6. Images at the sample size (64) and realistic (224 from 320 px sources); clips at the
   sample size (8 x 32 x 32) and realistic (16 x 112 x 112 from 24 x 128 x 128 sources).

Writes ``benchmarks/results.json``; prints a Markdown table for the README.

    .venv/bin/python benchmarks/suite.py [--quick] [--out benchmarks/results.json]
        [--pipeline-only] [--cases image-64,video-8x32]

``--pipeline-only``: only 2 (prepare the training set, then pipeline vs plain loop), for the
cases named by ``--cases`` (default: all): the pipeline overhead ratio in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

import pyarrow.parquet as pq
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from components.config import LossConfig, load_config  # noqa: E402
from components.datasets.contract import resolve_shards  # noqa: E402
from components.media.spec import MediaSpec  # noqa: E402
from components.training.models import build_scorer  # noqa: E402
from components.training.step import train_step  # noqa: E402

# kind -> modality, source size, decoded size, frames (video: decoded T, source frames)
CASES = {
    "image-64": dict(modality="image", source=64, size=64),
    "image-224": dict(modality="image", source=320, size=224),
    "video-8x32": dict(modality="video", source=32, size=32, frames=8, source_frames=8),
    "video-16x112": dict(modality="video", source=128, size=112, frames=16, source_frames=24),
}


def machine() -> dict:
    return {"cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__,
            "loadavg_1min_start": round(os.getloadavg()[0], 2)}


def write_data(case: dict, out: str, pairs: int) -> str:
    """Canonical pairs (train split only is used) -> the train directory."""
    if case["modality"] == "image":
        from components.sample.images import write_image_pairs

        write_image_pairs(out, pairs=pairs + 8, size=case["source"], shards=2, seed=1)
    else:
        from components.sample.videos import write_video_pairs

        write_video_pairs(out, pairs=pairs + 4, size=case["source"], frames=case["source_frames"],
                          shards=2, seed=1, eval_fraction=4 / (pairs + 4))
    return os.path.join(out, "train")


def spec_of(case: dict) -> MediaSpec:
    if case["modality"] == "image":
        return MediaSpec("image", case["size"], 10**8)
    return MediaSpec("video", case["size"], 10**8, frames=case["frames"])


def single_process_rate(train_dir: str, spec: MediaSpec) -> float:
    """Pairs/s of a plain decode loop in this process (bytes already in memory)."""
    t = pq.read_table(train_dir, columns=["chosen", "rejected"]).to_pydict()
    t0 = time.perf_counter()
    for c, r in zip(t["chosen"], t["rejected"], strict=True):
        spec.decode(c)
        spec.decode(r)
    return len(t["chosen"]) / (time.perf_counter() - t0)


def stage_s(train_dir: str, spec: MediaSpec, actors: int) -> tuple[float, int]:
    """Seconds to stream every decoded pair of ``train_dir`` through the decode stage."""
    from components.datasets.contract import ReadPlan
    from components.datasets.decode_graph import DecodeOptions, decode_stage
    from components.datasets.reading import SplitRule

    t0 = time.perf_counter()
    ds = decode_stage(ReadPlan.of(resolve_shards([train_dir]), "canonical"),
                      DecodeOptions(spec, "canonical", actors=actors), SplitRule(fixed="train"))
    n = sum(len(b["status"]) for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    return time.perf_counter() - t0, n


def ray_decode_s(train_dir: str, spec: MediaSpec, actors: int, out: str) -> tuple[float, int]:
    from components.datasets.contract import ReadPlan
    from components.datasets.decode_graph import DecodeOptions
    from components.datasets.prepare import prepare
    from components.datasets.reading import SplitRule

    p = prepare(ReadPlan.of(resolve_shards([train_dir]), "canonical"), out,
                DecodeOptions(spec, "canonical", actors=actors), SplitRule(fixed="train"))
    return p.decode_s, p.counts["train"].used


def decode_bench(name: str, case: dict, pairs: int, actors: int, tmp: str) -> dict:
    spec = spec_of(case)
    big = write_data(case, os.path.join(tmp, f"{name}-big"), pairs)
    small = write_data(case, os.path.join(tmp, f"{name}-small"), max(8, pairs // 3))
    r1 = single_process_rate(big, spec)
    stage_s(small, spec, 1)  # start worker processes once
    out: dict = {"decoded_shape": list(spec.shape), "single_process_pairs_per_s": round(r1, 1)}
    unit = "clips" if case["modality"] == "video" else "images"
    for k in sorted({1, actors}):
        t_small, n_small = stage_s(small, spec, k)
        t_big, n_big = stage_s(big, spec, k)
        steady = (n_big - n_small) / max(t_big - t_small, 1e-9)
        out[f"actors_{k}"] = {
            "pairs": [n_small, n_big], "seconds": [round(t_small, 2), round(t_big, 2)],
            "steady_pairs_per_s": round(steady, 1),
            "pairs_per_s_incl_startup": round(n_big / t_big, 1),
            "fixed_startup_s": round(t_big - n_big / steady, 2) if steady > 0 else None,
            "decode_efficiency": round(steady / (k * r1), 3),
            "decode_efficiency_incl_startup": round(n_big / t_big / (k * r1), 3),
            f"{unit}_per_s_per_actor": round(2 * steady / k, 1),
        }
    t_prep, n_prep = ray_decode_s(big, spec, actors, os.path.join(tmp, f"{name}-pb"))
    out["prepare_step_with_write"] = {"actors": actors, "pairs": n_prep, "seconds": round(t_prep, 2),
                                      "pairs_per_s": round(n_prep / t_prep, 1)}
    out["decode_efficiency"] = out[f"actors_{actors}"]["decode_efficiency"]
    # Training runs on the N/3 set: enough steps for a steady rate, fewer minutes.
    ray_decode_s(small, spec, actors, os.path.join(tmp, f"{name}-ps"))
    out["prepared"] = os.path.join(tmp, f"{name}-ps")
    return out


def plain_rate(prepared: str, model: str, batch: int, threads: int,
               epochs: int) -> tuple[float, float]:
    """Steady-state pairs/s of the train step over decoded tensors in memory (epoch 1 warms),
    and the CPU seconds of this process per pair in that epoch."""
    import pyarrow.dataset as pads
    import ray.data  # noqa: F401  (registers the tensor extension type)

    t = pads.dataset(prepared, format="parquet").to_table(
        columns=["chosen_px", "rejected_px"], filter=pads.field("status") == "ok")
    c = torch.from_numpy(t["chosen_px"].combine_chunks().to_numpy().copy())
    r = torch.from_numpy(t["rejected_px"].combine_chunks().to_numpy().copy())
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = build_scorer(model)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    dev = torch.device("cpu")
    n = (len(c) // batch) * batch
    times = []
    for _ in range(epochs):
        perm = torch.randperm(len(c))
        t0, cpu0 = time.perf_counter(), time.process_time()
        for s in range(0, n, batch):
            idx = perm[s : s + batch]
            train_step(m, opt, c[idx], r[idx], LossConfig(), dev)
        times.append((time.perf_counter() - t0, time.process_time() - cpu0))
    wall, cpu = min(times[1:] or times)
    return n / wall, cpu / n


def pipeline_bench(name: str, case: dict, prepared: str, batch: int, epochs: int, tmp: str) -> dict:
    from components.datasets.decode_graph import usable_pairs
    from components.training.trainer import fit
    from components.training.worker import WorkerSpec

    over = [f"data.image_size={case['size']}", f"train.batch_size={batch}",
            f"train.epochs={epochs}", "train.log_every_steps=1000"]
    if case["modality"] == "video":
        over.append(f"data.video.frames={case['frames']}")
    cfg = load_config(None, over, require_train=False, modality=case["modality"])
    spec = WorkerSpec(train=cfg.train, loss=cfg.loss, model_name=cfg.model.name,
                      modality=cfg.modality, pinning_report_dir=os.path.join(tmp, f"{name}-pin"))
    out = fit(spec, usable_pairs(prepared, "train"), os.path.join(tmp, f"{name}-ray"),
              f"bench-{name}")
    plain, plain_cpu = plain_rate(prepared, cfg.model.name, batch,
                                  int(cfg.train.cpus_per_worker), epochs)
    steady = out.metrics["train/steady_pairs_per_s"]
    cpu = out.metrics.get("train/steady_cpu_s_per_pair", 0.0)  # 0: a tree without the metric
    return {
        "model": cfg.model.name, "batch_pairs": batch, "epochs": epochs,
        "threads": int(cfg.train.cpus_per_worker),
        "pipeline_steady_pairs_per_s": round(steady, 2),
        "pipeline_pairs_per_s_incl_wait": round(out.metrics["train/pairs_per_s"], 2),
        "plain_loop_pairs_per_s": round(plain, 2),
        "pipeline_overhead_ratio": round(steady / plain, 3),
        # The same comparison in CPU seconds per pair of the training process (all its
        # threads): less sensitive to other tenants than wall time on a shared machine.
        "pipeline_cpu_ms_per_pair": round(1000 * cpu, 3) if cpu > 0 else None,
        "plain_loop_cpu_ms_per_pair": round(1000 * plain_cpu, 3),
        "pipeline_cpu_ratio": round(plain_cpu / cpu, 3) if cpu > 0 else None,
        "time_to_first_batch_s": {"last_epoch": round(out.metrics["train/time_to_first_batch_s"], 2)},
    }


def _pss_tree_mb(root: int) -> float:
    """Sum of PSS over ``root`` and all its descendants, in MiB (Linux /proc)."""
    todo, total, seen = [root], 0, set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return total / 1024


def memory_child(pairs: int, tmp: str) -> dict:
    """One fresh process: Ray up, prepare ``pairs`` image pairs, 1 epoch; peak PSS of the tree."""
    import ray

    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _pss_tree_mb(os.getpid()))
            stop.wait(0.25)

    case = CASES["image-64"]
    train = write_data(case, os.path.join(tmp, f"mem-{pairs}"), pairs)
    baseline = _pss_tree_mb(os.getpid())
    threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - t0
    from components.runtime.cluster import ensure_ray

    ensure_ray()
    t_prep, n = ray_decode_s(train, spec_of(case), 1, os.path.join(tmp, f"mem-{pairs}-p"))
    from components.datasets.decode_graph import usable_pairs
    from components.training.trainer import fit
    from components.training.worker import WorkerSpec

    cfg = load_config(None, ["data.image_size=64", "train.epochs=1", "train.batch_size=32"],
                      require_train=False)
    spec = WorkerSpec(train=cfg.train, loss=cfg.loss, model_name=cfg.model.name,
                      modality=cfg.modality)
    out = fit(spec, usable_pairs(os.path.join(tmp, f"mem-{pairs}-p"), "train"),
              os.path.join(tmp, f"mem-{pairs}-ray"), f"mem-{pairs}")
    stop.set()
    ray.shutdown()
    return {"pairs": n, "peak_pss_mib": round(peak[0], 1), "driver_before_ray_mib": round(baseline, 1),
            "ray_init_s": round(ray_init_s, 2), "prepare_s": round(t_prep, 2),
            "time_to_first_batch_s": round(out.metrics["train/time_to_first_batch_s"], 2)}


def memory_bench(n: int, tmp: str) -> dict:
    runs = []
    for pairs in (n, 8 * n):
        res = subprocess.run([sys.executable, __file__, "--memory-child", str(pairs), "--tmp", tmp],
                             capture_output=True, text=True, check=True)
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return {"runs": runs, "memory_ratio_8x": round(runs[1]["peak_pss_mib"] / runs[0]["peak_pss_mib"], 3),
            "what": "peak PSS of driver + raylet + workers + actors (object store shared memory "
                    "included), prepare + 1 epoch of bn-cnn at 64x64"}


def mlflow_setup_s(tmp: str) -> float:
    import mlflow

    from components.tracking import runs

    t0 = time.perf_counter()
    uri = f"sqlite:///{os.path.join(tmp, 'bench-mlflow.db')}"
    runs.setup(uri, "bench")
    with mlflow.start_run():
        mlflow.log_param("x", 1)
    return time.perf_counter() - t0


# pairs for the decode stage (training uses a third of them), batch, epochs
SIZES = {"image-64": (1200, 32, 3), "image-224": (360, 16, 2),
         "video-8x32": (480, 16, 3), "video-16x112": (150, 6, 2)}


def case_sizes(name: str, quick: bool) -> tuple[int, int, int]:
    pairs, batch, epochs = SIZES[name]
    if quick:
        pairs, epochs = max(16, pairs // 20), 2
    return pairs, min(batch, max(2, pairs // 6)), epochs  # several steps per epoch on --quick


def pipeline_only(cases: dict, a: argparse.Namespace) -> None:
    """2 alone: the training set of each case (the same N/3 pairs as the full suite), then
    the pipeline and the plain loop over it."""
    import ray

    t_start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="vdpo-bench-")
    results: dict = {"machine": machine(), "command": " ".join(["benchmarks/suite.py",
                                                                *sys.argv[1:]])}
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    from components.runtime.cluster import ensure_ray

    ensure_ray()
    results["pipeline"] = {}
    for name, case in cases.items():
        pairs, batch, epochs = case_sizes(name, a.quick)
        small = write_data(case, os.path.join(tmp, f"{name}-small"), max(8, pairs // 3))
        ray_decode_s(small, spec_of(case), 1, os.path.join(tmp, f"{name}-ps"))
        results["pipeline"][name] = pipeline_bench(name, case, os.path.join(tmp, f"{name}-ps"),
                                                   batch, epochs, tmp)
        print(name, "pipeline", json.dumps(results["pipeline"][name]), flush=True)
    ray.shutdown()
    results["summary"] = {k: {c: v[k] for c, v in results["pipeline"].items()}
                          for k in ("pipeline_overhead_ratio", "pipeline_cpu_ratio")}
    results["machine"]["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    results["wall_s"] = round(time.perf_counter() - t_start, 1)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results["summary"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results.json"))
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the suite")
    ap.add_argument("--memory-child", type=int)
    ap.add_argument("--tmp")
    ap.add_argument("--pipeline-only", action="store_true",
                    help="only the pipeline overhead ratio (no decode, memory or pinning runs)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    a = ap.parse_args()
    if a.memory_child:
        print(json.dumps(memory_child(a.memory_child, a.tmp)))
        return
    cases = {k: CASES[k] for k in a.cases.split(",")}
    if a.pipeline_only:
        return pipeline_only(cases, a)
    t_start = time.perf_counter()
    q = a.quick
    tmp = tempfile.mkdtemp(prefix="vdpo-bench-")
    results: dict = {"machine": machine(), "command": "make bench (benchmarks/suite.py)"}

    # 3 first, in fresh processes, before this process starts its own Ray cluster.
    results["memory"] = memory_bench(40 if q else 150, tmp)
    results["fixed_overhead_s"] = {"ray_init": results["memory"]["runs"][0]["ray_init_s"],
                                   "mlflow_sqlite_setup_and_run": round(mlflow_setup_s(tmp), 2)}

    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    from components.runtime.cluster import ensure_ray

    ensure_ray()
    actors = max(1, min(2, len(os.sched_getaffinity(0))))
    # pairs for the decode stage (training uses a third of them), batch, epochs
    results["decode"], results["pipeline"] = {}, {}
    for name, case in cases.items():
        pairs, batch, epochs = case_sizes(name, q)
        d = decode_bench(name, case, pairs, actors, tmp)
        results["decode"][name] = {k: v for k, v in d.items() if k != "prepared"}
        print(name, "decode", json.dumps(results["decode"][name]), flush=True)
        results["pipeline"][name] = pipeline_bench(name, case, d["prepared"], batch, epochs, tmp)
        print(name, "pipeline", json.dumps(results["pipeline"][name]), flush=True)
    ray.shutdown()

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from pinning import run as pinning_run

    results["pinning"] = pinning_run(processes=2, seconds=3 if q else 6)
    results["time_to_first_batch_s"] = {
        "first_epoch_8n_pairs": results["memory"]["runs"][1]["time_to_first_batch_s"],
        **{f"{k}_last_epoch": v["time_to_first_batch_s"]["last_epoch"]
           for k, v in results["pipeline"].items()}}
    results["summary"] = {
        "decode_efficiency": {f"{k}/{a}": v[a]["decode_efficiency"] for k, v in results["decode"].items()
                              for a in v if a.startswith("actors_")},
        "pipeline_overhead_ratio": {k: v["pipeline_overhead_ratio"] for k, v in results["pipeline"].items()},
        "memory_ratio_8x": results["memory"]["memory_ratio_8x"],
        "pinning_slowdown_pinned": results["pinning"]["pinning_slowdown_pinned"],
        "pinning_slowdown_default": results["pinning"]["pinning_slowdown_default"],
        "goals": {"decode_efficiency": ">= 0.85", "pipeline_overhead_ratio": ">= 0.9",
                  "memory_ratio_8x": "<= 1.25"},
    }
    results["machine"]["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    results["wall_s"] = round(time.perf_counter() - t_start, 1)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)
    print(table(results))


def table(r: dict) -> str:
    rows = ["| case | decode pairs/s: 1 process / Ray 1 actor / Ray 2 actors | decode efficiency "
            "(1 actor, 2 actors) | prepare incl. write pairs/s | train pairs/s: plain / pipeline "
            "| pipeline overhead ratio |", "|---|---|---|---|---|---|"]
    for k in r["decode"]:
        d, p = r["decode"][k], r["pipeline"][k]
        a1, a2 = d.get("actors_1", {}), d.get("actors_2", {})
        rows.append(f"| {k} {tuple(d['decoded_shape'])} | {d['single_process_pairs_per_s']} / "
                    f"{a1.get('steady_pairs_per_s')} / {a2.get('steady_pairs_per_s')} | "
                    f"{a1.get('decode_efficiency')}, {a2.get('decode_efficiency')} | "
                    f"{d['prepare_step_with_write']['pairs_per_s']} | "
                    f"{p['plain_loop_pairs_per_s']} / {p['pipeline_steady_pairs_per_s']} | "
                    f"{p['pipeline_overhead_ratio']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
