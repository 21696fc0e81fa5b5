"""Connecting to Ray: the job's cluster when there is one, else a local one."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def ensure_ray() -> None:
    """Connect to ``RAY_ADDRESS`` (set inside a Ray job) or start a local cluster.

    When Ray is already initialised (a test session, a notebook) that cluster is used.
    """
    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        ray.init(log_to_driver=True)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    log.info("ray cluster resources: %s", ray.cluster_resources())
