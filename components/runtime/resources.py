"""Will a command's Ray resource plan fit the cluster? Checked before any work, so a plan
that cannot be scheduled fails at once naming the setting to change, instead of Ray Data
waiting forever for a CPU that never frees up.

A phase is what runs at the same time: long-lived actors and workers hold their CPUs for the
whole phase, and the phase makes progress only while one more task of its largest kind can be
scheduled next to them. So a phase fits when ``held + largest task <= cluster CPUs`` (and its
GPUs <= the cluster's). The numbers below are the ones the stages request from Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import PreprocessConfig, TrainConfig

READ_TASK_CPUS = 0.5  # the row-group read tasks of ingest and scoring
DATA_TASK_CPUS = 1.0  # Ray Data's own read/write tasks (read_parquet, write_parquet)
SCORING_ACTOR_CPUS = 1.0  # one model per actor: evaluation, the champion comparison
CANDIDATE_SCORER_CPUS = 0.5  # the score command's model actor, next to the decode pool


class ResourcePlanError(ValueError):
    """The plan needs more than the cluster has."""


@dataclass(frozen=True)
class Phase:
    name: str
    held_cpus: float  # actors and training workers, for the whole phase
    task_cpus: float  # the largest task that must still fit next to them
    gpus: float
    change: str  # the settings that size it


def run_phases(preprocess: PreprocessConfig, train: TrainConfig, use_gpu: bool,
               streaming: bool = False) -> list[Phase]:
    """``streaming`` (``data.cache=none``): the decode actors run next to the training
    workers, with the read tasks that feed them."""
    decode = preprocess.actors * preprocess.cpus_per_actor
    workers = train.workers * train.cpus_per_worker
    phases = [Phase("prepare (decode actors)", decode, DATA_TASK_CPUS, 0,
                    "preprocess.actors, preprocess.cpus_per_actor")]
    if streaming:
        phases.append(Phase("train, streaming (decode actors + Ray Train workers)",
                            decode + workers, READ_TASK_CPUS, train.workers if use_gpu else 0,
                            "preprocess.actors, train.workers, train.cpus_per_worker (or "
                            "data.cache=decoded)"))
    phases += [
        Phase("train (Ray Train workers)", workers, DATA_TASK_CPUS,
              train.workers if use_gpu else 0, "train.workers, train.cpus_per_worker"),
        Phase("evaluate", SCORING_ACTOR_CPUS, DATA_TASK_CPUS, 0, "-"),
    ]
    return phases


def evaluate_phases(preprocess: PreprocessConfig) -> list[Phase]:
    return [Phase("prepare (decode actors)", preprocess.actors * preprocess.cpus_per_actor,
                  DATA_TASK_CPUS, 0, "preprocess.actors, preprocess.cpus_per_actor"),
            Phase("evaluate", SCORING_ACTOR_CPUS, DATA_TASK_CPUS, 0, "-")]


def score_phases(preprocess: PreprocessConfig, use_gpu: bool) -> list[Phase]:
    # The decode pool starts with one actor and grows to preprocess.actors when CPUs allow.
    scorer = 0.0 if use_gpu else CANDIDATE_SCORER_CPUS
    return [Phase("score (decode + model actors)", preprocess.cpus_per_actor + scorer,
                  READ_TASK_CPUS, 1 if use_gpu else 0, "preprocess.cpus_per_actor")]


def check(phases: list[Phase], cluster: dict[str, float]) -> None:
    """Raise ``ResourcePlanError`` listing every phase that cannot run on ``cluster``
    (``ray.cluster_resources()``)."""
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    problems = []
    for p in phases:
        need = p.held_cpus + p.task_cpus
        if need > cpus + 1e-9:
            problems.append(
                f"{p.name} needs {need:g} CPUs ({p.held_cpus:g} held by actors/workers + "
                f"{p.task_cpus:g} for its tasks) but the Ray cluster has {cpus:g}: lower "
                f"{p.change}" if p.change != "-" else
                f"{p.name} needs {need:g} CPUs but the Ray cluster has {cpus:g}: use a larger "
                "cluster")
        if p.gpus > gpus:
            problems.append(f"{p.name} needs {p.gpus:g} GPUs but the Ray cluster has {gpus:g}: "
                            "lower train.workers, set train.use_gpu=false, or add GPU nodes")
    if problems:
        raise ResourcePlanError(
            "this run's Ray resource plan cannot be scheduled on this cluster (it would wait "
            "forever):\n" + "\n".join(f"  - {p}" for p in problems)
            + "\n(on an autoscaling cluster, the nodes present at start count: raise "
            "min_workers)")
