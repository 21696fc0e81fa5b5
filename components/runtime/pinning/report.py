"""The pinning reports: one JSON file per pinned process, in the run's report directory.

A report says what a process got (its cores, threads, node and hostname); the pipeline logs
the directory as the run's ``pinning/`` artifact. A directory is a local path or a
pyarrow-filesystem URI such as ``s3://`` (``runtime/storage.py``, imported only for a URI).
Standard library only at module level. See docs/cpu-pinning.md.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any


def _is_remote(report_dir: str) -> bool:
    return "://" in report_dir and not report_dir.startswith("file://")


def write_report(report_dir: str, report: dict[str, Any]) -> str:
    """Write ``report`` (:func:`~components.runtime.pinning.role.pin_role`'s, which names its
    ``role``, ``node``, ``index`` and ``pid``) to ``report_dir/<role>-<node>-<index>-<pid>.json``;
    returns that path or URI."""
    node_tag = "".join(c for c in str(report["node"]) if c.isalnum() or c in "-_.")[:16]
    name = f"{report['role']}-{node_tag}-{report['index']}-{report['pid']}.json"
    if _is_remote(report_dir):
        from .. import storage  # pyarrow filesystems (s3://...): shared run state

        path = storage.join(report_dir, name)
        storage.write_json(path, report)
        return path
    local = report_dir.removeprefix("file://")
    os.makedirs(local, exist_ok=True)
    path = os.path.join(local, name)
    with open(path, "w") as f:
        json.dump(report, f)
    return path


def read_reports(report_dir: str) -> list[dict[str, Any]]:
    """The reports :func:`write_report` wrote to ``report_dir`` (a local path: oldest first; a
    URI: by name); each names its ``node``, ``node_id`` and ``hostname``."""
    if _is_remote(report_dir):
        from .. import storage

        return [storage.read_json(f) for f in storage.list_files(report_dir)
                if f.endswith(".json")]
    local = report_dir.removeprefix("file://")
    paths = sorted(glob.glob(os.path.join(local, "*.json")), key=os.path.getmtime)
    out = []
    for path in paths:
        with open(path) as f:
            out.append(json.load(f))
    return out
