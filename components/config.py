"""One typed config per run: a dataclass tree loaded from YAML plus ``key.sub=value`` overrides.

Every problem is collected and raised together (``ConfigError``) before any Ray or MLflow
work starts, so a user fixes a bad command line in one go.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LAYOUTS = ("auto", "canonical", "pickapic")
TIE_POLICIES = ("drop", "soft")
LOSS_TYPES = ("bt", "dpo", "ipo", "hinge", "robust")
USE_GPU = ("auto", "true", "false")
MODALITIES = ("image", "video")
PAD_POLICIES = ("repeat", "loop", "reject")
"""Clips shorter than ``data.video.frames``: repeat the last frame, loop, or reject."""
PIN_MODES = ("auto", "off")
LR_SCHEDULES = ("constant", "cosine")
CACHE_MODES = ("auto", "decoded", "none")
"""``data.cache``: ``decoded`` writes every decoded pixel once and trains from that copy;
``none`` streams: the decode actors decode every epoch, straight into the trainers;
``auto``: ``decoded`` when the decoded training data would fit ``data.cache_max_gb``."""
SELECT_BY = ("auto", "last", "val/accuracy", "val/loss")
"""``train.select_by``: which checkpoint is registered. ``auto``: ``val/accuracy`` when
``data.val_fraction`` > 0, else ``last``."""
# Pillow refuses images over twice its MAX_IMAGE_PIXELS (a decompression-bomb guard, left on);
# data.max_pixels above that could never be reached.
PILLOW_MAX_PIXELS = 2 * 89_478_485


class ConfigError(ValueError):
    """All problems found in a config, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "invalid config:\n" + "\n".join(f"  - {p}" for p in problems)
        )


@dataclass
class VideoConfig:
    """How clips become model inputs ``(3, frames, image_size, image_size)``; ``modality=video``."""

    frames: int = 16
    """T: frames sampled per clip, uniformly over the whole clip (or at ``fps``)."""
    fps: float = 0.0
    """0: sample uniformly over the clip; > 0: take frames at this rate from the start."""
    pad: str = "repeat"
    """Clips with fewer than ``frames`` frames: ``repeat`` the last, ``loop``, or ``reject``
    (quarantine)."""
    max_bytes: int = 200_000_000
    max_duration_s: float = 600.0
    max_frames: int = 20_000
    """Limits checked from the container header before a full decode (and while decoding);
    a clip over one is quarantined. Per-frame resolution uses ``data.max_pixels``."""
    max_decoded_pixels: int = 5_000_000_000
    """Budget of frames x width x height one clip may decode (uniform sampling decodes every
    frame). 5e9 = 2,400 frames of 1080p (80 s at 30 fps) or 600 of 4K; FFmpeg decodes H.264
    at ~0.5e9 pixels/s on one core, so ~10 s, well inside ``data.decode_timeout_s``. Checked
    from the declared frame count before decoding and frame by frame while decoding."""
    decoder_threads: int = 1
    """FFmpeg threads per preprocessing actor."""


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)
    """Training shards: files, directories or globs; local paths or pyarrow filesystem URIs."""
    eval: list[str] = field(default_factory=list)
    """Eval shards. Empty: split the training data by a hash of ``pair_id``."""
    layout: str = "auto"
    image_size: int = 64
    """Decoded images are resized (shorter side) and centre-cropped to image_size x image_size."""
    eval_fraction: float = 0.2
    """Share of pair_ids hashed into the eval split when no eval shards are given."""
    max_pixels: int = 40_000_000
    """Images whose header declares more pixels are quarantined before full decode."""
    decode_timeout_s: float = 30.0
    """Wall-clock deadline of one image or clip decode; past it the row is quarantined. A
    backstop for hostile input: the limits above bound legitimate work far below it, and it is
    checked between steps (frames, packets, image strips), so one step can overrun it."""
    max_quarantine_fraction: float = 0.1
    """The run fails when more than this share of a dataset's rows is quarantined."""
    cache: str = "auto"
    """``decoded`` | ``none`` (stream, decode every epoch) | ``auto`` (by size, see
    ``cache_max_gb``)."""
    cache_max_gb: float = 20.0
    """``cache=auto`` writes decoded pixels only when the training data's decoded size
    (pairs x 2 x bytes per item) is at most this; else it streams."""
    augment: bool = False
    """Streaming only: random resized crop + horizontal flip (images), and for clips the same
    plus a jitter of the sampled frames; one draw per pair, shared by both sides."""
    augment_min_scale: float = 0.6
    """Smallest crop area (share of the image) of the random resized crop."""
    val_fraction: float = 0.0
    """Share of the *training* pairs (by a second, independent hash of pair_id) held out as
    the validation split that training evaluates each epoch to pick the best checkpoint and
    stop early. Never the eval split: eval stays unbiased for the report and the gate."""
    video: VideoConfig = field(default_factory=VideoConfig)


