"""What this process knows about its node: its CPU list and, under Ray, the node's resources.

Standard library only: Ray is used only when this process has already imported it (it is
never imported here). How these feed the per-node plan: docs/cpu-pinning.md.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

from .apply import current_affinity
from .plan import CpuSet

log = logging.getLogger(__name__)

_node_cpus: CpuSet | None = None  # this process's CPU list before it pinned itself


def node_cpus() -> CpuSet:
    """This node's CPU list as this process was given it: its affinity the first time this is
    called (before :func:`~components.runtime.pinning.role.pin_role` narrows it)."""
    global _node_cpus
    if _node_cpus is None:
        _node_cpus = current_affinity()
    return _node_cpus


def node_info(resources: bool = True) -> dict[str, Any]:
    """Where this process runs: ``node`` (the Ray node id when Ray is initialised in this
    process, else the hostname), ``node_id`` (the Ray node id, else ``None``), ``hostname``,
    and under Ray (and ``resources``) the node's ``ray_cpus`` and ``ray_gpus`` and the
    cluster's ``cluster_gpus`` (``None`` when unknown). Ray is used only if this process
    already imported it."""
    host = socket.gethostname()
    info: dict[str, Any] = {"node": host, "node_id": None, "hostname": host, "ray_cpus": None,
                            "ray_gpus": None, "cluster_gpus": None}
    ray = sys.modules.get("ray")
    if ray is None or not hasattr(ray, "is_initialized"):
        return info
    try:
        if not ray.is_initialized():
            return info
        node_id = ray.get_runtime_context().get_node_id()
        info["node"] = info["node_id"] = node_id
        if not resources:
            return info
        for n in ray.nodes():
            if n.get("NodeID") == node_id:
                res = n.get("Resources") or {}
                info["ray_cpus"] = res.get("CPU")
                info["ray_gpus"] = res.get("GPU", 0.0)
                break
        info["cluster_gpus"] = ray.cluster_resources().get("GPU", 0.0)
    except Exception as e:  # noqa: BLE001 - a report without Ray details beats a failed actor
        log.warning("cpu pinning: cannot read this node's Ray resources (%s); planning from"
                    " its CPU list alone", e)
    return info
