"""Cluster-wide mutual exclusion with Ray named actors.

A lock is a named actor in the ``visual-dpo`` namespace. The GCS allows one live actor per
name, so creating it is an atomic test-and-set: of two drivers that try at the same moment,
exactly one succeeds and the other gets ``ValueError`` (name taken). The actor is not
detached: Ray ends it with the process that created it (the job driver), so a crashed or
killed holder frees the lock within seconds, and a run that lasts longer than any timeout
keeps it for as long as it runs (nothing to renew, nothing expires).

Scope: one Ray cluster. Runs on different Ray clusters do not see each other's locks; a
schedule that starts a new cluster per run (KubeRay's RayCronJob) relies on the lineage check
(``--incremental``: only new shards) and on the promotion gate re-reading the champion.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

NAMESPACE = "visual-dpo"


class LeaseHeld(RuntimeError):
    """Another run holds the lock (a scheduled run then exits with status "skipped")."""


def schedule_lease_name(workflow: str, model_name: str) -> str:
    return f"lease:{workflow}:{model_name}"


def promotion_lock_name(model_name: str) -> str:
    return f"promotion:{model_name}"


def _holder_class():
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class LockHolder:
        def __init__(self, holder: str, since: float):
            self.holder, self.since = holder, since

        def info(self) -> dict[str, Any]:
            return {"holder": self.holder, "since": self.since}

    return LockHolder


@dataclass
class Lock:
    name: str
    actor: Any  # the live named actor; the lock is held while it lives

    def release(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=True)


def holder_of(name: str) -> dict[str, Any] | None:
    """Who holds ``name`` now, or None."""
    import ray

    try:
        return ray.get(ray.get_actor(name, namespace=NAMESPACE).info.remote(), timeout=30)
    except (ValueError, ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None


def try_acquire(name: str) -> Lock:
    """Take the lock now or raise ``LeaseHeld`` naming the holder."""
    import ray

    holder = f"{socket.gethostname()}:{os.getpid()}"
    try:
        actor = _holder_class().options(name=name, namespace=NAMESPACE).remote(holder, time.time())
        ray.get(actor.info.remote(), timeout=60)
    except ValueError:
        other = holder_of(name) or {}
        since = other.get("since")
        raise LeaseHeld(
            f"another run holds {name} ({other.get('holder', 'a run that is ending')}"
            + (f", since {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(since))}" if since else "")
            + "); not starting a second one. It is freed when that run's driver ends."
        ) from None
    return Lock(name, actor)


def acquire(name: str, wait_s: float, poll_s: float = 0.5) -> Lock:
    """Take the lock, waiting up to ``wait_s`` seconds for the holder to finish."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return try_acquire(name)
        except LeaseHeld:
            if time.monotonic() >= deadline:
                raise
            time.sleep(poll_s)