@dataclass
class PreprocessConfig:
    """The CPU preprocessing actor pool that decodes images and clips."""

    actors: int = 1
    cpus_per_actor: int = 1
    batch_size: int = 0
    """Rows per decode batch. 0 (auto): sized so each batch carries ~0.5 s of decoding and
    at most 64 MiB of decoded pixels (datasets/batching.py); > 0: exactly that many rows."""
    node_resource: str = ""
    """A custom Ray resource (``ray start --resources='{"cpu_node": 1}'``, a node type's
    ``resources`` in cluster.yaml) that decode actors ask a sliver of, so they run only on
    nodes that have it (e.g. CPU nodes, leaving GPU nodes to the trainers). Empty: anywhere."""
    pin_cpus: str = "auto"
    """``auto``: a per-node plan gives each training worker and each preprocessing actor its
    own cores; every process pins itself (``os.sched_setaffinity``) and caps its thread pools
    to its share. ``off``: no pinning (default thread pools)."""


@dataclass
class ModelConfig:
    name: str = "bn-cnn"
    """A scorer of components/training/models.py. Prompt-conditioned: ``prompt-bn-cnn`` and
    ``clip`` (images), ``prompt-bn-c3d`` (clips)."""
    arch: str = "ViT-B-32"
    """``clip`` only: an open_clip architecture name, or a path to an open_clip model-config
    JSON file."""
    pretrained: str = ""
    """``clip`` only: a local path or URI of an open_clip checkpoint (e.g. OpenAI / LAION CLIP,
    HPSv2) for ``model.arch``. Empty: random init. Never downloaded."""
    weights: str = ""
    """torchvision scorers (resnet18, r3d_18, mc3_18, r2plus1d_18): a local path or URI of a
    torchvision state dict (e.g. ImageNet / Kinetics); the 1-output head stays new."""


@dataclass
class LossConfig:
    type: str = "bt"
    beta: float = 1.0
    label_smoothing: float = 0.0
    center_rewards_coefficient: float = 0.0
    temporal_weight: float = 0.0
    """Video only: lambda of the temporal-consistency prior; the reward in the loss (and the
    registered model's score) is ``s(x) + lambda * c(x)``, ``c = -mean_t MSE(f_t, f_t+1)``."""
    reference: str = "init"
    """Frozen reference for loss.type=dpo: ``init`` (the initial weights) or an MLflow model
    URI such as ``models:/image-scorer@champion`` (training then starts from its weights)."""


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    workers: int = 1
    use_gpu: str = "auto"
    cpus_per_worker: float = 1.0
    max_failures: int = 1
    log_every_steps: int = 10
    seed: int = 0
    checkpoints_to_keep: int = 2
    node_resource: str = ""
    """A custom Ray resource the training workers ask a sliver of (see
    ``preprocess.node_resource``). Empty: anywhere."""
    compile: bool = False
    """``torch.compile`` the scorer in each worker (worth it on GPU for long runs)."""
    backbone_lr: float = 0.0
    """Learning rate of the backbone (everything but the head); 0: ``lr``."""
    lr_schedule: str = "constant"
    """``constant`` or ``cosine`` (decay to ``min_lr_ratio * lr`` at the last step)."""
    warmup_steps: int = 0
    """Linear learning-rate warmup over this many optimiser steps."""
    min_lr_ratio: float = 0.0
    freeze_backbone_steps: int = 0
    """The backbone is frozen (only the head learns) for the first N optimiser steps."""
    grad_clip: float = 0.0
    """Clip the gradient's total norm to this; 0: off."""
    accumulation: int = 1
    """Micro-batches of ``batch_size`` per optimiser step (gradient accumulation)."""
    ema_decay: float = 0.0
    """> 0: keep an exponential moving average of the weights; it is what is validated,
    evaluated and registered."""
    select_by: str = "auto"
    """Which epoch's checkpoint is registered: ``last``, ``val/accuracy`` (max) or
    ``val/loss`` (min); ``auto`` = ``val/accuracy`` with a validation split, else ``last``."""
    patience: int = 0
    """Early stopping: stop after this many epochs without a better ``select_by``; 0: off."""
    deterministic: bool = True
    """Ray Data delivers blocks in a fixed order (``preserve_order``), so the same data,
    config and seed give the same metrics on CPU."""

    def selection(self, val_fraction: float) -> str:
        """``select_by`` with ``auto`` resolved."""
        if self.select_by == "auto":
            return "val/accuracy" if val_fraction > 0 else "last"
        return self.select_by


