"""CPU pinning and thread caps for the processes that share a node.

Why: on a GPU node the training worker's main thread (launching kernels, stepping the
optimizer) and its data-iteration threads compete with the preprocessing actors that decode
images and clips. Every one of those processes starts its thread pools sized to *all* cores
of the node (torch intra/inter-op pools, OpenMP, MKL/OpenBLAS, codec threads), so a node with
``C`` cores and ``P`` processes runs ``~P*C`` busy threads: they preempt each other, thrash
caches and make step times jittery. Ray reserves *logical* CPUs for scheduling only; it never
pins a process to cores or caps its thread pools (it sets ``OMP_NUM_THREADS=1`` in workers by
default, which starves a training worker instead).

So the cores are planned *per node*, by the processes that run there. The driver only fixes
the shape of the run (:func:`plan_for_run` -> :class:`CpuPlan`: how many training workers and
preprocessing actors, how many cores each, whether to pin); it never computes core ids, because
its node (often a small head) is not where the actors and workers run. Each process, at start
(:func:`pin_role`), reads its own node's CPU list (its affinity before pinning) and the Ray
resources of its node, plans that node (:meth:`CpuPlan.for_node` -> :class:`NodePlan`, built
by :func:`plan_cpus`) and pins itself to its slot's set (:func:`pin_current_process`:
``os.sched_setaffinity`` plus thread caps sized to its share).

The per-node rule, identical in every process of a node so that they agree without talking:

* ``W`` = the training workers that can run on this node: ``min(train.workers,
  floor(node Ray CPUs / train.cpus_per_worker))``, further capped by the node's GPUs when
  training uses GPUs (one GPU per worker; a node without GPUs then gets none);
* ``A`` = the preprocessing actors that can run beside them: ``min(preprocess.actors,
  floor((node Ray CPUs - W * train.cpus_per_worker) / preprocess.cpus_per_actor))`` (>= 1);
* of the node's allowed CPU list (sorted), training workers take the first ``W`` blocks of
  their core count, by Ray Train's *local* rank; the actors take the following ``A`` blocks,
  by a node-local slot (:func:`claim_slot`: the lowest free slot of the run on this node, an
  ``flock`` held for the life of the process, so a dead or restarted actor's slot frees
  itself). Slot ``k`` gets ``cpus[W*cw + k*ca : W*cw + (k+1)*ca]``; cores left over stay spare.
  A slot beyond ``A`` (only while Ray packs more actors on the node than the rule expects,
  e.g. a restarted actor whose predecessor is still exiting) shares slot ``k mod A``'s cores.

Without Ray (tests, benchmarks) "node Ray CPUs" is the length of the CPU list and GPUs are not
counted. Each process writes what it got, with its node id and hostname, to the run's pinning
report directory (:func:`read_reports`).

The thread-count environment variables from :func:`thread_env` belong in Ray's
``runtime_env["env_vars"]`` so they apply before a worker imports torch/numpy. Libraries that
size their pools from the affinity mask (libgomp, FFmpeg's automatic ``thread_count=0``,
Pillow's AVIF codec) follow the pinning by themselves; PyAV has no process-wide pool: its
``stream.thread_count`` comes from ``data.video.decoder_threads``.

With ``pin_cpus=auto`` a node with fewer cores than requested degrades gracefully: sets shrink,
then overlap (``shared=True``), and the node plan carries a warning saying what to change,
instead of failing the run. Plans are plain JSON-safe dicts on the wire (``to_dict``) and flat
strings for MLflow params (``to_params``).

Only the standard library is imported at module level: a child process can import this module,
pin itself and set the thread variables before torch is imported. Ray is never imported here
(the module is pure): a process that runs under Ray already has it in ``sys.modules``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
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
class NodePlan:
    """Which cores each process on one node may run on (:func:`plan_cpus`).

    ``train[i]`` is the core set of the training worker with local rank ``i`` on this node,
    ``preprocess[j]`` that of the preprocessing actor in node-local slot ``j``. Empty sets
    (mode ``off``) mean: do not pin. ``shared`` is True when the node had too few cores and
    some sets overlap. ``node``: the node's id (or hostname) when known.
    """

    mode: str
    node_cpus: CpuSet
    train: tuple[CpuSet, ...]
    preprocess: tuple[CpuSet, ...]
    shared: bool = False
    warnings: tuple[str, ...] = ()
    node: str | None = None

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
            "node": self.node,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NodePlan:
        mode = _check_mode(d.get("mode"))
        node = d.get("node")
        return cls(
            mode=mode,
            node_cpus=tuple(int(c) for c in d.get("node_cpus", ())),
            train=tuple(tuple(int(c) for c in s) for s in d.get("train", ())),
            preprocess=tuple(tuple(int(c) for c in s) for s in d.get("preprocess", ())),
            shared=bool(d.get("shared", False)),
            warnings=tuple(str(w) for w in d.get("warnings", ())),
            node=None if node is None else str(node),
        )

    def describe(self) -> str:
        """One line for the log."""
        on = f" on node {self.node}" if self.node else ""
        if self.mode == "off":
            return (f"cpu pinning off{on} ({len(self.node_cpus)} cores"
                    f" {format_cpus(self.node_cpus)}; {len(self.train)} training worker(s),"
                    f" {len(self.preprocess)} preprocessing actor(s) unpinned)")
        used = {c for s in self.train + self.preprocess for c in s}
        spare = [c for c in self.node_cpus if c not in used]
        train = " | ".join(format_cpus(s) for s in self.train) or "-"
        prep = " | ".join(format_cpus(s) for s in self.preprocess) or "-"
        line = (f"cpu pinning auto{on}: {len(self.node_cpus)} cores {format_cpus(self.node_cpus)}:"
                f" train [{train}], preprocess [{prep}]")
        if spare:
            line += f", spare {format_cpus(spare)}"
        if self.shared:
            line += " (SHARED: too few cores, sets overlap)"
        elif self.warnings:
            line += " (shrunk: too few cores)"
        return line


def _check_mode(mode: Any) -> str:
    if mode not in PIN_MODES:
        raise ValueError(f"preprocess.pin_cpus: must be one of {PIN_MODES}, got {mode!r}")
    return str(mode)


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
              cpus_per_actor: int, node_cpus: Sequence[int] | None = None, *,
              node: str | None = None) -> NodePlan:
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
    per process (nothing is pinned). ``node`` only labels the plan.
    """
    _check_mode(mode)
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
        return NodePlan("off", cpus, ((),) * w, ((),) * a, node=node)

    n = len(cpus)
    t_req, p_req = w * cw, a * ca
    if t_req + p_req <= n:
        train = _split_pool(cpus[:t_req], w, cw)
        prep = _split_pool(cpus[t_req:t_req + p_req], a, ca)
        return NodePlan("auto", cpus, tuple(train), tuple(prep), node=node)

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
        f" + {a} preprocessing actor(s) x {ca}) but {f'node {node}' if node else 'this node'}"
        f" has {n}"
        f" ({format_cpus(cpus)}); degraded: {got}. Lower preprocess.actors or"
        f" preprocess.cpus_per_actor (or the CPUs per training worker), or use nodes with at"
        f" least {t_req + p_req} cores."
    )
    return NodePlan("auto", cpus, train, prep, shared=shared, warnings=(warning,), node=node)


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


