"""The model a replica serves, and the registry alias it follows.

``models:/NAME@ALIAS`` is pinned to the version the alias names now; ``poll`` reads the alias
again and, when it has moved, loads and verifies the new version *beside* the one serving, then
swaps one reference. A request takes the reference once, when it arrives, so every item of it
is scored by one version and in-flight requests finish on the version they started with. A
version that fails verification (or fails to load) is refused and remembered; the old one
keeps serving.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..media.spec import MediaSpec
from ..registry.pyfunc import ScorerModel
from ..tracking import models as registry
from ..tracking.redaction import redact
from .settings import RequestLimits


@dataclass(frozen=True)
class ServedModel:
    """One loaded, verified version and the decode contract requests are held to."""

    scorer: ScorerModel
    name: str  # registered model name ("" for a run or path URI)
    version: str  # registry version ("" for a run or path URI)
    uri: str  # the pinned URI it was loaded from
    spec: MediaSpec  # the model's MediaSpec, tightened by the request limits


def model_uri(target: str) -> str:
    """``NAME@ALIAS`` / ``NAME`` / any MLflow model URI -> a model URI (``NAME`` alone follows
    ``@champion``)."""
    if "://" in target or target.startswith(("models:/", "runs:/", "/")):
        return target
    return f"models:/{target}" + ("" if "@" in target or "/" in target else "@champion")


def follows_alias(uri: str) -> bool:
    return uri.startswith("models:/") and "@" in uri


def pin(uri: str) -> tuple[str, str, str]:
    """(pinned URI, name, version) for what ``uri`` names now."""
    pinned = registry.pin_model_uri(uri)
    if pinned.startswith("models:/"):
        name, _, version = pinned[len("models:/"):].partition("/")
        return pinned, name, version
    return pinned, "", ""


def load_verified(uri: str) -> ScorerModel:
    """The one place a version is checked before it may serve: ``load_scorer`` downloads it,
    verifies every file against the manifest whose SHA-256 the registry recorded
    (``verify_model``) and builds the scorer from the verified copy only. Raises
    ``ModelVerificationError`` for a tampered or unrecorded version, and whatever the registry
    raised when it could not answer."""
    scorer = ScorerModel()
    scorer.load(registry.load_scorer(uri))
    return scorer


def limited_spec(spec: MediaSpec, limits: RequestLimits) -> MediaSpec:
    """The model's decode contract with the service's request limits applied (tighter wins)."""
    def tighter(own: int, limit: int) -> int:
        return min(own, limit) if limit else own

    return replace(spec, max_pixels=tighter(spec.max_pixels, limits.max_pixels),
                   max_frames=tighter(spec.max_frames, limits.max_frames),
                   max_bytes=min(spec.max_bytes, limits.max_item_bytes))


class ModelFollower:
    """Holds ``current`` (a ``ServedModel``) and moves it when the alias moves.

    ``load`` is ``load_verified`` (a test may pass another loader)."""

    def __init__(self, uri: str, limits: RequestLimits,
                 load: Callable[[str], ScorerModel] = load_verified) -> None:
        self.uri, self.limits, self._load = uri, limits, load
        self.refused: dict[str, str] = {}  # version -> why it was refused
        self._lock = threading.Lock()  # one load at a time
        self.current = self._served(*pin(uri))

    def _served(self, pinned: str, name: str, version: str) -> ServedModel:
        scorer = self._load(pinned)
        return ServedModel(scorer, name, version, pinned, limited_spec(scorer.spec, self.limits))

    def poll(self) -> str | None:
        """Read the alias; load, verify and swap to a new version. Returns ``"swapped"``,
        ``"refused"`` or None (nothing changed, or not following an alias). Registry errors
        propagate: the caller logs them and keeps serving."""
        if not follows_alias(self.uri):
            return None
        with self._lock:
            pinned, name, version = pin(self.uri)
            if version == self.current.version or version in self.refused:
                return None
            try:
                new = self._served(pinned, name, version)
            except Exception as e:  # any failure to load or verify keeps the old version
                self.refused[version] = redact(f"{type(e).__name__}: {e}")
                return "refused"
            self.current = new  # one reference: a request sees the old or the new, whole
            return "swapped"
