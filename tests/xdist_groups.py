"""Which pytest-xdist worker runs which tests (used by tests/conftest.py's scheduler)."""

from __future__ import annotations

# `make test` runs two pytest-xdist workers with `--dist loadgroup`; a group runs in one worker.
# The tests on the session's ray_cluster are split by module into two groups of about equal
# time (SECOND_CLUSTER, balanced by the durations of a full run), so each worker starts one
# 2-CPU cluster, sized like the machine, and the two halves run side by side. The suite is
# CPU-bound (82-93 % of both cores busy in full runs); what the split removes is the end of a
# run where one worker went on alone with the session-cluster tests (1,241 of 2,111 test-
# seconds were on it). A worker that gets both groups runs them on its one cluster. The tests that start servers and clusters
# of their own (test_job.py, test_two_nodes.py, the S3 server: mostly waiting for them to
# start, stop and run jobs) form a third group, and the rest go to whichever worker is free.
XDIST_GROUPS = {"ray_cluster": "ray_cluster", "ray_head": "own_clusters",
                "two_node_cluster": "own_clusters", "s3_server": "own_clusters"}
SECOND_CLUSTER = frozenset({
    "test_fsdp_workflow.py", "test_vlm_workflow.py", "test_tracking_outage.py",
    "test_resume_schedule.py", "test_head_workflow.py", "test_register_published.py",
    "test_video_workflow.py"})


def xdist_group(item) -> str | None:
    """The xdist group of a test, from the fixtures it uses (and its module, for ray_cluster)."""
    fixtures = getattr(item, "fixturenames", ())
    group = next((g for f, g in XDIST_GROUPS.items() if f in fixtures), None)
    if group == "ray_cluster" and item.path.name in SECOND_CLUSTER:
        return "ray_cluster_2"
    return group
