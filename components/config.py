"""One typed config per run: a dataclass tree loaded from YAML plus ``key.sub=value`` overrides.

Every problem is collected and raised together (``ConfigError``) before any Ray or MLflow
work starts, so a user fixes a bad command line in one go.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from . import scorer_catalog

# Enumerations: typed fields that loading rejects with the allowed values (``_coerce``). The
# tuples are for code that lists the values (one definition each: tests/test_architecture.py).
Layout = Literal["auto", "canonical", "pickapic", "hpdv2", "videogen-rewardbench"]
TiePolicy = Literal["drop", "soft"]
LossType = Literal["bt", "dpo", "ipo", "hinge", "robust", "btt", "uncertainty"]
HeadKind = Literal["score", "mu_sigma", "named"]
"""``model.head``: the scorer's output layer. ``score``: one output, the score. ``mu_sigma``:
two, ``(mu, log sigma)`` as HPSv3: the score is ``mu``, ``sigma`` its uncertainty (trained by
``loss.type=uncertainty``). ``named``: one output per ``model.head_names`` as VideoAlign's
visual quality / motion quality / text alignment; the score is their ``model.head_weights``
total."""
UseGpu = Literal["auto", "true", "false"]
Modality = Literal["image", "video"]
PadPolicy = Literal["repeat", "loop", "reject"]
"""Clips shorter than ``data.video.frames``: repeat the last frame, loop, or reject."""
PinMode = Literal["auto", "off"]
LrSchedule = Literal["constant", "cosine"]
CacheMode = Literal["auto", "decoded", "none"]
"""``data.cache``: ``decoded`` writes every decoded pixel once and trains from that copy;
``none`` streams: the decode actors decode every epoch, straight into the trainers;
``auto``: ``decoded`` when the decoded training data would fit ``data.cache_max_gb``."""
Strategy = Literal["ddp", "fsdp"]
"""``train.strategy``: ``ddp`` replicates the model on every worker (DistributedDataParallel);
``fsdp`` shards parameters, gradients and optimiser state over the workers (FSDP2)."""
ScoreScale = Literal["logit_scale", "none"]
"""``model.score_scale`` of the CLIP-family scorers: ``logit_scale`` scores
``logit_scale.exp() * cos(image, prompt)`` (PickScore; SigLIP adds its ``logit_bias``),
``none`` the plain cosine (HPSv2, tgxs002/HPSv2 ``hpsv2/img_score.py``)."""
SelectBy = Literal["auto", "last", "val/accuracy", "val/loss"]
"""``train.select_by``: which checkpoint is registered. ``auto``: ``val/accuracy`` when
``data.val_fraction`` > 0, else ``last``."""

LAYOUTS = typing.get_args(Layout)
TIE_POLICIES = typing.get_args(TiePolicy)
LOSS_TYPES = typing.get_args(LossType)
HEAD_KINDS = typing.get_args(HeadKind)
USE_GPU = typing.get_args(UseGpu)
MODALITIES = typing.get_args(Modality)
PAD_POLICIES = typing.get_args(PadPolicy)
PIN_MODES = typing.get_args(PinMode)
LR_SCHEDULES = typing.get_args(LrSchedule)
CACHE_MODES = typing.get_args(CacheMode)
SELECT_BY = typing.get_args(SelectBy)
SCORE_SCALES = typing.get_args(ScoreScale)
STRATEGIES = typing.get_args(Strategy)
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


@dataclass(frozen=True)
class Range:
    """The values one numeric key accepts: finite, from ``low`` to ``high`` (each end included
    unless ``*_open``). Every int and float field of a section has one, in the section's
    ``RANGES``; ``range_problems`` checks them all, whatever the modality, before any other
    rule runs. The upper ends are sanity bounds: far above any sensible setting, low enough
    that a typo (an extra zero, ``1e9`` for ``1e3``) is refused before it allocates or waits."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    note: str = ""
    """Said after the range in the message (``0 = off``)."""

    def admits(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self, kind: type) -> str:
        """``a finite number in (0, 100]``, ``an integer in [1, 10_000]``."""
        what = "an integer" if kind is int else "a finite number"
        ends = f"{'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}" \
               f"{')' if self.high_open else ']'}"
        return f"{what} in {ends}" + (f" ({self.note})" if self.note else "")


def _number(x: float) -> str:
    if float(x).is_integer():
        return f"{int(x):_}" if abs(x) >= 10_000 else str(int(x))
    return f"{x:g}"


