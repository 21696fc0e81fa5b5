"""Connecting to Ray: the job's cluster when there is one, else a local one."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)


def ensure_ray(deterministic: bool = True) -> None:
    """Connect to ``RAY_ADDRESS`` (set inside a Ray job) or start a local cluster.

    When Ray is already initialised (a test session, a notebook) that cluster is used.
    ``deterministic`` (``train.deterministic``): Ray Data keeps block order through every
    stage (``preserve_order``), so files are written, and batches reach the trainers, in the
    same order on every run; with seeded shuffles and init, the same data, config and seed
    give the same metrics on CPU. Costs some throughput: a slow block holds back later ones.
    """
    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        ray.init(log_to_driver=True)
    ctx = DataContext.get_current()
    # Progress bars for a person at a terminal; quiet in logs, jobs and CI.
    ctx.enable_progress_bars = sys.stdout.isatty()
    # Ray 2.60's datasource V2 read path (ListFiles -> ReadFilesParquetV2) spends ~7 s before
    # the first block of a 2-file prepared dataset here, on every epoch, against ~1 s for the
    # V1 read (benchmarks/suite.py measures time to first batch). Epochs re-read the prepared
    # Parquet, so that start-up cost was most of an epoch on small data.
    ctx.use_datasource_v2 = False
    ctx.execution_options.preserve_order = deterministic
    log.info("ray cluster resources: %s", ray.cluster_resources())


def autoscaler_max_resources() -> dict[str, float]:
    """The most of each resource the autoscaler may bring up (its node types x max workers),
    from the cluster config it publishes in the GCS; {} without an autoscaler (a local
    cluster, a fixed KubeRay cluster)."""
    try:
        from ray._private.state import state  # what Ray Data's autoscaling reads too

        return {k: float(v) for k, v in (state.get_max_resources_from_cluster_config() or {}).items()}
    except Exception as e:  # noqa: BLE001 - a private API: absent or changed means "no autoscaler"
        log.debug("no autoscaler config: %s", e)
        return {}


def cluster_resources() -> dict[str, float]:
    """What the cluster has now, or may scale up to where the autoscaler can add more (the
    resource plan and ``train.use_gpu=auto`` count nodes it would start)."""
    import ray

    now = dict(ray.cluster_resources())
    for key, most in autoscaler_max_resources().items():
        now[key] = max(now.get(key, 0.0), most)
    return now


def check_storage(root: str, shared: bool) -> None:
    """Fail before any work when run state would land on node-local disks of a multi-node
    cluster: Ray Data writes the prepared pairs on whichever node runs the write task, and
    Ray Train needs one checkpoint location every worker reaches.

    Multi-node means more than one live node now, or a driver node without CPUs (a 0-CPU head
    whose work all runs on worker nodes, as in cluster.yaml)."""
    import ray

    from .resources import ResourcePlanError
    from .storage import is_local, normalize

    if not is_local(root) or shared:
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    here = ray.get_runtime_context().get_node_id()
    driver_cpus = next((n["Resources"].get("CPU", 0) for n in nodes if n["NodeID"] == here), 0)
    if len(nodes) > 1 or driver_cpus == 0:
        raise ResourcePlanError(
            f"run state would go to {normalize(root)}, a path on each node's own disk, but "
            f"this Ray cluster has {len(nodes)} node(s)"
            + (" and its driver node has no CPUs (work runs on other nodes)" if driver_cpus == 0
               else "")
            + ": other nodes would write prepared data and checkpoints where this driver "
            "cannot read them. Pass --storage s3://BUCKET/PREFIX (or storage.uri=gs://...; "
            "endpoint and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY), or, if every node mounts this path (NFS), set "
            "storage.shared=true.")
