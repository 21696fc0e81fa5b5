"""The entry point a process calls first thing: :func:`pin_role`.

It composes the rest of the package: this node's CPU list and Ray resources (``node.py``),
the node's plan (``plan.py``), a node-local slot for an actor (``slots.py``), the pinning
itself (``apply.py``) and the process's report (``report.py``). Standard library only at
module level. The whole story: docs/cpu-pinning.md.
"""

from __future__ import annotations

import logging
from typing import Any

from .apply import pin_current_process, process_report
from .node import node_cpus, node_info
from .plan import CpuPlan, CpuSet, NodePlan, _role
from .report import write_report
from .slots import claim_slot

log = logging.getLogger(__name__)


def pin_role(plan: dict[str, Any] | None, role: str, index: int | None = None,
             report_dir: str | None = None, *, import_torch: bool = True,
             slot_base_dir: str | None = None) -> dict[str, Any]:
    """Pin this process as training worker with local rank ``index`` (``role="train"``) or as
    a preprocessing actor (``role="preprocess"``; ``index=None`` claims a node-local slot,
    :func:`claim_slot`) of the run shape ``plan`` (:meth:`CpuPlan.to_dict`), planning from this
    node's own CPUs and Ray resources; write what it got to
    ``report_dir/<role>-<node>-<index>-<pid>.json`` (a local path or a pyarrow-filesystem URI
    such as ``s3://``, see ``runtime/storage.py``). ``plan`` None or mode off: report only.

    The report (returned too): :func:`process_report` plus ``role``, ``index`` (the slot),
    ``planned`` (the cores; ``[]``: not pinned), ``mode``, ``node`` (Ray node id, else the
    hostname), ``node_id`` (Ray node id, else ``None``), ``hostname``,
    ``node_cpus`` (the node's CPU list), ``node_plan`` (:meth:`NodePlan.describe`), ``slots``
    (processes of this role the node plan expects) and ``warnings``."""
    _role(role)
    shape = CpuPlan.from_dict(plan) if plan else None
    info = node_info(resources=shape is not None and shape.mode != "off")
    own = node_cpus()
    cpus: CpuSet = ()
    warnings: list[str] = []
    node_plan: NodePlan | None = None
    if shape is not None and shape.mode != "off":
        node_plan = shape.for_node(own, ray_cpus=info["ray_cpus"], ray_gpus=info["ray_gpus"],
                                   cluster_gpus=info["cluster_gpus"], node=info["node"])
        sets = node_plan.train if role == "train" else node_plan.preprocess
        if index is None:
            key = f"{shape.key or report_dir or 'default'}:{role}"
            index = claim_slot(key, base_dir=slot_base_dir)
        cpus = node_plan.train_set(index) if role == "train" else node_plan.preprocess_set(index)
        warnings.extend(node_plan.warnings)
        if index >= len(sets):
            warnings.append(
                f"cpu pinning: {role} slot {index} is beyond the {len(sets)} this node's plan"
                f" expects ({node_plan.describe()}); sharing the cores of slot"
                f" {index % max(1, len(sets))}")
        for w in warnings:
            log.warning("%s", w)
    report = pin_current_process(cpus, import_torch=import_torch) if cpus else process_report()
    report.update(role=role, index=index, planned=list(cpus),
                  mode=shape.mode if shape else "off", node=info["node"],
                  node_id=info.get("node_id"), hostname=info["hostname"], node_cpus=list(own),
                  node_plan=node_plan.describe() if node_plan else None,
                  slots=(len(node_plan.train if role == "train" else node_plan.preprocess)
                         if node_plan else None),
                  warnings=warnings)
    if report_dir:
        write_report(report_dir, report)
    return report
