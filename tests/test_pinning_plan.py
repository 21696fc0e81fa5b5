"""The CPU planner and per-process pinning (no Ray): fast unit tests.

Pinning is planned per node: the driver's ``CpuPlan`` is only the run's shape, and every
process plans its own node (``CpuPlan.for_node``) from that node's CPU list and Ray resources."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from components.config import PreprocessConfig, TrainConfig
from components.runtime import pinning
from components.runtime.pinning import (
    claim_slot,
    process_report,
    read_reports,
    release_slot,
    thread_env,
)
from components.runtime.pinning.plan import (
    CpuPlan,
    NodePlan,
    format_cpus,
    parse_cpus,
    plan_cpus,
    plan_for_run,
)

ROOT = Path(__file__).resolve().parents[1]


def _all_sets(plan: NodePlan) -> list[tuple[int, ...]]:
    return list(plan.train) + list(plan.preprocess)


def test_enough_cores_disjoint_contiguous_blocks():
    plan = plan_cpus("auto", 2, 2, 4, 2, node_cpus=range(16))
    assert plan.mode == "auto" and not plan.shared and plan.warnings == ()
    assert plan.node_cpus == tuple(range(16))
    assert plan.train == ((0, 1), (2, 3))
    assert plan.preprocess == ((4, 5), (6, 7), (8, 9), (10, 11))
    used = [c for s in _all_sets(plan) for c in s]
    assert len(used) == len(set(used)) == 12  # disjoint, every request met
    assert set(used) <= set(plan.node_cpus)
    assert "spare 12-15" in plan.describe()


def test_exact_fit_covers_every_core_and_unsorted_node_cpus():
    plan = plan_cpus("auto", 1, 2, 3, 2, node_cpus=[7, 6, 5, 4, 3, 2, 1, 0, 0])
    assert sorted(c for s in _all_sets(plan) for c in s) == list(range(8))
    assert not plan.shared


def test_two_cores_with_requests_for_eight_degrade_gracefully():
    plan = plan_cpus("auto", 1, 2, 3, 2, node_cpus=[0, 1])
    assert plan.shared
    assert plan.train == ((0,),)
    assert plan.preprocess == ((1,), (1,), (1,))  # actors share, off the training core
    for s in _all_sets(plan):
        assert s and set(s) <= {0, 1}
    (w,) = plan.warnings
    assert "requested 8 cores" in w and "has 2" in w
    assert "preprocess.actors" in w and "preprocess.cpus_per_actor" in w
    assert "SHARED" in plan.describe()


def test_more_workers_than_cores_everyone_shares():
    plan = plan_cpus("auto", 4, 2, 4, 2, node_cpus=[0, 1])
    assert plan.shared and plan.warnings
    assert len(plan.train) == 4 and len(plan.preprocess) == 4
    assert all(len(s) == 1 and set(s) <= {0, 1} for s in _all_sets(plan))
    one = plan_cpus("auto", 2, 1, 2, 1, node_cpus=[3])
    assert one.shared and all(s == (3,) for s in _all_sets(one))


def test_shrink_without_overlap_warns_but_is_not_shared():
    plan = plan_cpus("auto", 1, 2, 4, 2, node_cpus=range(8))  # 10 requested
    assert plan.train == ((0, 1),)
    assert [len(s) for s in plan.preprocess] == [2, 2, 1, 1]
    assert not plan.shared and len(plan.warnings) == 1
    used = [c for s in _all_sets(plan) for c in s]
    assert len(used) == len(set(used)) == 8


def test_mode_off_plans_no_pinning():
    plan = plan_cpus("off", 2, 2, 3, 2, node_cpus=range(4))
    assert plan.mode == "off" and not plan.shared and not plan.warnings
    assert plan.train == ((), ()) and plan.preprocess == ((), (), ())
    assert plan.train_set(5) == () and plan.preprocess_set(7) == ()
    assert plan.to_params()["pinning.train.0"] == "none"
    assert "off" in plan.describe()


def test_sets_wrap_modulo_the_count():
    plan = plan_cpus("auto", 2, 1, 3, 1, node_cpus=range(8))
    assert plan.train_set(0) == (0,) and plan.train_set(3) == (1,)
    assert plan.preprocess_set(0) == (2,) and plan.preprocess_set(4) == (3,)


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (("sometimes", 1, 1, 1, 1), "preprocess.pin_cpus"),
        (("auto", -1, 1, 1, 1), "train_workers"),
        (("auto", 1, 0, 1, 1), "cpus_per_worker"),
        (("auto", 1, 1, -2, 1), "preprocess.actors"),
        (("auto", 1, 1, 1, 0), "preprocess.cpus_per_actor"),
        (("auto", 1, 1, 1.5, 1), "preprocess.actors"),
        (("auto", 1, 1, True, 1), "preprocess.actors"),
    ],
)
def test_invalid_inputs_name_the_key(args, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        plan_cpus(*args, node_cpus=range(4))


def test_invalid_node_cpus():
    with pytest.raises(ValueError, match="node_cpus"):
        plan_cpus("auto", 1, 1, 1, 1, node_cpus=[])
    with pytest.raises(ValueError, match="node_cpus"):
        plan_cpus("auto", 1, 1, 1, 1, node_cpus=["x"])


def test_default_node_cpus_is_own_affinity():
    plan = plan_cpus("auto", 1, 1, 1, 1)
    assert set(plan.node_cpus) == set(os.sched_getaffinity(0))


def test_dict_round_trip_is_json_safe():
    for plan in (plan_cpus("auto", 2, 2, 4, 2, node_cpus=range(16)),
                 plan_cpus("auto", 1, 2, 3, 2, node_cpus=[0, 1]),
                 plan_cpus("off", 1, 1, 2, 1, node_cpus=[0, 1])):
        d = json.loads(json.dumps(plan.to_dict()))
        assert NodePlan.from_dict(d) == plan
    with pytest.raises(ValueError, match="pin_cpus"):
        NodePlan.from_dict({"mode": "on"})


def test_to_params_keys_and_values():
    p = plan_cpus("auto", 1, 1, 1, 1, node_cpus=[0, 1]).to_params()
    assert p == {
        "pinning.mode": "auto",
        "pinning.node_cpus": "0-1",
        "pinning.shared": "false",
        "pinning.train.0": "0",
        "pinning.preprocess.0": "1",
    }
    assert all(isinstance(v, str) for v in p.values())
    shared = plan_cpus("auto", 1, 2, 3, 2, node_cpus=[0, 1]).to_params()
    assert shared["pinning.shared"] == "true" and "requested 8" in shared["pinning.warnings"]


def test_format_parse_cpus():
    assert format_cpus([5, 0, 1, 2, 8, 7]) == "0-2,5,7-8"
    assert parse_cpus("0-2,5,7-8") == (0, 1, 2, 5, 7, 8)
    assert format_cpus([]) == "none" and parse_cpus("none") == ()


def test_thread_env_and_report():
    assert thread_env(3) == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3",
                             "OPENBLAS_NUM_THREADS": "3"}
    with pytest.raises(ValueError, match="threads"):
        thread_env(0)
    r = process_report()
    assert r["pid"] == os.getpid() and set(r["affinity"]) == set(os.sched_getaffinity(0))
    assert r["os_threads"] >= 1


_PIN_CHILD = """
import json, os, sys
import torch
from components.runtime.pinning import pin_current_process
before = sorted(os.sched_getaffinity(0))
threads_before = torch.get_num_threads()
core = before[-1]
try:
    report = pin_current_process([core])
    after = {"affinity": sorted(os.sched_getaffinity(0)), "torch": torch.get_num_threads(),
             "omp": os.environ.get("OMP_NUM_THREADS"), "report": report}