@dataclass
class VideoConfig:
    """How clips become model inputs ``(3, frames, image_size, image_size)``; ``modality=video``."""

    frames: int = 16
    """T: frames sampled per clip, uniformly over the whole clip (or at ``fps``)."""
    fps: float = 0.0
    """0: sample uniformly over the clip; > 0: take frames at this rate from the start."""
    pad: PadPolicy = "repeat"
    """Clips with fewer than ``frames`` frames: ``repeat`` the last, ``loop``, or ``reject``
    (quarantine)."""
    max_bytes: int = 200_000_000
    """Encoded bytes of one clip (a frame list: the sum of its frames); larger is quarantined."""
    max_duration_s: float = 600.0
    """Declared duration of one clip, in seconds."""
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

    RANGES: ClassVar[dict[str, Range]] = {
        "frames": Range(2, 1024, note="consistency needs two frames"),
        "fps": Range(0, 1000, note="0 = uniform over the clip"),
        "max_bytes": Range(1, 2**31 - 1, note="one Arrow binary cell holds at most 2 GiB"),
        "max_duration_s": Range(0, 86_400, low_open=True),
        "max_frames": Range(1, 1_000_000),
        "max_decoded_pixels": Range(1, 10**12),
        "decoder_threads": Range(1, 256),
    }


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)
    """Training shards: files, directories or globs; local paths or pyarrow filesystem URIs."""
    eval: list[str] = field(default_factory=list)
    """Eval shards. Empty: split the training data by a hash of ``pair_id``."""
    layout: Layout = "auto"
    """Column layout of the shards: ``canonical`` (pair_id/chosen/rejected), ``pickapic``
    (jpg_0/jpg_1/label_0/label_1), or ``auto`` (decided per shard from its schema). For
    ``evaluate`` also the benchmark annotation files ``hpdv2`` (HPDv2's ``test.json``) and
    ``videogen-rewardbench`` (its CSV), which ``auto`` recognises by their content
    (docs/evaluation.md)."""
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
    cache: CacheMode = "auto"
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
    max_prompt_chars: int = 2000
    """Prompt-conditioned scorers: a prompt longer than this many characters is refused
    before the tokenizer sees it (quarantined in training and scoring data; an error naming
    the row in the registered model's ``predict``). The limit travels in the model."""
    max_prompt_tokens: int = 256
    """A prompt with more words than this (whitespace-separated; each is at least one token)
    is refused the same way, also before tokenising. Tokens past the scorer's context length
    are cut as before; this bounds the work, not the context."""
    video: VideoConfig = field(default_factory=VideoConfig)

    RANGES: ClassVar[dict[str, Range]] = {
        "image_size": Range(16, 1024, note="pixels"),
        "eval_fraction": Range(0, 1, high_open=True),
        "max_pixels": Range(256, PILLOW_MAX_PIXELS,
                            note="the top is Pillow's decompression-bomb limit, which stays on"),
        "decode_timeout_s": Range(0, 3600, low_open=True, note="seconds"),
        "max_quarantine_fraction": Range(0, 1),
        "cache_max_gb": Range(0, 1_000_000),
        "augment_min_scale": Range(0, 1, low_open=True),
        "val_fraction": Range(0, 1, high_open=True),
        "max_prompt_chars": Range(1, 20_000, note="one 8,000-letter word: 4 s of BPE"),
        "max_prompt_tokens": Range(1, 10_000),
    }

    def problems(self) -> list[str]:
        """This section's rules across keys (each key's range: ``RANGES``)."""
        p = []
        if not self.eval and not 0.0 < self.eval_fraction < 1.0:
            p.append(f"data.eval_fraction: {self.eval_fraction} must be in (0, 1) without --eval")
        if self.max_pixels < self.image_size**2:
            p.append(f"data.max_pixels: {self.max_pixels} is below image_size^2 = "
                     f"{self.image_size**2}")
        if self.augment and self.cache == "decoded":
            p.append("data.augment: augmentation needs streaming (a decoded copy would freeze "
                     "one view): set data.cache=none (or auto)")
        return p


