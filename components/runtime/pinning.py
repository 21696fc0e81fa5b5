"""CPU pinning and thread caps for the processes that share a node.

Why: on a GPU node the training worker's main thread (launching kernels, stepping the
optimizer) and its data-iteration threads compete with the preprocessing actors that decode
images and clips. Every one of those processes starts its thread pools sized to *all* cores
of the node (torch intra/inter-op pools, OpenMP, MKL/OpenBLAS, codec threads), so a node with
``C`` cores and ``P`` processes runs ``~P*C`` busy threads: they preempt each other, thrash
caches and make step times jittery. Ray reserves *logical* CPUs for scheduling only; it never
pins a process to cores or caps its thread pools (it sets ``OMP_NUM_THREADS=1`` in workers by
default, which starves a training worker instead).

So a small planner (:func:`plan_cpus`) assigns each node's cores: one set per training worker
(its main thread and data-iteration threads) and disjoint sets for the preprocessing actors.
Each process pins itself at start (:func:`pin_current_process`: ``os.sched_setaffinity`` plus
thread caps sized to its share). The thread-count environment variables from
:func:`thread_env` belong in Ray's ``runtime_env["env_vars"]`` so they apply before a worker
imports torch/numpy. Libraries that size their pools from the affinity mask (libgomp, FFmpeg's
automatic ``thread_count=0``, Pillow's AVIF codec) follow the pinning by themselves; PyAV has
no process-wide pool: its ``stream.thread_count`` comes from ``data.video.decoder_threads``.

With ``pin_cpus=auto`` a node with fewer cores than requested degrades gracefully: sets shrink,
then overlap (``shared=True``), and the plan carries a warning saying what to change, instead
of failing the run. The plan is a plain JSON-safe dict on the wire (:meth:`CpuPlan.to_dict`)
and flat strings for MLflow params (:meth:`CpuPlan.to_params`).

Only the standard library is imported at module level: a child process can import this module,
pin itself and set the thread variables before torch is imported.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..config import PIN_MODES, PreprocessConfig, TrainConfig

log = logging.getLogger(__name__)

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

CpuSet = tuple[int, ...]


# --------------------------------------------------------------------------- formatting


def format_cpus(cpus: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``; an empty set -> ``"none"``."""
    s = sorted(set(int(c) for c in cpus))
    if not s:
        return "none"
    parts: list[str] = []
    start = prev = s[0]
    for c in s[1:]:
        if c == prev + 1:
            prev = c
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        start = prev = c
    parts.append(f"{start}-{prev}" if prev > start else str(start))
    return ",".join(parts)