# --------------------------------------------------------------------------- the run's shape


@dataclass(frozen=True)
class CpuPlan:
    """The shape of a run's pinning, the same for every node: what :func:`plan_for_run` returns
    on the driver and what travels to each actor and training worker (:meth:`to_dict`).

    It names no cores: each process plans its own node with :meth:`for_node` (the rule is in
    the module docstring). ``train_workers``/``actors``: the run's totals (an upper bound for
    any one node); ``cpus_per_worker``/``cpus_per_actor``: pinned cores per process;
    ``worker_cpus``: the Ray CPUs a training worker reserves (``train.cpus_per_worker``, may be
    fractional); ``train_gpu``: ``train.use_gpu`` (``auto``/``true``/``false``; with GPUs a
    training worker reserves one). ``key`` names the run's node-local slots (not compared).
    """

    mode: str
    train_workers: int
    cpus_per_worker: int
    actors: int
    cpus_per_actor: int
    worker_cpus: float | None = None
    train_gpu: str = "false"
    warnings: tuple[str, ...] = ()
    key: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        _check_mode(self.mode)
        _check_count("train_workers", self.train_workers, 0)
        _check_count("cpus_per_worker", self.cpus_per_worker, 1)
        _check_count("preprocess.actors", self.actors, 0)
        _check_count("preprocess.cpus_per_actor", self.cpus_per_actor, 1)
        if self.worker_cpus is not None and not float(self.worker_cpus) > 0:
            raise ValueError(f"train.cpus_per_worker: must be > 0, got {self.worker_cpus!r}")
        if self.train_gpu not in ("auto", "true", "false"):
            raise ValueError(f"train.use_gpu: must be auto, true or false, got {self.train_gpu!r}")

    def counts_on_node(self, n_cpus: float, gpus: float | None = None,
                       cluster_gpus: float | None = None) -> tuple[int, int]:
        """``(W, A)``: the training workers and preprocessing actors that can run on a node with
        ``n_cpus`` Ray CPUs (and ``gpus`` Ray GPUs; ``None``: unknown, not a limit).
        ``cluster_gpus`` resolves ``train_gpu=auto`` (``None``: unknown, not a limit)."""
        reserve = float(self.worker_cpus or self.cpus_per_worker)
        w = 0
        if self.train_workers:
            w = min(self.train_workers, max(1, int(n_cpus // reserve)))
            uses_gpu = self.train_gpu == "true" or (self.train_gpu == "auto"
                                                     and (cluster_gpus or 0) >= 1)
            if uses_gpu and gpus is not None:
                w = min(w, int(gpus))
        a = 0
        if self.actors:
            a = min(self.actors, max(1, int((n_cpus - w * reserve) // self.cpus_per_actor)))
        return w, a

    def for_node(self, node_cpus: Sequence[int], *, ray_cpus: float | None = None,
                 ray_gpus: float | None = None, cluster_gpus: float | None = None,
                 node: str | None = None) -> NodePlan:
        """The plan of one node: its allowed CPU list ``node_cpus`` and, under Ray, its Ray
        CPUs/GPUs (``None``: the CPU list's length / no GPU limit). Pure: no Ray, no I/O."""
        cpus = sorted({int(c) for c in node_cpus})
        w, a = self.counts_on_node(len(cpus) if ray_cpus is None else ray_cpus, ray_gpus,
                                   cluster_gpus)
        return plan_cpus(self.mode, w, self.cpus_per_worker, a, self.cpus_per_actor, cpus,
                         node=node)

    def cpus_for(self, role: str, slot: int, node_cpus: Sequence[int], **node: Any) -> CpuSet:
        """The cores of the process in ``slot`` (a training worker's local rank, an actor's
        node-local slot) of ``role`` (``train``/``preprocess``) on the node described by
        ``node_cpus`` and :meth:`for_node`'s keywords; ``()``: do not pin."""
        plan = self.for_node(node_cpus, **node)
        return plan.train_set(slot) if _role(role) == "train" else plan.preprocess_set(slot)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict to hand the shape to Ray actors and train workers."""
        return {
            "mode": self.mode,
            "train_workers": self.train_workers,
            "cpus_per_worker": self.cpus_per_worker,
            "actors": self.actors,
            "cpus_per_actor": self.cpus_per_actor,
            "worker_cpus": self.worker_cpus,
            "train_gpu": self.train_gpu,
            "warnings": list(self.warnings),
            "key": self.key,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CpuPlan:
        _check_mode(d.get("mode"))
        missing = [k for k in ("train_workers", "cpus_per_worker", "actors", "cpus_per_actor")
                   if k not in d]
        if missing:
            raise ValueError(f"pinning plan: missing {', '.join(missing)} (a per-node plan or"
                             " an old driver's plan? pass CpuPlan.to_dict())")
        wc = d.get("worker_cpus")
        return cls(
            mode=str(d["mode"]),
            train_workers=d["train_workers"],
            cpus_per_worker=d["cpus_per_worker"],
            actors=d["actors"],
            cpus_per_actor=d["cpus_per_actor"],
            worker_cpus=None if wc is None else float(wc),
            train_gpu=str(d.get("train_gpu", "false")),
            warnings=tuple(str(w) for w in d.get("warnings", ())),
            key=str(d.get("key", "")),
        )

    def to_params(self) -> dict[str, str]:
        """Flat string params for MLflow: ``pinning.mode``, ``pinning.scope`` ("per-node"),
        ``pinning.train.workers``/``pinning.train.cpus_each``,
        ``pinning.preprocess.actors``/``pinning.preprocess.cpus_each`` and, when there are any,
        ``pinning.warnings``. The cores each process got are in its pinning report."""
        p = {
            "pinning.mode": self.mode,
            "pinning.scope": "per-node",
            "pinning.train.workers": str(self.train_workers),
            "pinning.train.cpus_each": str(self.cpus_per_worker),
            "pinning.preprocess.actors": str(self.actors),
            "pinning.preprocess.cpus_each": str(self.cpus_per_actor),
        }
        if self.warnings:
            p["pinning.warnings"] = " | ".join(self.warnings)[:500]
        return p

    def describe(self) -> str:
        """One line for the log."""
        shape = (f"{self.train_workers} training worker(s) x {self.cpus_per_worker} core(s),"
                 f" {self.actors} preprocessing actor(s) x {self.cpus_per_actor} core(s)")
        if self.mode == "off":
            return f"cpu pinning off ({shape} unpinned)"
        return (f"cpu pinning auto, planned per node from each node's own CPUs: {shape}; on"
                " each node training workers take the first cores (by local rank), actors the"
                " following ones (by node-local slot); each process reports its node and cores")


def _role(role: str) -> str:
    if role not in ("train", "preprocess"):
        raise ValueError(f"pinning role: must be 'train' or 'preprocess', got {role!r}")
    return role


def plan_for_run(preprocess: PreprocessConfig, train: TrainConfig) -> CpuPlan:
    """The pinning shape of a run's preprocessing and training sections. Computed once on the
    driver and passed to every process, which plans its own node (:meth:`CpuPlan.for_node`)."""
    cw = max(1, round(train.cpus_per_worker))
    warnings: tuple[str, ...] = ()
    if preprocess.pin_cpus != "off" and cw != train.cpus_per_worker:
        warnings = (f"cpu pinning: train.cpus_per_worker={train.cpus_per_worker} is not a whole"
                    f" number of cores; each training worker is pinned to {cw} core(s)",)
    return CpuPlan(preprocess.pin_cpus, train.workers, cw, preprocess.actors,
                   preprocess.cpus_per_actor, worker_cpus=float(train.cpus_per_worker),
                   train_gpu=str(train.use_gpu), warnings=warnings, key=uuid.uuid4().hex[:16])


# --------------------------------------------------------------------------- on the node

_held_slots: dict[tuple[str, str], tuple[int, Any]] = {}  # (dir, key) -> (slot, open lock file)
_node_cpus: CpuSet | None = None  # this process's CPU list before it pinned itself
SLOT_LIMIT = 4096


def slot_dir(key: str, base_dir: str | None = None) -> str:
    """The node-local directory of ``key``'s slot lock files (under ``base_dir``, default the
    temp dir: never shared between nodes)."""
    import hashlib
    import tempfile

    base = base_dir or os.path.join(tempfile.gettempdir(), f"visual-dpo-slots-{os.getuid()}")
    return os.path.join(base, hashlib.sha1(key.encode()).hexdigest()[:16])


def claim_slot(key: str, slots: int = SLOT_LIMIT, *, base_dir: str | None = None) -> int:
    """The lowest node-local index in ``[0, slots)`` that no live process holds for ``key``:
    an ``flock`` on ``slot-<i>.lock``, kept for the life of this process (the kernel drops it
    when the process dies, so a restarted actor re-claims a free slot). A process that already
    holds a slot for ``key`` gets the same one back. All held: ``pid % slots`` (shared).

    Ray Data does not tell an actor its index in the pool, let alone its index among the
    actors on its node; this does."""
    import fcntl

    d = slot_dir(key, base_dir)
    held = _held_slots.get((d, key))
    if held is not None:
        return held[0]
    os.makedirs(d, exist_ok=True)
    for i in range(slots):
        f = open(os.path.join(d, f"slot-{i}.lock"), "a")  # noqa: SIM115 (held for life)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _held_slots[(d, key)] = (i, f)
        return i
    return os.getpid() % max(1, slots)


def release_slot(key: str, *, base_dir: str | None = None) -> None:
    """Give back this process's slot for ``key`` (it is released at exit anyway)."""
    held = _held_slots.pop((slot_dir(key, base_dir), key), None)
    if held is not None:
        held[1].close()


def node_cpus() -> CpuSet:
    """This node's CPU list as this process was given it: its affinity the first time this is
    called (before :func:`pin_role` narrows it)."""
    global _node_cpus
    if _node_cpus is None:
        _node_cpus = _current_affinity()
    return _node_cpus


def node_info(resources: bool = True) -> dict[str, Any]:
    """Where this process runs: ``node`` (the Ray node id when Ray is initialised in this
    process, else the hostname), ``node_id`` (the Ray node id, else ``None``), ``hostname``, and under Ray (and ``resources``) the node's
    ``ray_cpus`` and ``ray_gpus`` and the cluster's ``cluster_gpus`` (``None`` when unknown).
    Ray is used only if this process already imported it."""
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
    import json

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
        node_tag = "".join(c for c in str(info["node"]) if c.isalnum() or c in "-_.")[:16]
        name = f"{role}-{node_tag}-{index}-{os.getpid()}.json"
        if "://" in report_dir and not report_dir.startswith("file://"):
            from . import storage  # pyarrow filesystems (s3://...): shared run state

            storage.write_json(storage.join(report_dir, name), report)
        else:
            local = report_dir.removeprefix("file://")
            os.makedirs(local, exist_ok=True)
            with open(os.path.join(local, name), "w") as f:
                json.dump(report, f)
    return report


def read_reports(report_dir: str) -> list[dict[str, Any]]:
    """The reports :func:`pin_role` wrote to ``report_dir`` (a local path: oldest first; a URI:
    by name); each names its ``node``, ``node_id`` and ``hostname``."""
    import glob
    import json

    if "://" in report_dir and not report_dir.startswith("file://"):
        from . import storage

        return [storage.read_json(f) for f in storage.list_files(report_dir)
                if f.endswith(".json")]
    local = report_dir.removeprefix("file://")
    paths = sorted(glob.glob(os.path.join(local, "*.json")), key=os.path.getmtime)
    out = []
    for path in paths:
        with open(path) as f:
            out.append(json.load(f))
    return out