@dataclass
class PreprocessConfig:
    """The CPU preprocessing actor pool that decodes images and clips."""

    actors: int = 1
    """Decode actors in the pool (each pins itself to ``cpus_per_actor`` cores)."""
    cpus_per_actor: int = 1
    """Whole cores per decode actor (Ray CPUs it reserves; its thread pools are capped to them)."""
    batch_size: int = 0
    """Rows per decode batch. 0 (auto): sized so each batch carries ~0.5 s of decoding and
    at most 64 MiB of decoded pixels (datasets/batching.py); > 0: exactly that many rows."""
    node_resource: str = ""
    """A custom Ray resource (``ray start --resources='{"cpu_node": 1}'``, a node type's
    ``resources`` in cluster.yaml) that decode actors ask a sliver of, so they run only on
    nodes that have it (e.g. CPU nodes, leaving GPU nodes to the trainers). Empty: anywhere."""
    pin_cpus: PinMode = "auto"
    """``auto``: a per-node plan gives each training worker and each preprocessing actor its
    own cores; every process pins itself (``os.sched_setaffinity``) and caps its thread pools
    to its share. ``off``: no pinning (default thread pools)."""

    RANGES: ClassVar[dict[str, Range]] = {
        "actors": Range(1, 100_000, note="at least one preprocessing actor"),
        "cpus_per_actor": Range(1, 1024, note="whole cores, so they can be pinned"),
        "batch_size": Range(0, 1_000_000, note="0 = auto"),
    }


@dataclass
class LoraConfig:
    """Low-rank adapters (``peft``) instead of training the whole backbone, as VideoAlign
    trains its language model. The registered model has the adapters merged in: a consumer
    needs neither peft nor the adapter layout."""

    r: int = 0
    """Adapter rank; 0: off (train the whole model)."""
    alpha: float = 16.0
    """Scaling numerator: adapters are scaled by ``alpha / r``."""
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=list)
    """Module names (or name suffixes) that get adapters. Empty: every Linear and Conv layer
    outside ``trainable``."""
    trainable: list[str] = field(default_factory=lambda: ["head"])
    """Module-name prefixes trained in full beside the adapters (the head; a vision tower);
    ``head`` means the scorer's own head, whatever its module is called."""

    RANGES: ClassVar[dict[str, Range]] = {
        "r": Range(0, 4096, note="0 = no adapters"),
        "alpha": Range(0, 1_000_000, low_open=True),
        "dropout": Range(0, 1, high_open=True),
    }


@dataclass
class ModelConfig:
    name: str = "bn-cnn"
    """A scorer of the catalogue (``components/scorer_catalog.py``; ``visual-dpo run --help``
    lists them). Prompt-conditioned: ``prompt-bn-cnn``, ``clip`` and ``hf-clip`` (images),
    ``prompt-bn-c3d`` (clips)."""
    arch: str = "ViT-B-32"
    """``clip`` only: an open_clip architecture name, or a path to an open_clip model-config
    JSON file."""
    pretrained: str = ""
    """``clip``: a local path or URI of an open_clip checkpoint (e.g. OpenAI / LAION CLIP,
    HPSv2) for ``model.arch``; empty: random init. ``hf-clip`` (required): a local Hugging
    Face model directory (``config.json``, ``model.safetensors``, tokenizer and processor
    files; e.g. PickScore) or a URI of one, copied here first. ``vlm``, ``vlm-video``
    (required): a local Qwen2-VL / Qwen2.5-VL directory, optionally with HPSv3's
    ``HPSv3.safetensors`` or VideoAlign's ``model_config.json`` + ``checkpoint-N/``
    (docs/models.md). Never a hub id: nothing downloads from the Hub."""
    score_scale: ScoreScale = "logit_scale"
    """``clip``, ``hf-clip``: ``logit_scale`` (``logit_scale.exp() * cos``, PickScore) or
    ``none`` (the plain cosine, HPSv2)."""
    weights: str = ""
    """torchvision scorers (resnet18, r3d_18, mc3_18, r2plus1d_18): a local path or URI of a
    torchvision state dict (e.g. ImageNet / Kinetics); the 1-output head stays new."""

    head: HeadKind = "score"
    """The output layer (docs/models.md): ``score`` (one output), ``mu_sigma`` (``(mu, log
    sigma)`` as HPSv3; the score is ``mu``; with ``loss.type=uncertainty``) or ``named`` (one
    output per ``head_names`` as VideoAlign; the score is the ``head_weights`` total). Not for
    the CLIP-family scorers, whose score is a cosine."""
    head_names: list[str] = field(default_factory=list)
    """``model.head=named``: the heads' names (a letter, then letters, digits or ``_``), e.g.
    ``vq,mq,ta``. Each head is trained as a scorer of its own on the pair's label and served
    as a column of its own."""
    head_weights: list[float] = field(default_factory=list)
    """``model.head=named``: each head's weight (>= 0) in the score, the total that is served,
    ranked and gated; empty: 1 each (VideoAlign's Overall = VQ + MQ + TA)."""

    lora: LoraConfig = field(default_factory=LoraConfig)

    RANGES: ClassVar[dict[str, Range]] = {"head_weights": Range(0, 1_000_000)}

    def problems(self) -> list[str]:
        """Rules of this section alone; the name is checked per modality in ``validate``."""
        p = []
        known = scorer_catalog.entry(self.name)
        takes = known.pretrained if known is not None else ""
        clips = ", ".join(e.name for e in scorer_catalog.CATALOG
                          if e.pretrained and not e.vision_language)
        if self.pretrained and known is not None and not takes:
            p.append(f"model.pretrained: only for the CLIP-family scorers ({clips}); "
                     "torchvision scorers take model.weights=PATH")
        if takes == "hf" and not self.pretrained:
            p.append(f"model.pretrained: model.name={self.name} needs {_HF_DIRECTORY}")
        if self.score_scale != "logit_scale" and known is not None and (
                not takes or known.vision_language):
            p.append(f"model.score_scale: only for the CLIP-family scorers ({clips}), not "
                     f"{self.name!r}")
        if self.weights and known is not None and not known.torchvision_weights:
            takes = [e.name for e in scorer_catalog.CATALOG if e.torchvision_weights]
            p.append(f"model.weights: only for the torchvision scorers ({', '.join(takes)}), "
                     f"not {self.name!r}")
        p += _head_problems(self)
        for key, path in (("model.pretrained", self.pretrained), ("model.weights", self.weights)):
            if not path or "://" in path:
                continue
            if key == "model.pretrained" and takes == "hf":
                p += _hf_directory_problems(path)
            elif not Path(path).is_file():
                p.append(f"{key}: {path} is not a file here; give a local checkpoint file or "
                         "a URI (s3://..., gs://...)")
        return p