@dataclass
class TrackingConfig:
    tracking_uri: str = ""
    """Empty: MLFLOW_TRACKING_URI, else MLflow's default (sqlite:///mlflow.db here)."""
    experiment: str = "image-dpo"
    model_name: str = "image-scorer"
    run_name: str = ""
    """Names the MLflow parent run and the Ray Train run; running the same name again resumes."""
    resume: str = ""
    """A parent run id to resume: finished steps with the same inputs are skipped."""


@dataclass
class EvalConfig:
    slices: list[str] = field(default_factory=list)
    """Metadata columns to report accuracy per value of (e.g. model_0, photo)."""
    worst_pairs: int = 8
    """How many of the most confidently wrong eval pairs to draw in a grid."""


@dataclass
class GateConfig:
    """Promote the challenger when the lower bound of the paired bootstrap confidence interval
    of (challenger - champion) accuracy is above -min_delta and the point estimate is > 0."""

    min_delta: float = 0.02
    confidence: float = 0.95
    bootstrap_samples: int = 2000
    min_accuracy: float = 0.55
    """No version below this eval accuracy becomes champion, the first one included (0.5 is
    chance on strict pairs)."""
    wait_s: float = 600.0
    """How long a register step waits for another run's register step (one at a time per
    model name, so the champion it compares with is the one it replaces)."""


@dataclass
class StorageConfig:
    """Where a run's state goes: prepared data, checkpoints, quarantine, eval scores, reports."""

    uri: str = ""
    """A local path or any URI pyarrow opens (``s3://bucket/prefix``, ``gs://...``); endpoint
    and credentials from the environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``...).
    Empty: ``output_dir`` (local). On a cluster of more than one node it must be object
    storage, or a path every node mounts with ``storage.shared=true``."""
    shared: bool = False
    """Declare a local ``uri`` (or ``output_dir``) as mounted at the same place on every node
    (NFS, Lustre, a Kubernetes ReadWriteMany volume)."""


