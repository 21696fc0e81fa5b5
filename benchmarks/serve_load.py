"""Reward service under load: Ray Serve (``visual-dpo serve``, dynamic batching) against
``mlflow models serve --env-manager local`` on the same registered model, same machine, same run.

A fresh sqlite registry gets one untrained scorer per modality (the architecture and decode
sizes are what cost time; the weights do not). Each server is started, warmed up, and driven
from this process over loopback by ``c`` concurrent clients (aiohttp), each sending one item per
request back to back (an RL loop asking for one reward at a time), for ``--seconds`` or
``--max-requests``, whichever comes first; then stopped, so the two servers never share the
cores. Ray Serve is measured with MLflow's JSON payload and with the binary form over each
HTTP ingress (``--ingress``: HAProxy forwarding to the replica's own HTTP server, the
default of ``visual-dpo serve``; Serve's Python proxy actor), and through its Python handle
from this process (``form`` "handle": a caller inside Ray, such as an RL loop on the cluster,
with no HTTP and no ingress in between).

    .venv/bin/python benchmarks/serve_load.py [--seconds 8] [--max-requests 2000]
        [--cases image,image-resnet18,video] [--concurrency 1,8,64]
        [--ingress haproxy,proxy] [--out benchmarks/serve_load.json]

Writes the JSON (every cell: requests, errors, throughput, p50/p99 latency, mean batch size)
and prints the markdown table docs/serving.md shows.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# case -> modality, model, decoded size, frames. Sources: 256 px JPEG photos, 24-frame 128 px
# MP4 clips. "image" is the default scorer (tiny: HTTP and decode dominate); "image-resnet18"
# a scorer whose model call dominates, where batching has something to amortise.
CASES = {"image": ("image", "bn-cnn", 64, 0), "image-resnet18": ("image", "resnet18", 224, 0),
         "video": ("video", "bn-c3d", 32, 8)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _items(modality: str, n: int = 16) -> list[bytes]:
    from components.media.video import encode_video
    from tests.media_bytes import photo_bytes

    if modality == "image":
        return [photo_bytes(256, "JPEG", seed=i) for i in range(n)]
    rng = np.random.default_rng(0)
    return [encode_video(rng.integers(0, 255, (24, 128, 128, 3), dtype=np.uint8), "mp4")
            for _ in range(n // 4)]


def _register(tracking: str, case: str, root: str) -> str:
    import mlflow
    import torch

    from components.media.spec import MediaSpec
    from components.registry.scorer_files import TrainedScorer
    from components.tracking import models, runs
    from components.training.models import build_scorer

    modality, model, size, frames = CASES[case]
    mlflow.set_tracking_uri(tracking)
    if mlflow.get_experiment_by_name("serve-load") is None:  # artifacts in the temp dir too
        mlflow.create_experiment("serve-load", artifact_location=os.path.join(root, "artifacts"))
    runs.setup(tracking, "serve-load")
    torch.manual_seed(0)
    spec = MediaSpec(modality, size, 40_000_000, frames=frames)
    scorer = TrainedScorer(model, build_scorer(model).state_dict(), spec)
    name = f"load-{case}"
    with mlflow.start_run():
        info = models.log_scorer(scorer, _items(modality, 4)[0], name)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion",
                                                    str(info.registered_model_version))
    return name


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _json_body(column: str, item: bytes) -> bytes:
    return json.dumps({"dataframe_split": {"columns": [column],
                                           "data": [[base64.b64encode(item).decode()]]}}).encode()


async def _load(send, concurrency: int, seconds: float, max_requests: int) -> dict:
    """``concurrency`` clients, each awaiting ``send(i)`` (one item; ``(ok, batch_sizes)``)
    back to back, for ``seconds`` or ``max_requests`` in all."""
    latencies, errors, batch_sizes, sent = [], 0, [], 0
    stop_at = time.monotonic() + seconds

    async def client(k: int) -> None:
        nonlocal errors, sent
        i = k
        while time.monotonic() < stop_at and sent < max_requests:
            sent += 1
            t = time.perf_counter()
            try:
                ok, sizes = await send(i)
            except Exception:
                ok, sizes = False, []
            latencies.append(time.perf_counter() - t)
            if not ok:
                errors += 1
            batch_sizes.extend(sizes)
            i += concurrency

    started = time.monotonic()
    await asyncio.gather(*[client(k) for k in range(concurrency)])
    wall = time.monotonic() - started
    lat = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors,
            "seconds": round(wall, 2), "throughput_rps": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "mean_batch": round(float(np.mean(batch_sizes)), 2) if batch_sizes else None}


async def _drive(url: str, bodies: list[bytes], content_type: str, concurrency: int,
                 seconds: float, max_requests: int) -> dict:
    """HTTP clients (aiohttp) posting ``bodies`` to ``url``."""
    import aiohttp

    conn = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:

        async def send(i: int) -> tuple[bool, list[int]]:
            async with session.post(url, data=bodies[i % len(bodies)],
                                    headers={"Content-Type": content_type}) as r:
                answer = await r.json(content_type=None)
            ok = r.status == 200 and not any(answer.get("errors") or [])
            return ok, answer.get("batch_sizes", [])

        return await _load(send, concurrency, seconds, max_requests)


async def _drive_handle(handle, items: list[bytes], concurrency: int, seconds: float,
                        max_requests: int) -> dict:
    """Callers inside Ray (an RL loop on the cluster): ``handle.score.remote([item])``, no HTTP
    and no proxy; the Serve router runs in this process."""

    async def send(i: int) -> tuple[bool, list[int]]:
        answer = await handle.score.remote([items[i % len(items)]])
        return not any(answer.get("errors") or []), answer.get("batch_sizes", [])

    return await _load(send, concurrency, seconds, max_requests)


def _measure(server: str, form: str, drive, args) -> list[dict]:
    """``drive(concurrency, seconds, max_requests)`` -> a cell; a warm-up, then each ``c``."""
    asyncio.run(drive(4, 2.0, 50))  # warm-up
    rows = []
    for c in args.concurrency:
        row = asyncio.run(drive(c, args.seconds, args.max_requests))
        # The 1-minute load average after the cell: this machine is shared, say how busy it was.
        row.update(server=server, form=form, loadavg_1m=round(os.getloadavg()[0], 1))
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _http(url: str, bodies: list[bytes], content_type: str):
    return lambda c, seconds, n: _drive(url, bodies, content_type, c, seconds, n)


def _in_ray(handle, items: list[bytes]):
    return lambda c, seconds, n: _drive_handle(handle, items, c, seconds, n)


def _mlflow_serve(name: str, tracking: str, log_path: str):
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking,
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "mlflow"), "models", "serve", "-m",
         f"models:/{name}@champion", "--env-manager", "local", "--host", "127.0.0.1",
         "-p", str(port)],
        env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(open(log_path).read()[-3000:])
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2):
                return proc, url + "/invocations"
        except OSError:
            time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("mlflow models serve did not start")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="image,image-resnet18,video", help=f"of {list(CASES)}")
    p.add_argument("--concurrency", default="1,8,64")
    p.add_argument("--seconds", type=float, default=8.0, help="per cell (upper bound)")
    p.add_argument("--max-requests", type=int, default=2000, help="per cell (upper bound)")
    p.add_argument("--serve-settings", default="batch.max_size=32,batch.wait_timeout_s=0.005",
                   help="comma-separated key=value for the Ray Serve side")
    p.add_argument("--ingress", default="haproxy,proxy",
                   help="Ray Serve ingresses to measure, each on a cluster of its own "
                        "(settings.ingress: haproxy, proxy)")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "serve_load.json"))
    args = p.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]

    import ray
    from ray import serve

    from components.serving.payload import BINARY_CONTENT_TYPE, encode_binary
    from components.serving.service import ingress_env, scoped_environ, serve_model
    from components.serving.settings import settings_from_overrides

    cpus = os.cpu_count() or 1
    results = {"command": "python " + " ".join(sys.argv), "machine": {
        "cpus": cpus, "processor": platform.processor() or platform.machine(),
        "gpu": _has_gpu(), "python": platform.python_version()}, "cases": {}}
    with tempfile.TemporaryDirectory() as d:
        tracking = f"sqlite:///{d}/mlflow.db"
        os.environ["MLFLOW_TRACKING_URI"] = tracking
        for case in args.cases.split(","):
            modality = CASES[case][0]
            name = _register(tracking, case, d)
            items = _items(modality)
            json_bodies = [_json_body(modality, it) for it in items]
            bin_bodies = [encode_binary([it]) for it in items]
            rows = []
            for k, ingress in enumerate(args.ingress.split(",")):
                # Ray Serve: every core to the one replica (torch gets as many threads as
                # mlflow's), on a cluster started with this ingress (as `visual-dpo serve` does).
                overrides = [f"port={_free_port()}", f"scaling.num_cpus={cpus}", "poll_s=0",
                             f"ingress={ingress}", *args.serve_settings.split(",")]
                settings = settings_from_overrides(overrides)
                with scoped_environ(ingress_env(ingress)):
                    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
                try:
                    info = serve_model(f"{name}@champion", settings, tracking)
                    assert info["ingress"] == ingress, info
                    server = f"ray-serve ({ingress})"
                    print(f"== {case}, {server}", flush=True)
                    rows += _measure(server, "json",
                                     _http(info["url"], json_bodies, "application/json"), args)
                    rows += _measure(server, "binary",
                                     _http(info["url"], bin_bodies, BINARY_CONTENT_TYPE), args)
                    if k == 0:  # no HTTP, no ingress: the same path whichever is set
                        handle = serve.get_app_handle(settings.app_name)
                        rows += _measure("ray-serve", "handle", _in_ray(handle, items), args)
                finally:
                    serve.shutdown()
                    ray.shutdown()
            proc, url = _mlflow_serve(name, tracking, os.path.join(d, f"mlflow-{case}.log"))
            try:
                rows += _measure("mlflow", "json", _http(url, json_bodies, "application/json"),
                                 args)
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)
            _, model, size, frames = CASES[case]
            results["cases"][case] = {
                "model": model, "decoded": f"{size}px" + (f" x {frames} frames" if frames else ""),
                "source": "256 px JPEG" if modality == "image" else "24-frame 128 px MP4",
                "serve_settings": settings.as_dict(), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(table(results))


def table(results: dict) -> str:
    lines = ["| case | server | payload | c | req/s | p50 ms | p99 ms | mean batch | errors | load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, case in results["cases"].items():
        for r in case["rows"]:
            lines.append(f"| {name} ({case['model']} {case['decoded']}) | {r['server']} | {r['form']} | {r['concurrency']} | "
                         f"{r['throughput_rps']} | {r['p50_ms']} | {r['p99_ms']} | "
                         f"{r['mean_batch'] or '-'} | {r['errors']}/{r['requests']} | "
                         f"{r.get('loadavg_1m', '-')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