_HF_DIRECTORY = ("a local Hugging Face model directory (config.json, model.safetensors, "
                 "tokenizer and processor files) or a URI of one (s3://..., gs://...)")


def _hf_directory_problems(path: str) -> list[str]:
    """``model.pretrained`` of ``hf-clip``: a directory here, never a Hub id (it would
    download; nothing does)."""
    owner_slash_name = re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", path) is not None
    if path.startswith("hf-hub:") or (owner_slash_name and not Path(path).exists()):
        repo = path.removeprefix("hf-hub:")
        return [f"model.pretrained: {path!r} is not a directory here; if it is a Hugging Face "
                f"Hub id, nothing downloads at run time: download it first (hf download {repo} "
                f"--local-dir DIR) and pass model.pretrained=DIR, {_HF_DIRECTORY}"]
    if not Path(path).is_dir():
        return [f"model.pretrained: {path} is not a directory here; give {_HF_DIRECTORY}"]
    if not (Path(path) / "config.json").is_file():
        return [f"model.pretrained: {path} has no config.json; give {_HF_DIRECTORY}"]
    return []



HEAD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
"""A head name: a metric-name part, a DataFrame column and a ``key=value`` list item alike."""


def _head_problems(m: ModelConfig) -> list[str]:
    """``model.head``, ``head_names`` and ``head_weights`` together."""
    if m.head != "named":
        if m.head_names or m.head_weights:
            return [f"model.head_names, model.head_weights: only for model.head=named, not "
                    f"{m.head}"]
        return []
    names, weights = m.head_names, m.head_weights
    if not names:
        return ["model.head=named needs model.head_names, e.g. model.head_names=vq,mq,ta"]
    p = []
    bad = [n for n in names if not HEAD_NAME.fullmatch(n) or n == "score"]
    if bad:
        p.append(f"model.head_names: {bad} are not head names: a letter, then letters, digits "
                 "or _ ('score' is the total's column)")
    if len(set(names)) != len(names):
        p.append(f"model.head_names: {names} names a head twice")
    if weights and len(weights) != len(names):
        p.append(f"model.head_weights: {len(weights)} weights for {len(names)} heads "
                 f"({','.join(names)}); give one each, or none for 1 each")
    elif weights and (min(weights) < 0 or sum(weights) <= 0):
        p.append(f"model.head_weights: {weights} must be >= 0 with a positive sum")
    return p