finally:
    os.sched_setaffinity(0, before)
    torch.set_num_threads(threads_before)
after["restored"] = sorted(os.sched_getaffinity(0)) == before
after["core"] = core
print(json.dumps(after))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux-only affinity")
def test_pin_current_process_changes_affinity_and_threads():
    # In a fresh interpreter, so this test process is never left pinned.
    out = subprocess.run([sys.executable, "-c", _PIN_CHILD], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["affinity"] == [r["core"]]
    assert r["torch"] == 1 and r["omp"] == "1"
    assert r["report"]["affinity"] == [r["core"]] and r["report"]["torch_threads"] == 1
    assert r["restored"]


def test_pin_without_sched_setaffinity_is_a_noop(monkeypatch, caplog):
    monkeypatch.delattr(os, "sched_setaffinity")
    before = os.sched_getaffinity(0)
    from components.runtime.pinning import pin_current_process

    with caplog.at_level("WARNING", logger="components.runtime.pinning"):
        report = pin_current_process([min(before)], threads=0)  # threads=0: no thread caps
    assert os.sched_getaffinity(0) == before
    assert set(report["affinity"]) == before
    assert "not available" in caplog.text


# --------------------------------------------------------------------------- per node


def _shape(actors=16, workers=1, cpus_per_actor=1, cpus_per_worker=1.0, use_gpu="false"):
    return plan_for_run(PreprocessConfig(actors=actors, cpus_per_actor=cpus_per_actor),
                        TrainConfig(workers=workers, cpus_per_worker=cpus_per_worker,
                                    use_gpu=use_gpu))


def test_run_plan_is_a_shape_without_core_ids():
    shape = _shape()
    d = json.loads(json.dumps(shape.to_dict()))
    assert CpuPlan.from_dict(d) == shape and CpuPlan.from_dict(d).key == shape.key
    assert not any("cpus" == k or "node_cpus" in k or k in ("train", "preprocess") for k in d)
    assert shape.key and _shape().key != shape.key  # each run its own node-local slots
    assert shape.to_params() == {
        "pinning.mode": "auto", "pinning.scope": "per-node",
        "pinning.train.workers": "1", "pinning.train.cpus_each": "1",
        "pinning.preprocess.actors": "16", "pinning.preprocess.cpus_each": "1",
    }
    assert "per node" in shape.describe() and shape.warnings == ()
    # A per-node plan (or an old driver's dict) is not a shape: say so instead of guessing.
    with pytest.raises(ValueError, match="missing"):
        CpuPlan.from_dict(plan_cpus("auto", 1, 1, 1, 1, node_cpus=[0, 1]).to_dict())
    with pytest.raises(ValueError, match="pin_cpus"):
        CpuPlan.from_dict({**d, "mode": "on"})
    # A fractional CPU reservation is pinned to whole cores, with a warning.
    (w,) = _shape(cpus_per_worker=0.5).warnings
    assert "0.5" in w and _shape(cpus_per_worker=0.5).cpus_per_worker == 1


def test_two_nodes_plan_from_their_own_cpus():
    """The issue: a 4-vCPU head and a 32-core worker, preprocess.actors=16. Each node plans
    from its own CPUs: on the worker the 16 actors get 16 disjoint cores in 0-31 (not 1-3)."""
    shape = CpuPlan.from_dict(json.loads(json.dumps(_shape(actors=16).to_dict())))
    head, worker = (0, 1, 2, 3), tuple(range(32))

    on_worker = [shape.cpus_for("preprocess", k, worker, ray_cpus=32) for k in range(16)]
    cores = [c for s in on_worker for c in s]
    assert all(len(s) == 1 for s in on_worker)
    assert len(set(cores)) == 16 and set(cores) <= set(worker)
    assert not set(cores) <= {1, 2, 3}
    train_core = shape.cpus_for("train", 0, worker, ray_cpus=32)
    assert train_core == (0,) and not set(train_core) & set(cores)
    plan_w = shape.for_node(worker, ray_cpus=32, node="worker-node")
    assert not plan_w.shared and plan_w.warnings == () and plan_w.node == "worker-node"
    assert "spare 17-31" in plan_w.describe() and "worker-node" in plan_w.describe()

    # The head fits one training worker and 3 actors (Ray places no more there): disjoint.
    plan_h = shape.for_node(head, ray_cpus=4, node="head-node")
    assert plan_h.train == ((0,),) and plan_h.preprocess == ((1,), (2,), (3,))
    assert not plan_h.shared and plan_h.warnings == ()

    # With GPU training a node without GPUs runs no training worker: actors get every core.
    gpu = _shape(actors=16, use_gpu="true")
    assert gpu.for_node(head, ray_cpus=4, ray_gpus=0).preprocess == ((0,), (1,), (2,), (3,))
    assert gpu.for_node(worker, ray_cpus=32, ray_gpus=1).train == ((0,),)
    auto = _shape(actors=16, use_gpu="auto")  # auto: GPUs when the cluster has any
    assert auto.for_node(head, ray_cpus=4, ray_gpus=0, cluster_gpus=1).train == ()
    assert auto.for_node(head, ray_cpus=4, ray_gpus=0, cluster_gpus=0).train == ((0,),)


def test_node_plan_uses_the_node_cpu_list_and_ray_cpus():
    shape = _shape(actors=4, workers=2, cpus_per_actor=2, cpus_per_worker=2)
    # A cpuset that is not 0-based: blocks come from the node's own list.
    plan = shape.for_node([16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27])
    assert plan.train == ((16, 17), (18, 19))
    assert plan.preprocess == ((20, 21), (22, 23), (24, 25), (26, 27))
    # Ray declared fewer CPUs than the node has: only what Ray can place gets a slot.
    small = shape.for_node(range(32), ray_cpus=8)
    assert small.train == ((0, 1), (2, 3)) and small.preprocess == ((4, 5), (6, 7))
    # Too few cores for what Ray may place: degrade with a warning that names the node.
    tight = _shape(actors=4, workers=1, cpus_per_actor=2).for_node([0, 1], ray_cpus=8,
                                                                   node="n1")
    assert tight.shared and "node n1" in tight.warnings[0]
    assert _shape(actors=0, workers=0).for_node(range(4)).preprocess == ()
    off = plan_for_run(PreprocessConfig(actors=3, pin_cpus="off"), TrainConfig())
    assert off.cpus_for("preprocess", 1, range(8)) == () and "off" in off.describe()
    with pytest.raises(ValueError, match="role"):
        off.cpus_for("decode", 0, range(8))


def _fake_node(monkeypatch, node: str, cpus, ray_cpus):
    monkeypatch.setattr(pinning.role, "node_info", lambda resources=True: {
        "node": node, "node_id": node, "hostname": f"host-{node}", "ray_cpus": ray_cpus,
        "ray_gpus": 0.0,
        "cluster_gpus": 0.0})
    monkeypatch.setattr(pinning.role, "node_cpus", lambda: tuple(cpus))


def test_pin_role_plans_its_own_node_and_the_report_names_it(monkeypatch, tmp_path):
    pinned: list[tuple[int, ...]] = []

    def fake_pin(cpus, threads=None, *, import_torch=True):  # never pin the test process
        pinned.append(tuple(cpus))
        return process_report()

    monkeypatch.setattr(pinning.role, "pin_current_process", fake_pin)  # where pin_role looks
    shape = _shape(actors=16).to_dict()
    reports = tmp_path / "pinning"
    _fake_node(monkeypatch, "node-a", range(4), 4.0)
    a = [pinning.pin_role(shape, "preprocess", k, str(reports)) for k in range(3)]
    _fake_node(monkeypatch, "node-b", range(32), 32.0)
    b = [pinning.pin_role(shape, "preprocess", k, str(reports)) for k in range(16)]
    t = pinning.pin_role(shape, "train", 0, str(reports))

    assert [r["planned"] for r in a] == [[1], [2], [3]]
    assert sorted(c for r in b for c in r["planned"]) == list(range(1, 17))
    assert t["planned"] == [0] and t["node"] == "node-b" and t["slots"] == 1
    assert all(r["node"] == r["node_id"] == "node-a" and r["hostname"] == "host-node-a"
               for r in a)
    assert all(r["node_cpus"] == list(range(32)) and r["slots"] == 16 for r in b)
    assert pinned == [tuple(r["planned"]) for r in a + b + [t]]
    on_disk = read_reports(str(reports))
    assert len(on_disk) == 20
    assert {r["node"] for r in on_disk} == {"node-a", "node-b"}
    assert all("node-a" in r["node_plan"] or "node-b" in r["node_plan"] for r in on_disk)

    # A slot beyond what the node plan expects shares cores, and says so in its report.
    _fake_node(monkeypatch, "node-a", range(4), 4.0)
    extra = pinning.pin_role(shape, "preprocess", 3, str(reports))
    assert extra["planned"] == [1] and "beyond" in extra["warnings"][-1]


def test_pin_role_report_without_ray_names_this_host(tmp_path, monkeypatch):
    # Without Ray in the process (another test of the session may have started it here).
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    r = pinning.pin_role(None, "preprocess", None, str(tmp_path))  # no plan: report only
    assert r["node"] == socket.gethostname() == r["hostname"] and r["planned"] == []
    assert r["mode"] == "off" and r["node_id"] is None
    assert read_reports(str(tmp_path))[0]["node"] == r["node"]
    # A report directory given as a URI goes through runtime/storage.py (pyarrow filesystems).
    uri = f"file://{tmp_path}/uri"
    r = pinning.pin_role(None, "train", 0, uri)
    assert [x["pid"] for x in read_reports(uri)] == [os.getpid()]


def test_claim_slot_in_process_is_stable_and_releasable(tmp_path):
    key = "run-x:preprocess"
    assert claim_slot(key, base_dir=str(tmp_path)) == 0
    assert claim_slot(key, base_dir=str(tmp_path)) == 0  # the same process keeps its slot
    assert claim_slot("run-y:preprocess", base_dir=str(tmp_path)) == 0  # keys don't collide
    release_slot(key, base_dir=str(tmp_path))
    release_slot("run-y:preprocess", base_dir=str(tmp_path))


def _slot_child(shape: dict, report_dir: str, slot_dir: str, conn) -> None:
    """A preprocessing actor stand-in: claims a node-local slot, pins itself, holds the slot
    until killed (spawned, so the test process itself is never pinned)."""
    import time

    from components.runtime.pinning import pin_role

    r = pin_role(shape, "preprocess", None, report_dir, import_torch=False,
                 slot_base_dir=slot_dir)
    conn.send({"pid": os.getpid(), "index": r["index"], "planned": r["planned"],
               "affinity": r["affinity"], "node": r["node"], "hostname": r["hostname"]})
    time.sleep(120)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux-only affinity")
def test_concurrent_processes_claim_different_slots_and_a_dead_one_frees_its_slot(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ncpu = len(os.sched_getaffinity(0))
    shape = plan_for_run(PreprocessConfig(actors=2), TrainConfig(workers=0)).to_dict()
    report_dir, slots = str(tmp_path / "pinning"), str(tmp_path / "slots")
    procs: list = []

    def start():  # one pipe per child: killing one cannot wedge another's channel
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_slot_child, args=(shape, report_dir, slots, send), daemon=True)
        p.start()
        procs.append(p)
        return recv

    def result(recv):
        assert recv.poll(120), "child did not report"
        return recv.recv()

    try:
        pipes = [start(), start()]  # both claim at the same time
        got = [result(r) for r in pipes]
        assert sorted(g["index"] for g in got) == [0, 1]
        for g in got:
            assert g["node"] == g["hostname"] == socket.gethostname()  # no Ray: the host
            assert g["affinity"] == g["planned"] and g["planned"]
        if ncpu >= 2:
            assert not set(got[0]["planned"]) & set(got[1]["planned"])
        # The holder of slot 0 dies (SIGKILL: no cleanup runs); a new process (a restarted
        # actor) gets slot 0 back, while slot 1 stays held.
        holder = next(g for g in got if g["index"] == 0)
        dead = next(p for p in procs if p.pid == holder["pid"])
        dead.kill()
        dead.join(60)
        assert dead.exitcode is not None
        again = result(start())
        assert again["index"] == 0 and again["planned"] == holder["planned"]
        reports = read_reports(report_dir)
        assert len(reports) == 3 and all(r["node"] == socket.gethostname() for r in reports)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(30)
