"""The CPU planner and per-process pinning (no Ray): fast unit tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.runtime.pinning import (
    CpuPlan,
    format_cpus,
    parse_cpus,
    plan_cpus,
    process_report,
    thread_env,
)

ROOT = Path(__file__).resolve().parents[1]


def _all_sets(plan: CpuPlan) -> list[tuple[int, ...]]:
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
        assert CpuPlan.from_dict(d) == plan
    with pytest.raises(ValueError, match="pin_cpus"):
        CpuPlan.from_dict({"mode": "on"})


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

    with caplog.at_level("WARNING", logger="components.pinning"):
        report = pin_current_process([min(before)], threads=0)  # threads=0: no thread caps
    assert os.sched_getaffinity(0) == before
    assert set(report["affinity"]) == before
    assert "not available" in caplog.text