@dataclass
class LossConfig:
    type: LossType = "bt"
    """The objective: ``bt`` (Bradley-Terry), ``dpo`` (against a frozen reference), ``ipo``,
    ``hinge``, ``robust``, ``btt`` (Bradley-Terry with ties, VideoAlign), ``uncertainty``
    (HPSv3; needs ``model.head=mu_sigma``) (docs/models.md)."""
    beta: float = 1.0
    """Scale of the reward gap in the loss (DPO's beta)."""
    label_smoothing: float = 0.0
    """cDPO / robust-DPO label noise epsilon, in [0, 0.5)."""
    center_rewards_coefficient: float = 0.0
    """Weight of the penalty on the mean squared reward (keeps scores centred at 0)."""
    temporal_weight: float = 0.0
    """Video only: lambda of the temporal-consistency prior; the reward in the loss (and the
    registered model's score) is ``s(x) + lambda * c(x)``, ``c = -mean_t MSE(f_t, f_t+1)``."""
    tie_theta: float = 5.0
    """``loss.type=btt``: the Rao-Kupper tie parameter theta > 1, fixed (VideoAlign's k = 5):
    a pair with reward gap h is won with probability sigmoid(h - log theta), lost with
    sigmoid(-h - log theta), and tied with the rest; ties are ``target=0.5`` rows."""
    reference: str = "init"
    """Frozen reference for loss.type=dpo: ``init`` (the initial weights) or an MLflow model
    URI such as ``models:/image-scorer@champion`` (training then starts from its weights)."""

    RANGES: ClassVar[dict[str, Range]] = {
        "beta": Range(0, 1_000_000, low_open=True),
        "label_smoothing": Range(0, 0.5, high_open=True),
        "center_rewards_coefficient": Range(0, 1_000_000),
        "temporal_weight": Range(0, 1_000_000, note="0 = off"),
        "tie_theta": Range(1, 1_000_000, low_open=True, note="1 gives ties no probability"),
    }

    def problems(self) -> list[str]:
        p = []
        if (self.reference != "init" and "://" not in self.reference
                and not self.reference.startswith(("models:/", "runs:/"))):
            p.append(f"loss.reference: {self.reference!r} is neither 'init' nor a model URI "
                     "(models:/NAME@ALIAS, runs:/RUN_ID/model)")
        return p


