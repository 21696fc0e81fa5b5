"""The suite's own scheduling: the modules named to run on the second xdist worker's Ray
cluster (tests/xdist_groups.py, SECOND_CLUSTER) exist and use the session cluster, so a renamed
module cannot silently put every Ray test back on one worker."""

from __future__ import annotations

from pathlib import Path

from tests.xdist_groups import SECOND_CLUSTER

TESTS = Path(__file__).parent


def test_the_second_clusters_modules_exist_and_use_the_session_cluster():
    for name in sorted(SECOND_CLUSTER):
        path = TESTS / name
        assert path.is_file(), f"{name} in SECOND_CLUSTER is not a test module"
        assert "ray_cluster" in path.read_text(), f"{name} does not use the ray_cluster fixture"


def test_the_two_halves_each_hold_ray_tests():
    on_session_cluster = {p.name for p in TESTS.glob("test_*.py")
                          if "ray_cluster" in p.read_text() and p.name != Path(__file__).name}
    assert SECOND_CLUSTER < on_session_cluster  # a strict subset: the first half is not empty
