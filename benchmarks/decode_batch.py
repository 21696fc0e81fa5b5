"""Decode efficiency of one actor against the decode stage's batch size (rows per batch).

For each case (64 px images, 8 x 32 x 32 clips; ``--cases`` adds 224 px images and
16 x 112 x 112 clips): the pairs/s of a plain single-process decode loop over the encoded
bytes in memory, and the steady pairs/s of the real Ray Data decode stage
(``decode_graph.decode_stage``: read -> canonical rows -> ``PairDecoder`` in a pool of one actor,
streamed to the driver) at several batch sizes, among them the one
``components.datasets.batching.decode_batch_rows`` picks ("auto"). Same method as
``benchmarks/suite.py`` ("decode efficiency, 1 actor"): the stage runs on N/3 and on N pairs
and the steady rate is the difference of pairs over the difference of seconds, so actor
start-up and pipeline fill/drain cancel out; efficiency = steady stage rate / plain rate.

Every figure is a ratio within one run; each repeat measures the plain loop again right
before its stage runs (the machine is shared), and the table reports the median over
``--repeats``. Prints one JSON object.

    .venv/bin/python benchmarks/decode_batch.py [--cases image-64,video-8x32] [--repeats 3]
        [--batch-sizes 32,auto,...] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from components.datasets.batching import decode_batch_rows, per_pair_bytes  # noqa: E402
from components.datasets.contract import resolve_shards  # noqa: E402
from components.media.spec import MediaSpec  # noqa: E402

# kind -> modality, source size, decoded size, frames, source frames, pairs (N)
CASES = {
    "image-64": dict(modality="image", source=64, size=64, pairs=12000),
    "image-224": dict(modality="image", source=320, size=224, pairs=900),
    "video-8x32": dict(modality="video", source=32, size=32, frames=8, source_frames=8,
                       pairs=2400),
    "video-16x112": dict(modality="video", source=128, size=112, frames=16, source_frames=24,
                         pairs=300),
}


def write_data(case: dict, out: str, pairs: int) -> str:
    if case["modality"] == "image":
        from components.sample.images import write_image_pairs

        write_image_pairs(out, pairs=pairs + 8, size=case["source"], shards=2, seed=1)
    else:
        from components.sample.videos import write_video_pairs

        write_video_pairs(out, pairs=pairs + 4, size=case["source"],
                          frames=case["source_frames"], shards=2, seed=1,
                          eval_fraction=4 / (pairs + 4))
    return os.path.join(out, "train")


def spec_of(case: dict) -> MediaSpec:
    if case["modality"] == "image":
        return MediaSpec("image", case["size"], 10**8)
    return MediaSpec("video", case["size"], 10**8, frames=case["frames"])


def plain_rate(train_dir: str, spec: MediaSpec) -> float:
    """Pairs/s of a plain decode loop in this process (bytes already in memory)."""
    t = pq.read_table(train_dir, columns=["chosen", "rejected"]).to_pydict()
    t0 = time.perf_counter()
    for c, r in zip(t["chosen"], t["rejected"], strict=True):
        spec.decode(c)
        spec.decode(r)
    return len(t["chosen"]) / (time.perf_counter() - t0)


def stage_s(train_dir: str, spec: MediaSpec, batch_size: int) -> tuple[float, int]:
    """Seconds to stream every decoded pair of ``train_dir`` through the decode stage."""
    from components.datasets.contract import ReadPlan
    from components.datasets.decode_graph import DecodeOptions, decode_stage
    from components.datasets.reading import SplitRule

    t0 = time.perf_counter()
    ds = decode_stage(ReadPlan.of(resolve_shards([train_dir]), "canonical"),
                      DecodeOptions(spec, "canonical", batch_size=batch_size),
                      SplitRule(fixed="train"))
    n = sum(len(b["status"]) for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    return time.perf_counter() - t0, n


def mean_encoded_pair_bytes(train_dir: str) -> int:
    t = pq.read_table(train_dir, columns=["chosen", "rejected"])
    return int((t["chosen"].nbytes + t["rejected"].nbytes) / max(1, t.num_rows))


def bench_case(name: str, case: dict, sizes: list[str], repeats: int, pairs: int,
               tmp: str) -> dict:
    spec = spec_of(case)
    big = write_data(case, os.path.join(tmp, f"{name}-big"), pairs)
    small = write_data(case, os.path.join(tmp, f"{name}-small"), max(8, pairs // 3))
    auto = decode_batch_rows(spec, 0)
    rows = {s: (auto if s == "auto" else int(s)) for s in sizes}
    stage_s(small, spec, 32)  # start the worker processes once
    runs: dict[str, list[dict]] = {s: [] for s in sizes}
    plains: list[float] = []
    for _ in range(repeats):
        for s in sizes:  # interleaved: drift in the machine's load hits every size alike
            plain = plain_rate(big, spec)
            plains.append(plain)
            t_small, n_small = stage_s(small, spec, rows[s])
            t_big, n_big = stage_s(big, spec, rows[s])
            steady = (n_big - n_small) / max(t_big - t_small, 1e-9)
            runs[s].append({"plain": plain, "steady": steady, "eff": steady / plain,
                            "t": [t_small, t_big], "n": [n_small, n_big]})
    out: dict = {
        "decoded_shape": list(spec.shape),
        "decoded_bytes_per_pair": per_pair_bytes(spec),
        "encoded_bytes_per_pair": mean_encoded_pair_bytes(big),
        "auto_rows": auto,
        "plain_pairs_per_s_median": round(statistics.median(plains), 1),
        "batch": {},
    }
    for s in sizes:
        r = runs[s]
        out["batch"][s] = {
            "rows": rows[s],
            "decoded_mib_per_batch": round(rows[s] * per_pair_bytes(spec) / 2**20, 2),
            "efficiency_median": round(statistics.median(x["eff"] for x in r), 3),
            "efficiency_runs": [round(x["eff"], 3) for x in r],
            "steady_pairs_per_s_median": round(statistics.median(x["steady"] for x in r), 1),
            "plain_pairs_per_s_median": round(statistics.median(x["plain"] for x in r), 1),
            "seconds_small_big": [[round(t, 2) for t in x["t"]] for x in r],
            "pairs_small_big": r[0]["n"],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="image-64,video-8x32")
    ap.add_argument("--batch-sizes", default="32,auto",
                    help="comma-separated rows per decode batch; 'auto' = decode_batch_rows")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", type=float, default=1.0, help="scale of each case's N")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat: a smoke run")
    ap.add_argument("--out", help="also write the JSON here")
    a = ap.parse_args()
    scale, repeats = (0.05, 1) if a.quick else (a.pairs, a.repeats)
    sizes = [s.strip() for s in a.batch_sizes.split(",") if s.strip()]

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from components.runtime.cluster import ensure_ray

    ensure_ray()
    tmp = tempfile.mkdtemp(prefix="vdpo-decode-batch-")
    t0 = time.perf_counter()
    res: dict = {"cores": os.cpu_count(), "loadavg_1min_start": round(os.getloadavg()[0], 2),
                 "repeats": repeats, "method": "steady rate of decode_stage (1 actor, N/3 vs "
                 "N pairs) / plain single-process decode loop; medians over repeats",
                 "cases": {}}
    for name in [c.strip() for c in a.cases.split(",") if c.strip()]:
        case = CASES[name]
        pairs = max(24, int(case["pairs"] * scale))
        res["cases"][name] = bench_case(name, case, sizes, repeats, pairs, tmp)
        print(name, json.dumps(res["cases"][name]), file=sys.stderr, flush=True)
    ray.shutdown()
    res["summary"] = {name: {s: c["batch"][s]["efficiency_median"] for s in sizes}
                      | {"auto_rows": c["auto_rows"]} for name, c in res["cases"].items()}
    res["goal"] = "efficiency >= 0.85 at the automatic batch size"
    res["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(res, indent=2)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
