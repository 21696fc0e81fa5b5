"""Applying a core set to the current process: ``os.sched_setaffinity`` and thread caps.

:func:`pin_current_process` pins this process and caps its thread pools (torch, OpenMP,
MKL/OpenBLAS, Pillow's AVIF codec) to its share; :func:`thread_env` gives the variables a Ray
``runtime_env`` sets before torch is imported. Standard library only at module level. Why and
in what order: docs/cpu-pinning.md.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from .plan import CpuSet, _check_count, format_cpus

log = logging.getLogger(__name__)

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def current_affinity() -> CpuSet:
    """The cores this process may run on now (all cores where the OS has no affinity call)."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def thread_env(n: int) -> dict[str, str]:
    """Thread-count variables for ``n`` threads, e.g. for Ray ``runtime_env["env_vars"]`` so
    they hold before a worker imports torch/numpy (OpenMP/MKL/OpenBLAS read them at load)."""
    n = _check_count("threads", n, 1)
    return {k: str(n) for k in THREAD_ENV_VARS}


def process_report() -> dict[str, Any]:
    """What this process runs with: pid, affinity, torch threads, OMP_NUM_THREADS, OS threads."""
    torch_threads = None
    if "torch" in sys.modules:  # don't import torch just to report
        torch_threads = sys.modules["torch"].get_num_threads()
    try:
        os_threads: int | None = len(os.listdir("/proc/self/task"))
    except OSError:
        os_threads = None
    return {
        "pid": os.getpid(),
        "affinity": list(current_affinity()),
        "torch_threads": torch_threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "os_threads": os_threads,
    }


def pin_current_process(cpus: Sequence[int], threads: int | None = None, *,
                        import_torch: bool = True) -> dict[str, Any]:
    """Pin this process to ``cpus`` and cap its thread pools to ``threads`` (default
    ``len(cpus)``); returns :func:`process_report`.

    Order matters: affinity first (libgomp and FFmpeg size their pools from it), then the
    thread variables (read by OpenMP/MKL/OpenBLAS when they initialise, and inherited by child
    processes), then torch gets ``set_num_threads`` (torch is imported here if it was not yet;
    ``import_torch=False``: only when something already imported it, for a process that never
    uses torch). The inter-op pool can only be sized before any parallel work; later it stays
    as it is. Empty ``cpus`` and no ``threads`` (or ``threads=0``): no thread caps. Without
    ``os.sched_setaffinity`` (macOS) the pinning is skipped with a warning; thread caps still
    apply.
    """
    cpus = sorted({int(c) for c in cpus})
    if cpus:
        if not hasattr(os, "sched_setaffinity"):
            log.warning("cpu pinning: os.sched_setaffinity is not available on %s; not pinning"
                        " to %s", sys.platform, format_cpus(cpus))
        else:
            try:
                os.sched_setaffinity(0, cpus)
            except OSError as e:
                log.warning("cpu pinning: cannot pin pid %d to %s (%s); not pinned",
                            os.getpid(), format_cpus(cpus), e)
    n = threads if threads is not None else len(cpus)
    if n:
        n = _check_count("threads", n, 1)
        os.environ.update(thread_env(n))
        torch = sys.modules.get("torch")
        if torch is None and import_torch:
            try:
                import torch
            except ImportError:
                torch = None
        if torch is not None:
            torch.set_num_threads(n)
            try:
                torch.set_num_interop_threads(n)
            except RuntimeError:
                pass  # already set, or parallel work already started: keep it
        avif = sys.modules.get("PIL.AvifImagePlugin")
        if avif is not None and hasattr(avif, "DEFAULT_MAX_THREADS"):
            avif.DEFAULT_MAX_THREADS = n
    report = process_report()
    log.info("cpu pinning: pid %d affinity %s, torch threads %s, %s OS threads",
             report["pid"], format_cpus(report["affinity"]), report["torch_threads"],
             report["os_threads"])
    return report