@dataclass
class TrainConfig:
    epochs: int = 3
    """Passes over the training pairs."""
    batch_size: int = 32
    """Pairs per micro-batch on each worker."""
    lr: float = 1e-3
    """AdamW learning rate (of the head; see ``backbone_lr``)."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""
    workers: int = 1
    """Ray Train workers (data-parallel ranks)."""
    strategy: Strategy = "ddp"
    """``ddp``: every worker holds the whole model, its gradients and AdamW state (16 bytes per
    parameter); ``fsdp``: each worker holds 1/``workers`` of them (FSDP2 ``fully_shard`` per
    block, then the root; bf16 compute with fp32 reduction on GPU); checkpoints are sharded
    (``torch.distributed.checkpoint``) and resume on any number of workers. docs/training.md
    says when to choose which."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass instead of keeping them
    (less memory, about a third more compute)."""
    use_gpu: UseGpu = "auto"
    """``auto``: train on GPUs when the cluster has (or its autoscaler can add) GPU nodes."""
    cpus_per_worker: float = 1.0
    """Ray CPUs each training worker reserves; ``preprocess.pin_cpus=auto`` pins it to this many
    whole cores, rounded (at least one, with a warning when not whole)."""
    max_failures: int = 1
    """Ray Train's ``FailureConfig``: worker-group restarts from the last checkpoint (-1:
    unlimited)."""
    log_every_steps: int = 10
    """Rank 0 logs per-step metrics every this many optimiser steps."""
    seed: int = 0
    """Seeds the initial weights, the per-epoch shuffle of the training data and the
    augmentation draws."""
    checkpoints_to_keep: int = 2
    """Checkpoints Ray Train keeps in the run's storage, ranked by ``select_by`` (and always the
    latest, for resuming)."""
    node_resource: str = ""
    """A custom Ray resource the training workers ask a sliver of (see
    ``preprocess.node_resource``). Empty: anywhere."""
    compile: bool = False
    """``torch.compile`` the scorer in each worker (worth it on GPU for long runs)."""
    backbone_lr: float = 0.0
    """Learning rate of the backbone (everything but the head); 0: ``lr``."""
    lr_schedule: LrSchedule = "constant"
    """``constant`` or ``cosine`` (decay to ``min_lr_ratio * lr`` at the last step)."""
    warmup_steps: int = 0
    """Linear learning-rate warmup over this many optimiser steps."""
    min_lr_ratio: float = 0.0
    """``cosine``: the last step's learning rate as a share of ``lr``."""
    freeze_backbone_steps: int = 0
    """The backbone is frozen (only the head learns) for the first N optimiser steps."""
    grad_clip: float = 0.0
    """Clip the gradient's total norm to this; 0: off."""
    accumulation: int = 1
    """Micro-batches of ``batch_size`` per optimiser step (gradient accumulation)."""
    ema_decay: float = 0.0
    """> 0: keep an exponential moving average of the weights; it is what is validated,
    evaluated and registered."""
    select_by: SelectBy = "auto"
    """Which epoch's checkpoint is registered: ``last``, ``val/accuracy`` (max) or
    ``val/loss`` (min); ``auto`` = ``val/accuracy`` with a validation split, else ``last``."""
    patience: int = 0
    """Early stopping: stop after this many epochs without a better ``select_by``; 0: off."""
    deterministic: bool = True
    """Ray Data delivers blocks in a fixed order (``preserve_order``), so the same data,
    config and seed give the same metrics on CPU."""

    # The rules that need ``data.val_fraction`` or the loss are in ``validate``.
    RANGES: ClassVar[dict[str, Range]] = {
        "epochs": Range(1, 100_000),
        "batch_size": Range(2, 1_000_000, note="BatchNorm needs more than one sample"),
        "lr": Range(0, 100, low_open=True),
        "weight_decay": Range(0, 100),
        "workers": Range(1, 100_000),
        "cpus_per_worker": Range(0, 1024, low_open=True),
        "max_failures": Range(-1, 10_000, note="-1 = unlimited"),
        "log_every_steps": Range(1, 10**9),
        "seed": Range(0, 2**32 - 1, note="numpy's seed range"),
        "checkpoints_to_keep": Range(1, 10_000),
        "backbone_lr": Range(0, 100, note="0 = train.lr"),
        "warmup_steps": Range(0, 10**9),
        "min_lr_ratio": Range(0, 1),
        "freeze_backbone_steps": Range(0, 10**9),
        "grad_clip": Range(0, 1_000_000, note="0 = off"),
        "accumulation": Range(1, 100_000),
        "ema_decay": Range(0, 1, high_open=True, note="0 = off"),
        "patience": Range(0, 100_000, note="0 = no early stopping"),
    }

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
    """MLflow experiment (``video-dpo`` for ``run video``)."""
    model_name: str = "image-scorer"
    """Registered model name (``video-scorer`` for ``run video``)."""
    run_name: str = ""
    """Names the MLflow parent run and the Ray Train run; running the same name again resumes."""
    resume: str = ""
    """A parent run id to resume: finished steps with the same inputs are skipped."""

    def problems(self) -> list[str]:
        return [] if self.model_name else ["tracking.model_name: must not be empty"]


@dataclass
class EvalConfig:
    slices: list[str] = field(default_factory=list)
    """Metadata columns to report accuracy per value of (e.g. model_0, photo)."""
    worst_pairs: int = 8
    """How many of the most confidently wrong eval pairs to draw in a grid."""
    media_root: str = ""
    """Benchmark layouts: the folder the annotation file's image or video paths are relative
    to. Empty: the annotation file's folder (or, for HPDv2, the folder named like the file
    beside it: ``test.json`` and ``test/``)."""
    tie_validation: list[str] = field(default_factory=list)
    """Pick-a-Pic's tie protocol (PickScore): validation shards (``validation_unique``) on which
    the tie threshold is tuned, then applied to the eval data (``test_unique``); needs
    ``ties=soft``."""

    RANGES: ClassVar[dict[str, Range]] = {"worst_pairs": Range(0, 1000)}


