"""Pure CPU planning: which cores each training worker and preprocessing actor of a node gets.

The driver fixes the run's shape (:func:`plan_for_run` -> :class:`CpuPlan`); every process
plans its own node from it (:meth:`CpuPlan.for_node` -> :class:`NodePlan`, via
:func:`plan_cpus`). Standard library only: no Ray, no I/O, no OS side effects. The per-node
rule and why it exists: docs/cpu-pinning.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for type hints: importing the config would import yaml
    from ...config import PreprocessConfig, TrainConfig

PIN_MODES = ("auto", "off")  # preprocess.pin_cpus
ROLES = ("train", "preprocess")  # the processes pin_role pins

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
        from .apply import current_affinity  # the only OS read; callers with a list skip it

        node_cpus = current_affinity()
    try:
        cpus = tuple(sorted({int(c) for c in node_cpus}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"node_cpus: must be core ids (ints), got {node_cpus!r}") from e
    if not cpus or cpus[0] < 0:
        raise ValueError(f"node_cpus: need at least one core id >= 0, got {node_cpus!r}")

    if mode == "off":
        return NodePlan("off", cpus, ((),) * w, ((),) * a, node=node)

    t_req, p_req = w * cw, a * ca
    if t_req + p_req <= len(cpus):
        train = _split_pool(cpus[:t_req], w, cw)
        prep = _split_pool(cpus[t_req:t_req + p_req], a, ca)
        return NodePlan("auto", cpus, tuple(train), tuple(prep), node=node)
    return _degraded(cpus, w, cw, a, ca, node)


def _degraded(cpus: CpuSet, w: int, cw: int, a: int, ca: int, node: str | None) -> NodePlan:
    """:func:`plan_cpus` when ``w`` workers x ``cw`` + ``a`` actors x ``ca`` cores do not fit
    in ``cpus``: pick the pool sizes, then split each pool; the plan carries a warning."""
    n = len(cpus)
    t_req, p_req = w * cw, a * ca
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


# --------------------------------------------------------------------------- the run's shape


@dataclass(frozen=True)
class CpuPlan:
    """The shape of a run's pinning, the same for every node: what :func:`plan_for_run` returns
    on the driver and what travels to each actor and training worker (:meth:`to_dict`).

    It names no cores: each process plans its own node with :meth:`for_node` (the rule is in
    docs/cpu-pinning.md). ``train_workers``/``actors``: the run's totals (an upper bound for
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
    if role not in ROLES:
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