@dataclass
class RunConfig:
    modality: str = "image"
    """``image`` (2-D scorers, ``python -m pipelines run image``) or ``video`` (3-D scorers)."""
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    ties: str = "drop"
    """Pick-a-Pic-style ties: ``drop`` (excluded, counted) or ``soft`` (target 0.5)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    output_dir: str = "outputs"
    storage: StorageConfig = field(default_factory=StorageConfig)
    incremental: bool = False
    """Train only on shards no finished run of this workflow and model name consumed, warm-
    started from the champion; a lease (a Ray named actor) keeps two scheduled runs on one
    cluster from overlapping."""


def run_root(cfg: RunConfig) -> str:
    """The location under which each run gets its directory: ``storage.uri`` or
    ``output_dir``."""
    return cfg.storage.uri or cfg.output_dir


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists become comma-joined strings (MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list):
            out[key] = ",".join(map(str, v))
        else:
            out[key] = v
    return out


def _coerce(value: Any, typ: Any, key: str, problems: list[str]) -> Any:
    origin = typing.get_origin(typ)
    if origin is list:
        (inner,) = typing.get_args(typ)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list, got {value!r}")
            return None
        return [_coerce(v, inner, key, problems) for v in value]
    if typ is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{key}: expected true/false, got {value!r}")
        return None
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{key}: expected an integer, got {value!r}")
        return None
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        problems.append(f"{key}: expected a number, got {value!r}")
        return None
    if typ is str:
        if isinstance(value, (str, int, float, bool)):
            return str(value).lower() if isinstance(value, bool) else str(value)
        problems.append(f"{key}: expected a string, got {value!r}")
        return None
    raise TypeError(f"unsupported config type {typ} for {key}")  # internal: a new field type


def _apply(obj: Any, values: dict[str, Any], prefix: str, problems: list[str]) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if k not in names:
            problems.append(f"{key}: unknown key (known: {', '.join(sorted(names))})")
            continue
        typ = hints[k]
        current = getattr(obj, k)
        if dataclasses.is_dataclass(current):
            if not isinstance(v, dict):
                problems.append(f"{key}: expected a mapping, got {v!r}")
                continue
            _apply(current, v, key + ".", problems)
        else:
            if isinstance(typ, types.UnionType):  # pragma: no cover - no optional fields today
                typ = typing.get_args(typ)[0]
            coerced = _coerce(v, typ, key, problems)
            if coerced is not None:
                setattr(obj, k, coerced)


def parse_overrides(items: list[str], problems: list[str]) -> dict[str, Any]:
    """``["train.lr=3e-4", "data.train=a,b"] -> {"train": {"lr": 3e-4}, ...}`` (YAML scalars)."""
    tree: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            problems.append(f"override {item!r}: expected key=value, e.g. train.lr=3e-4")
            continue
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return tree


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def validate(cfg: RunConfig, require_train: bool = True) -> list[str]:
    p: list[str] = []
    d, t, lo = cfg.data, cfg.train, cfg.loss
    if require_train and not d.train:
        p.append("data.train: no training data; pass --train PATH (file, directory or glob)")
    if d.layout not in LAYOUTS:
        p.append(f"data.layout: {d.layout!r} is not one of {', '.join(LAYOUTS)}")
    if cfg.ties not in TIE_POLICIES:
        p.append(f"ties: {cfg.ties!r} is not one of {', '.join(TIE_POLICIES)}")
    elif cfg.ties == "soft" and cfg.loss.type not in ("bt", "dpo"):
        p.append(f"ties=soft needs a logistic loss (bt or dpo), not loss.type={cfg.loss.type!r}")
    if not 16 <= d.image_size <= 1024:
        p.append(f"data.image_size: {d.image_size} must be between 16 and 1024 pixels")
    if not d.eval and not 0.0 < d.eval_fraction < 1.0:
        p.append(f"data.eval_fraction: {d.eval_fraction} must be in (0, 1) without --eval")
    if d.max_pixels < d.image_size**2:
        p.append(f"data.max_pixels: {d.max_pixels} is below image_size^2 = {d.image_size**2}")
    if d.max_pixels > PILLOW_MAX_PIXELS:
        p.append(f"data.max_pixels: {d.max_pixels} is over Pillow's decompression-bomb limit "
                 f"{PILLOW_MAX_PIXELS}, which stays on; use at most that")
    if not d.decode_timeout_s > 0:
        p.append(f"data.decode_timeout_s: {d.decode_timeout_s} must be > 0 seconds")
    if d.cache not in CACHE_MODES:
        p.append(f"data.cache: {d.cache!r} is not one of {', '.join(CACHE_MODES)}")
    elif d.augment and d.cache == "decoded":
        p.append("data.augment: augmentation needs streaming (a decoded copy would freeze one "
                 "view): set data.cache=none (or auto)")
    if d.cache_max_gb < 0:
        p.append("data.cache_max_gb: must be >= 0")
    if not 0.0 < d.augment_min_scale <= 1.0:
        p.append("data.augment_min_scale: must be in (0, 1]")
    if not 0.0 <= d.val_fraction < 1.0:
        p.append(f"data.val_fraction: {d.val_fraction} must be in [0, 1)")
    if not 0.0 <= d.max_quarantine_fraction <= 1.0:
        p.append("data.max_quarantine_fraction: must be in [0, 1]")
    pp = cfg.preprocess
    if pp.actors < 1:
        p.append("preprocess.actors: need at least one preprocessing actor")
    if pp.cpus_per_actor < 1:
        p.append("preprocess.cpus_per_actor: must be >= 1 (whole cores, so they can be pinned)")
    if pp.batch_size < 0:
        p.append("preprocess.batch_size: must be 0 (auto) or >= 1")
    if pp.pin_cpus not in PIN_MODES:
        p.append(f"preprocess.pin_cpus: {pp.pin_cpus!r} is not one of {', '.join(PIN_MODES)}")
    from .training.models import SCORERS, VIDEO_SCORERS  # the registry is the source of truth

    if cfg.modality not in MODALITIES:
        p.append(f"modality: {cfg.modality!r} is not one of {', '.join(MODALITIES)}")
    names = VIDEO_SCORERS if cfg.modality == "video" else SCORERS
    if cfg.model.name not in names:
        p.append(f"model.name: {cfg.model.name!r} is not one of the {cfg.modality} scorers "
                 f"{', '.join(names)}")
    v = d.video
    if cfg.modality == "video":
        if v.frames < 2:
            p.append(f"data.video.frames: {v.frames} must be >= 2 (consistency needs two frames)")
        if v.fps < 0:
            p.append("data.video.fps: must be >= 0 (0 = uniform over the clip)")
        if v.pad not in PAD_POLICIES:
            p.append(f"data.video.pad: {v.pad!r} is not one of {', '.join(PAD_POLICIES)}")
        if v.max_bytes < 1 or v.max_duration_s <= 0 or v.max_frames < 1 or v.max_decoded_pixels < 1:
            p.append("data.video.max_bytes, max_duration_s, max_frames, max_decoded_pixels: "
                     "must be > 0")
        if v.decoder_threads < 1:
            p.append("data.video.decoder_threads: must be >= 1")
    elif lo.temporal_weight != 0:
        p.append("loss.temporal_weight: the temporal-consistency prior is for modality=video")
    if lo.type not in LOSS_TYPES:
        p.append(f"loss.type: {lo.type!r} is not one of {', '.join(LOSS_TYPES)}")
    if lo.beta <= 0:
        p.append(f"loss.beta: {lo.beta} must be > 0")
    if not 0.0 <= lo.label_smoothing < 0.5:
        p.append(f"loss.label_smoothing: {lo.label_smoothing} must be in [0, 0.5)")
    if lo.center_rewards_coefficient < 0:
        p.append("loss.center_rewards_coefficient: must be >= 0")
    if t.epochs < 1:
        p.append("train.epochs: must be >= 1")
    if t.batch_size < 2:
        p.append("train.batch_size: must be >= 2 (BatchNorm needs more than one sample)")
    if t.lr <= 0:
        p.append("train.lr: must be > 0")
    if t.workers < 1:
        p.append("train.workers: must be >= 1")
    if t.use_gpu not in USE_GPU:
        p.append(f"train.use_gpu: {t.use_gpu!r} is not one of {', '.join(USE_GPU)}")
    if t.max_failures < -1:
        p.append("train.max_failures: must be >= 0 (or -1 for unlimited)")
    if t.log_every_steps < 1:
        p.append("train.log_every_steps: must be >= 1")
    p += _fine_tuning_problems(t, d, lo)
    p += _model_problems(cfg)
    if lo.reference != "init" and not lo.reference.startswith(("models:/", "runs:/")) and "://" not in lo.reference:
        p.append(f"loss.reference: {lo.reference!r} is neither 'init' nor a model URI "
                 "(models:/NAME@ALIAS, runs:/RUN_ID/model)")
    g = cfg.gate
    if not 0.5 < g.confidence < 1:
        p.append("gate.confidence: must be in (0.5, 1)")
    if g.min_delta < 0:
        p.append("gate.min_delta: must be >= 0")
    if g.bootstrap_samples < 100:
        p.append("gate.bootstrap_samples: use at least 100")
    if not 0.0 <= g.min_accuracy <= 1.0:
        p.append(f"gate.min_accuracy: {g.min_accuracy} must be in [0, 1]")
    if g.wait_s < 0:
        p.append("gate.wait_s: must be >= 0 seconds")
    if cfg.tracking.resume and cfg.incremental:
        p.append("--resume and --incremental do not go together: resume the incremental run by id")
    if not cfg.tracking.model_name:
        p.append("tracking.model_name: must not be empty")
    return p


def _fine_tuning_problems(t: TrainConfig, d: DataConfig, lo: LossConfig) -> list[str]:
    p: list[str] = []
    if t.backbone_lr < 0:
        p.append("train.backbone_lr: must be >= 0 (0 = train.lr)")
    if t.lr_schedule not in LR_SCHEDULES:
        p.append(f"train.lr_schedule: {t.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}")
    if t.warmup_steps < 0 or t.freeze_backbone_steps < 0:
        p.append("train.warmup_steps, train.freeze_backbone_steps: must be >= 0")
    if not 0.0 <= t.min_lr_ratio <= 1.0:
        p.append("train.min_lr_ratio: must be in [0, 1]")
    if t.grad_clip < 0:
        p.append("train.grad_clip: must be >= 0 (0 = off)")
    if t.accumulation < 1:
        p.append("train.accumulation: must be >= 1")
    if not 0.0 <= t.ema_decay < 1.0:
        p.append("train.ema_decay: must be in [0, 1) (0 = off)")
    if t.select_by not in SELECT_BY:
        p.append(f"train.select_by: {t.select_by!r} is not one of {', '.join(SELECT_BY)}")
    elif t.selection(d.val_fraction) != "last" and d.val_fraction <= 0:
        p.append(f"train.select_by={t.select_by} needs a validation split: set "
                 "data.val_fraction (e.g. 0.1)")
    elif t.selection(d.val_fraction) == "val/loss" and lo.type == "dpo":
        p.append("train.select_by=val/loss: the dpo loss needs reference scores that the "
                 "validation split does not have; use val/accuracy")
    if t.patience < 0:
        p.append("train.patience: must be >= 0 (0 = no early stopping)")
    elif t.patience and t.selection(d.val_fraction) == "last":
        p.append("train.patience: early stopping needs a validation metric: set "
                 "data.val_fraction and train.select_by")
    return p


def _model_problems(cfg: RunConfig) -> list[str]:
    from .training.models import TORCHVISION_SCORERS  # the registry is the source of truth

    p: list[str] = []
    m = cfg.model
    if m.name == "clip":
        try:
            from .training.clip import clip_config

            vision = clip_config(m.arch)["vision_cfg"]
        except (ImportError, ValueError) as e:
            p.append(f"model.arch: {e}")
        else:
            size = vision.get("image_size", 224)
            size = size[0] if isinstance(size, (list, tuple)) else size
            if cfg.data.image_size != size:
                p.append(f"data.image_size: {cfg.data.image_size}, but model.arch={m.arch} "
                         f"takes {size} px images; set data.image_size={size}")
    elif m.pretrained:
        p.append("model.pretrained: only for model.name=clip; torchvision scorers take "
                 "model.weights=PATH")
    if m.weights and m.name not in TORCHVISION_SCORERS:
        p.append(f"model.weights: only for the torchvision scorers "
                 f"({', '.join(TORCHVISION_SCORERS)}), not {m.name!r}")
    for key, path in (("model.pretrained", m.pretrained), ("model.weights", m.weights)):
        if path and "://" not in path and not Path(path).is_file():
            p.append(f"{key}: {path} is not a file here; give a local checkpoint file or a "
                     "URI (s3://..., gs://...)")
    return p


def modality_defaults(modality: str) -> dict[str, Any]:
    """Defaults that differ by modality (below the YAML file in precedence)."""
    if modality == "video":
        from .training.models import DEFAULT_VIDEO_SCORER

        return {"modality": "video", "model": {"name": DEFAULT_VIDEO_SCORER},
                "data": {"image_size": 64},
                "tracking": {"experiment": "video-dpo", "model_name": "video-scorer"}}
    return {"modality": modality}


def load_config(
    path: str | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    require_train: bool = True,
    modality: str = "image",
) -> RunConfig:
    """Modality defaults < YAML file < ``extra`` (from CLI flags) < ``key=value`` overrides;
    validated."""
    problems: list[str] = []
    tree: dict[str, Any] = modality_defaults(modality)
    if path:
        p = Path(path)
        if not p.is_file():
            problems.append(f"--config {path}: file not found")
        else:
            try:
                loaded = yaml.safe_load(p.read_text()) or {}
            except yaml.YAMLError as e:
                problems.append(f"--config {path}: not valid YAML ({e})")
                loaded = {}
            if not isinstance(loaded, dict):
                problems.append(f"--config {path}: top level must be a mapping")
                loaded = {}
            tree = _merge(tree, loaded)
    tree = _merge(tree, extra or {})
    tree = _merge(tree, parse_overrides(overrides or [], problems))
    cfg = RunConfig()
    _apply(cfg, tree, "", problems)
    problems += validate(cfg, require_train)
    if problems:
        raise ConfigError(problems)
    return cfg


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