@dataclass
class GateConfig:
    """Promote the challenger when the lower bound of the paired bootstrap confidence interval
    of (challenger - champion) accuracy is above -min_delta and the point estimate is > 0."""

    min_delta: float = 0.02
    """Accuracy a challenger may lose against the champion (lower bound of the interval)."""
    confidence: float = 0.95
    """Confidence level of the paired bootstrap interval."""
    bootstrap_samples: int = 2000
    """Bootstrap resamples of the eval pairs."""
    min_accuracy: float = 0.55
    """No version below this eval accuracy becomes champion, the first one included (0.5 is
    chance on strict pairs)."""
    wait_s: float = 600.0
    """How long a register step waits for another run's register step (one at a time per
    model name, so the champion it compares with is the one it replaces)."""

    RANGES: ClassVar[dict[str, Range]] = {
        "min_delta": Range(0, 1),
        "confidence": Range(0.5, 1, low_open=True, high_open=True),
        # The register step holds samples x eval pairs x 8 bytes: 20,000 x 10,000 pairs = 1.6 GB.
        "bootstrap_samples": Range(100, 20_000),
        "min_accuracy": Range(0, 1),
        "wait_s": Range(0, 86_400, note="seconds"),
    }


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
    modality: Modality = "image"
    """``image`` (2-D scorers, ``python -m pipelines run image``) or ``video`` (3-D scorers)."""
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    ties: TiePolicy = "drop"
    """Pick-a-Pic-style ties: ``drop`` (excluded, counted) or ``soft`` (target 0.5)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    output_dir: str = "outputs"
    """Local directory of the run's state when ``storage.uri`` is empty."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    incremental: bool = False
    """Train only on shards no finished run of this workflow and model name consumed, warm-
    started from the champion; a lease held in the run storage keeps two scheduled runs from
    overlapping, on one Ray cluster or several."""


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
    if origin is Literal:
        allowed = typing.get_args(typ)
        text = value
        if isinstance(value, bool):  # YAML 1.1 reads off/on/no/yes/false/true as booleans
            spellings = ("true", "on", "yes") if value else ("false", "off", "no")
            text = next((a for a in spellings if a in allowed), None)
        if isinstance(text, str) and text in allowed:
            return text
        problems.append(f"{key}: {value!r} is not one of {', '.join(allowed)}")
        return None
    if origin is list:
        (inner,) = typing.get_args(typ)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # key=2 on the command line: a list of one number
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


SECTIONS = ("data", "model", "loss", "tracking")
"""The sections with rules of their own beyond each key's range (``problems()``)."""


@functools.cache
def numeric_keys(cls: type | None = None, prefix: str = "") -> dict[str, tuple[type, type, str]]:
    """``{dotted key: (its section class, int or float, field name)}`` for every int and float
    field (and list of them) in the tree under ``cls`` (default ``RunConfig``); each must
    have a ``Range`` in its section's ``RANGES``. Computed once: do not change the dict."""
    cls = cls or RunConfig
    out: dict[str, tuple[type, type, str]] = {}
    for name, hint in typing.get_type_hints(cls).items():
        if typing.get_origin(hint) is ClassVar:
            continue
        if dataclasses.is_dataclass(hint):
            out.update(numeric_keys(hint, f"{prefix}{name}."))
            continue
        inner = typing.get_args(hint)[0] if typing.get_origin(hint) is list else hint
        if inner in (int, float):
            out[f"{prefix}{name}"] = (cls, inner, name)
    return out


def range_of(key: str) -> Range:
    """The declared range of a numeric key (``numeric_keys``)."""
    cls, _, name = numeric_keys()[key]
    ranges = getattr(cls, "RANGES", {})
    if name not in ranges:  # internal: a new numeric field needs its range
        raise TypeError(f"config key {key} has no Range in {cls.__name__}.RANGES")
    return ranges[name]


def range_problems(cfg: RunConfig) -> list[str]:
    """Every numeric key outside its ``Range`` (NaN and infinities included), whatever the
    modality: ``train.lr=nan: must be a finite number in (0, 100]``."""
    p = []
    for key, (_, kind, _) in numeric_keys().items():
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part)
        r = range_of(key)
        if isinstance(node, list):
            if not all(r.admits(v) for v in node):
                p.append(f"{key}={','.join(map(str, node))}: each must be {r.describe(kind)}")
        elif not r.admits(node):
            p.append(f"{key}={node!r}: must be {r.describe(kind)}")
    return p


ConfigCheck = Callable[["RunConfig"], list[str]]
"""A check a higher layer adds (the model registry's: ``training.models.config_problems``)."""