def parse_cpus(text: str) -> CpuSet:
    """Inverse of :func:`format_cpus`: ``"0-2,5"`` -> ``(0, 1, 2, 5)``; ``"none"``/"" -> ``()``."""
    text = text.strip()
    if text in ("", "none"):
        return ()
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            out.update(range(int(a), int(b) + 1))
        else:
            out.add(int(part))
    return tuple(sorted(out))


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class CpuPlan:
    """Which cores each process on one node may run on.

    ``train[i]`` is the core set of the i-th training worker on this node, ``preprocess[j]``
    that of the j-th preprocessing actor. Empty sets (mode ``off``) mean: do not pin.
    ``shared`` is True when the node had too few cores and some sets overlap.
    """

    mode: str
    node_cpus: CpuSet
    train: tuple[CpuSet, ...]
    preprocess: tuple[CpuSet, ...]
    shared: bool = False
    warnings: tuple[str, ...] = ()

    def train_set(self, i: int) -> CpuSet:
        """Cores of training worker ``i`` (wraps modulo the planned count; ``()``: don't pin)."""
        return self.train[i % len(self.train)] if self.train else ()

    def preprocess_set(self, i: int) -> CpuSet:
        """Cores of preprocessing actor ``i``; an actor index beyond the plan reuses sets."""
        return self.preprocess[i % len(self.preprocess)] if self.preprocess else ()

    def to_params(self) -> dict[str, str]:
        """Flat string params for MLflow: ``pinning.mode``, ``pinning.node_cpus`` ("0-15"),
        ``pinning.train.<i>``, ``pinning.preprocess.<j>`` ("4-5"; "none" when unpinned),
        ``pinning.shared`` ("true"/"false") and, when there are any, ``pinning.warnings``."""
        p = {
            "pinning.mode": self.mode,
            "pinning.node_cpus": format_cpus(self.node_cpus),
            "pinning.shared": "true" if self.shared else "false",
        }
        for i, s in enumerate(self.train):
            p[f"pinning.train.{i}"] = format_cpus(s)
        for j, s in enumerate(self.preprocess):
            p[f"pinning.preprocess.{j}"] = format_cpus(s)
        if self.warnings:
            p["pinning.warnings"] = " | ".join(self.warnings)[:500]
        return p

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (lists, str, bool) to hand the plan to Ray actors and train workers."""
        return {
            "mode": self.mode,
            "node_cpus": list(self.node_cpus),
            "train": [list(s) for s in self.train],
            "preprocess": [list(s) for s in self.preprocess],
            "shared": bool(self.shared),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CpuPlan:
        mode = str(d["mode"])
        if mode not in PIN_MODES:
            raise ValueError(f"preprocess.pin_cpus: must be one of {PIN_MODES}, got {mode!r}")
        return cls(
            mode=mode,
            node_cpus=tuple(int(c) for c in d.get("node_cpus", ())),
            train=tuple(tuple(int(c) for c in s) for s in d.get("train", ())),
            preprocess=tuple(tuple(int(c) for c in s) for s in d.get("preprocess", ())),
            shared=bool(d.get("shared", False)),
            warnings=tuple(str(w) for w in d.get("warnings", ())),
        )

    def describe(self) -> str:
        """One line for the log."""
        if self.mode == "off":
            return (f"cpu pinning off ({len(self.node_cpus)} cores {format_cpus(self.node_cpus)};"
                    f" {len(self.train)} training worker(s), {len(self.preprocess)}"
                    " preprocessing actor(s) unpinned)")
        used = {c for s in self.train + self.preprocess for c in s}
        spare = [c for c in self.node_cpus if c not in used]
        train = " | ".join(format_cpus(s) for s in self.train) or "-"
        prep = " | ".join(format_cpus(s) for s in self.preprocess) or "-"
        line = (f"cpu pinning auto on {len(self.node_cpus)} cores {format_cpus(self.node_cpus)}:"
                f" train [{train}], preprocess [{prep}]")
        if spare:
            line += f", spare {format_cpus(spare)}"
        if self.shared:
            line += " (SHARED: too few cores, sets overlap)"
        elif self.warnings:
            line += " (shrunk: too few cores)"
        return line


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    return value


def _split_pool(pool: Sequence[int], n: int, per: int) -> list[CpuSet]:
    """``n`` core sets of up to ``per`` cores out of ``pool``: contiguous disjoint blocks of
    ``per`` when they fit, else disjoint blocks as even as possible (each >= 1 core), else one
    core each round-robin (overlapping)."""
    pool = list(pool)
    k = len(pool)
    if n == 0:
        return []
    if n * per <= k:
        return [tuple(pool[i * per:(i + 1) * per]) for i in range(n)]
    if n <= k:
        sizes = [k // n + (1 if i < k % n else 0) for i in range(n)]
        sizes = [min(per, s) for s in sizes]
        out, at = [], 0
        for s in sizes:
            out.append(tuple(pool[at:at + s]))
            at += s
        return out
    return [(pool[i % k],) for i in range(n)]


def _overlaps(sets: Sequence[CpuSet]) -> bool:
    seen: set[int] = set()
    for s in sets:
        if seen & set(s):
            return True
        seen |= set(s)
    return False


def plan_cpus(mode: str, train_workers: int, cpus_per_worker: int, actors: int,
              cpus_per_actor: int, node_cpus: Sequence[int] | None = None) -> CpuPlan:
    """Assign this node's cores to its training workers and preprocessing actors.

    Training workers get the first cores (contiguous blocks of ``cpus_per_worker``), the
    actors the following disjoint blocks of ``cpus_per_actor``; cores left over stay spare.
    ``node_cpus`` defaults to the planning process's affinity. ``train_workers`` or ``actors``
    may be 0 (a node that runs only one kind).

    Too few cores with ``auto``: training keeps priority but leaves one core per actor where
    it can (at least one core for all actors together when there are >= 2 cores), so the
    latency-sensitive training threads stay off the decoders' cores as long as possible.
    Within each pool sets first shrink (disjoint, >= 1 core each), then overlap round-robin
    (``shared=True``); the plan carries a warning with what to change. ``off``: one empty set
    per process (nothing is pinned).
    """
    if mode not in PIN_MODES:
        raise ValueError(f"preprocess.pin_cpus: must be one of {PIN_MODES}, got {mode!r}")
    w = _check_count("train_workers", train_workers, 0)
    cw = _check_count("cpus_per_worker", cpus_per_worker, 1)
    a = _check_count("preprocess.actors", actors, 0)
    ca = _check_count("preprocess.cpus_per_actor", cpus_per_actor, 1)
    if node_cpus is None:
        node_cpus = _current_affinity()
    try:
        cpus = tuple(sorted({int(c) for c in node_cpus}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"node_cpus: must be core ids (ints), got {node_cpus!r}") from e
    if not cpus or cpus[0] < 0:
        raise ValueError(f"node_cpus: need at least one core id >= 0, got {node_cpus!r}")

    if mode == "off":
        return CpuPlan("off", cpus, ((),) * w, ((),) * a)

    n = len(cpus)
    t_req, p_req = w * cw, a * ca
    if t_req + p_req <= n:
        train = _split_pool(cpus[:t_req], w, cw)
        prep = _split_pool(cpus[t_req:t_req + p_req], a, ca)
        return CpuPlan("auto", cpus, tuple(train), tuple(prep))

    # Too few cores: pick the pool sizes, then split each pool.
    if a == 0:
        t_pool, p_pool = cpus, ()
    elif w == 0:
        t_pool, p_pool = (), cpus
    elif n == 1:
        t_pool = p_pool = cpus
    else:
        reserve = a if n - w >= a else max(1, n - w)  # cores kept for the actors
        t_size = min(t_req, n - reserve)
        t_pool, p_pool = cpus[:t_size], cpus[t_size:]
    train = tuple(_split_pool(t_pool, w, cw))
    prep = tuple(_split_pool(p_pool, a, ca))
    shared = _overlaps(train + prep)

    def sizes(sets: Sequence[CpuSet]) -> str:
        ks = sorted({len(s) for s in sets})
        return "/".join(map(str, ks)) if ks else "0"

    got = (f"training worker(s) get {sizes(train)} core(s) each, preprocessing actor(s)"
           f" {sizes(prep)} core(s) each")
    if shared:
        got += "; sets overlap, so processes share cores and will slow each other down"
    warning = (
        f"cpu pinning: requested {t_req + p_req} cores ({w} training worker(s) x {cw}"
        f" + {a} preprocessing actor(s) x {ca}) but this node has {n}"
        f" ({format_cpus(cpus)}); degraded: {got}. Lower preprocess.actors or"
        f" preprocess.cpus_per_actor (or the CPUs per training worker), or use nodes with at"
        f" least {t_req + p_req} cores."
    )
    return CpuPlan("auto", cpus, train, prep, shared=shared, warnings=(warning,))


# --------------------------------------------------------------------------- in the process


def _current_affinity() -> CpuSet:
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
        "affinity": list(_current_affinity()),
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


# --------------------------------------------------------------------------- in the pipeline


def plan_for_run(preprocess: PreprocessConfig, train: TrainConfig) -> CpuPlan:
    """The plan of a run's preprocessing and training sections, for the cores of the node this
    runs on (the driver's). Computed once per run and passed to every process.

    Nodes are assumed alike (cluster.yaml declares one worker type); a process whose node has
    other cores remaps its set onto its own (see :func:`pin_role`)."""
    return plan_cpus(preprocess.pin_cpus, train.workers, max(1, round(train.cpus_per_worker)),
                     preprocess.actors, preprocess.cpus_per_actor)


_held_slots: list[Any] = []  # open lock files: a slot stays claimed while its process lives


def claim_slot(key: str, slots: int) -> int:
    """A node-local index in ``[0, slots)`` for this process, unique among live processes that
    claim with the same ``key`` (an ``flock`` per slot, released when the process exits).

    Ray Data does not tell an actor its index in the pool; this does. When every slot is
    held (a restarted actor whose predecessor is still exiting), slots are shared."""
    import fcntl
    import hashlib
    import tempfile

    d = os.path.join(tempfile.gettempdir(), "visual-dpo-slots",
                     hashlib.sha1(key.encode()).hexdigest()[:16])
    os.makedirs(d, exist_ok=True)
    for i in range(slots):
        f = open(os.path.join(d, f"slot-{i}.lock"), "w")  # noqa: SIM115 (held for life)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _held_slots.append(f)
        return i
    return os.getpid() % max(1, slots)


def pin_role(plan: dict[str, Any] | None, role: str, index: int | None = None,
             report_dir: str | None = None, *, import_torch: bool = True) -> dict[str, Any]:
    """Pin this process as training worker ``index`` (``role="train"``) or preprocessing actor
    (``role="preprocess"``; ``index=None`` claims a node-local slot) of ``plan``; write what it
    got to ``report_dir/<role>-<index>-<pid>.json``. ``plan`` None or mode off: report only."""
    import json

    p = CpuPlan.from_dict(plan) if plan else None
    cpus: CpuSet = ()
    if p is not None and p.mode != "off":
        n = len(p.train) if role == "train" else len(p.preprocess)
        if index is None:
            index = claim_slot(f"{report_dir}:{role}", n)
        cpus = p.train_set(index) if role == "train" else p.preprocess_set(index)
        own = _current_affinity()
        if cpus and not set(cpus) <= set(own):
            remapped = tuple(sorted({own[c % len(own)] for c in cpus}))
            log.warning("cpu pinning: planned cores %s are not all on this node (%s); using %s",
                        format_cpus(cpus), format_cpus(own), format_cpus(remapped))
            cpus = remapped
    report = pin_current_process(cpus, import_torch=import_torch) if cpus else process_report()
    report.update(role=role, index=index, planned=list(cpus), mode=p.mode if p else "off")
    if report_dir:
        os.makedirs(report_dir, exist_ok=True)
        path = os.path.join(report_dir, f"{role}-{index}-{os.getpid()}.json")
        with open(path, "w") as f:
            json.dump(report, f)
    return report


def read_reports(report_dir: str) -> list[dict[str, Any]]:
    """The reports :func:`pin_role` wrote, oldest first."""
    import glob
    import json

    paths = sorted(glob.glob(os.path.join(report_dir, "*.json")), key=os.path.getmtime)
    out = []
    for path in paths:
        with open(path) as f:
            out.append(json.load(f))
    return out
