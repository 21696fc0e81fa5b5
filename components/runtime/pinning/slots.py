"""Node-local slots: which preprocessing actor of a run this process is on its node.

Ray Data does not tell an actor its index, so each actor claims the lowest free slot of its
run with an ``flock`` held for the life of the process; a dead actor's slot frees itself.
Standard library only. How the slot maps to cores: docs/cpu-pinning.md.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Any

SLOT_LIMIT = 4096

_held_slots: dict[tuple[str, str], tuple[int, Any]] = {}  # (dir, key) -> (slot, open lock file)


def slot_dir(key: str, base_dir: str | None = None) -> str:
    """The node-local directory of ``key``'s slot lock files (under ``base_dir``, default the
    temp dir: never shared between nodes)."""
    base = base_dir or os.path.join(tempfile.gettempdir(), f"visual-dpo-slots-{os.getuid()}")
    return os.path.join(base, hashlib.sha1(key.encode()).hexdigest()[:16])


def claim_slot(key: str, slots: int = SLOT_LIMIT, *, base_dir: str | None = None) -> int:
    """The lowest node-local index in ``[0, slots)`` that no live process holds for ``key``:
    an ``flock`` on ``slot-<i>.lock``, kept for the life of this process (the kernel drops it
    when the process dies, so a restarted actor re-claims a free slot). A process that already
    holds a slot for ``key`` gets the same one back. All held: ``pid % slots`` (shared).

    Ray Data does not tell an actor its index in the pool, let alone its index among the
    actors on its node; this does."""
    import fcntl  # POSIX only: importing this module stays possible elsewhere

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
