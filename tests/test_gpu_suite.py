"""benchmarks/gpu_suite.py, the prepared run for a lent GPU: the decode-sizing arithmetic
against hand-computed values, the card table, and the whole script in its CPU smoke mode in
an interpreter where Ray, MLflow, PyAV and torchvision cannot be imported (the lent machine
has none of the first three, and maybe not torchvision).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_suite.py"
BLOCKED = ("ray", "mlflow", "av", "torchvision")
FIELDS = ("batch_pairs", "pairs_per_s", "tflops", "mfu", "peak_mem_gib", "decode_cores_per_gpu",
          "gpu_wait_fraction")

# Runs the script as `python gpu_suite.py ARGS` would, with every finder on sys.meta_path
# wrapped to find nothing for the blocked packages: `import av` raises ModuleNotFoundError and
# importlib.util.find_spec("av") is None, as where they are not installed (transformers asks
# find_spec before it imports its optional dependencies). Then prints which of them were
# imported all the same (none may be).
_WITHOUT = f"""
import runpy, sys
BLOCKED = {set(BLOCKED)!r}
class Without:
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            return None
        return self.finder.find_spec(name, path, target)
    def __getattr__(self, attr):
        return getattr(self.finder, attr)
sys.meta_path[:] = [Without(f) for f in sys.meta_path]
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
print("imported:", sorted({{m.partition(".")[0] for m in sys.modules}} & BLOCKED))
"""


@pytest.fixture(scope="module")
def suite():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_suite
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return gpu_suite


def test_decode_cores_and_gpu_wait_by_hand(suite):
    """100 pairs/s need 200 items/s. JPEG at 25 items/s per core: 200 / 25 = 8 cores; 16 cores
    give 400 items/s >= 200, so the GPU never waits. PNG at 10 items/s per core: 200 / 10 = 20
    cores; 16 cores give 160 items/s, so a step that computes in 1 s waits for 200/160 s:
    the GPU waits 1 - 160/200 = 0.2 of the time."""
    w = suite.Workload("bn-cnn", "bn-cnn", 224, 8)
    row = {"pairs_per_s": 100.0, "notes": []}
    suite.input_bound(row, w, {"jpeg@224": 25.0, "png@224": 10.0, "jpeg@448": 1.0}, cores=16)
    assert row["decode_cores_per_gpu"] == pytest.approx({"jpeg": 8.0, "png": 20.0})
    assert row["gpu_wait_fraction"] == pytest.approx({"jpeg": 0.0, "png": 0.2})


def test_clips_without_pyav_are_reported_unmeasured(suite):
    w = suite.Workload("bn-c3d", "bn-c3d", 112, 8, frames=16)
    row = {"pairs_per_s": 50.0, "notes": []}
    suite.input_bound(row, w, {"jpeg@224": 25.0}, cores=16)
    assert row["decode_cores_per_gpu"] == {"mp4": None} and row["gpu_wait_fraction"] == {"mp4": None}
    assert any("PyAV" in n for n in row["notes"])


def test_card_peaks_by_name(suite):
    assert suite.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0  # SXM
    assert suite.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert suite.peak_tflops("NVIDIA H100 NVL") == 835.0
    assert suite.peak_tflops("NVIDIA H200") == 989.0
    assert suite.peak_tflops("cpu") is None


@pytest.mark.slow  # a subprocess building four models: ~12 CPU-seconds, in `make test` only
def test_smoke_run_needs_no_ray_mlflow_or_pyav(tmp_path):
    out = tmp_path / "suite.json"
    res = subprocess.run([sys.executable, "-c", _WITHOUT, str(SCRIPT), "--device", "cpu",
                          "--smoke", "--out", str(out)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "imported: []" in res.stdout, res.stdout[-2000:]
    assert "SMOKE TEST" in res.stdout  # the table says it is not performance
    report = json.loads(out.read_text())
    assert report["smoke"] and report["device"] == "cpu" and report["decode"]["pyav"] is False
    assert {r["scorer"] for r in report["models"]} == {"bn-cnn", "bn-c3d", "hf-clip", "vlm"}
    for r in report["models"]:
        assert all(k in r for k in FIELDS), (r["model"], sorted(r))
        assert r["batch_pairs"] >= 1 and math.isfinite(r["pairs_per_s"]) and r["pairs_per_s"] > 0, r
        assert math.isfinite(r["tflops"]) and r["tflops"] > 0, r  # FLOPs were counted
        assert r["mfu"] is None and r["peak_mem_gib"] is None  # no peak, no device memory on CPU
        if r["scorer"] == "bn-c3d":  # clips need PyAV, which this interpreter lacks
            assert r["decode_cores_per_gpu"] == {"mp4": None}, r
        else:
            for fmt in ("jpeg", "png"):
                cores = r["decode_cores_per_gpu"][fmt]
                assert math.isfinite(cores) and cores > 0, r
                assert 0.0 <= r["gpu_wait_fraction"][fmt] < 1.0, r