def validate(cfg: RunConfig, require_train: bool = True) -> list[str]:
    """Each numeric key's range, each section's own problems, then the rules that cross
    sections."""
    p = range_problems(cfg)
    p += [problem for name in SECTIONS for problem in getattr(cfg, name).problems()]
    d, t, lo = cfg.data, cfg.train, cfg.loss
    if require_train and not d.train:
        p.append("data.train: no training data; pass --train PATH (file, directory or glob)")
    if require_train and d.layout in ("hpdv2", "videogen-rewardbench"):
        p.append(f"data.layout={d.layout}: a benchmark annotation format that only `evaluate` "
                 "reads; train on Parquet shards (canonical or pickapic)")
    if cfg.ties != "soft" and (cfg.eval.tie_validation or d.layout == "videogen-rewardbench"):
        p.append("ties=soft is needed to keep the tied pairs the accuracy with ties is "
                 "measured on (eval.tie_validation, data.layout=videogen-rewardbench); "
                 "add ties=soft")
    if cfg.ties == "soft" and lo.type not in ("bt", "dpo", "btt", "uncertainty"):
        p.append(f"ties=soft needs a logistic loss (bt, dpo, btt or uncertainty), not "
                 f"loss.type={lo.type!r}")
    p += _head_loss_problems(cfg.model, lo)
    names = scorer_catalog.names(cfg.modality)
    if cfg.model.name not in names:
        p.append(f"model.name: {cfg.model.name!r} is not one of the {cfg.modality} scorers "
                 f"{', '.join(names)}")
    if cfg.modality != "video" and lo.temporal_weight != 0:
        p.append("loss.temporal_weight: the temporal-consistency prior is for modality=video")
    selection = t.selection(d.val_fraction)
    if selection != "last" and d.val_fraction <= 0:
        p.append(f"train.select_by={t.select_by} needs a validation split: set "
                 "data.val_fraction (e.g. 0.1)")
    elif selection == "val/loss" and lo.type == "dpo":
        p.append("train.select_by=val/loss: the dpo loss needs reference scores that the "
                 "validation split does not have; use val/accuracy")
    if t.patience > 0 and selection == "last":
        p.append("train.patience: early stopping needs a validation metric: set "
                 "data.val_fraction and train.select_by")
    if t.strategy == "fsdp" and t.ema_decay > 0:
        p.append("train.ema_decay: not with train.strategy=fsdp yet (the average would be a "
                 "full copy on every worker); set train.ema_decay=0 or use ddp")
    if t.strategy == "fsdp" and t.compile:
        p.append("train.compile: not with train.strategy=fsdp yet; set train.compile=false")
    if cfg.tracking.resume and cfg.incremental:
        p.append("--resume and --incremental do not go together: resume the incremental run by id")
    return p


def _head_loss_problems(m: ModelConfig, lo: LossConfig) -> list[str]:
    """The objectives each ``model.head`` trains with."""
    p = []
    if lo.type == "uncertainty" and m.head != "mu_sigma":
        p.append("loss.type=uncertainty needs model.head=mu_sigma (it reads each item's sigma)")
    if m.head == "mu_sigma" and lo.type != "uncertainty":
        p.append(f"model.head=mu_sigma: only loss.type=uncertainty trains sigma; with "
                 f"loss.type={lo.type} it would stay at its initial value. Set "
                 "loss.type=uncertainty, or model.head=score")
    if m.head == "named" and lo.type == "dpo":
        p.append("model.head=named: loss.type=dpo would need the reference's score per head; "
                 "use bt or btt")
    if m.head == "named" and lo.temporal_weight:
        p.append("loss.temporal_weight: not with model.head=named (which heads would the prior "
                 "join?); set loss.temporal_weight=0 or model.head=score")
    return p


def modality_defaults(modality: str) -> dict[str, Any]:
    """Defaults that differ by modality (below the YAML file in precedence)."""
    if modality == "video":
        return {"modality": "video", "model": {"name": scorer_catalog.DEFAULT_SCORER["video"]},
                "data": {"image_size": 64},
                "tracking": {"experiment": "video-dpo", "model_name": "video-scorer"}}
    return {"modality": modality}


def load_config(
    path: str | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    require_train: bool = True,
    modality: str = "image",
    checks: Sequence[ConfigCheck] = (),
) -> RunConfig:
    """Modality defaults < YAML file < ``extra`` (from CLI flags) < ``key=value`` overrides;
    validated, with ``checks`` from the layers above (all problems reported together)."""
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
    problems += [p for check in checks for p in check(cfg)]
    if problems:
        raise ConfigError(problems)
    return cfg


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
