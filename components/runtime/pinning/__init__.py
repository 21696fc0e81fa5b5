"""CPU pinning and thread caps for the processes that share a node (docs/cpu-pinning.md).

``plan`` (pure planning), ``apply`` (affinity and thread caps of this process), ``slots``
(node-local actor slots), ``node`` (this node's CPUs and Ray resources), ``report`` (the
per-process reports) and ``role`` (:func:`pin_role`, which a process calls first thing).

Importing this package imports only the standard library: a child process can import it, pin
itself and set the thread variables before torch is imported. Ray is never imported here.
"""

from .apply import (
    THREAD_ENV_VARS,
    current_affinity,
    pin_current_process,
    process_report,
    thread_env,
)
from .node import node_cpus, node_info
from .plan import (
    PIN_MODES,
    ROLES,
    CpuPlan,
    CpuSet,
    NodePlan,
    format_cpus,
    parse_cpus,
    plan_cpus,
    plan_for_run,
)
from .report import read_reports, write_report
from .role import pin_role
from .slots import SLOT_LIMIT, claim_slot, release_slot, slot_dir

__all__ = [
    "PIN_MODES",
    "ROLES",
    "SLOT_LIMIT",
    "THREAD_ENV_VARS",
    "CpuPlan",
    "CpuSet",
    "NodePlan",
    "claim_slot",
    "current_affinity",
    "format_cpus",
    "node_cpus",
    "node_info",
    "parse_cpus",
    "pin_current_process",
    "pin_role",
    "plan_cpus",
    "plan_for_run",
    "process_report",
    "read_reports",
    "release_slot",
    "slot_dir",
    "thread_env",
    "write_report",
]
