"""open_clip scorers and pretrained-weight loading.

``ClipScorer`` is open_clip's ``CLIP`` (random init: nothing downloads) scoring a
``(prompt, image)`` pair PickScore-style, ``logit_scale.exp() * cos(image_emb, text_emb)``.
Its parameter names are open_clip's own (``visual.*``, ``transformer.*``, ``logit_scale``), so
an open_clip checkpoint loads into it unchanged (``load_pretrained``).

``load_backbone_weights`` loads a torchvision state dict (ImageNet ResNet-18, Kinetics R3D-18)
into a scorer that wraps the torchvision model, keeping the scorer's new 1-output head.

Weights are read from a local path or a URI that ``pyarrow.fs`` opens (``s3://``, ``gs://``,
``file://``); ``s3://`` honours ``AWS_ENDPOINT_URL`` (MinIO and other S3-compatible stores).
"""

from __future__ import annotations

import copy
import functools
import inspect
import io
import json
import logging
import os

import numpy as np
import torch
from torch import Tensor, nn

from ..config import SCORE_SCALES

# What the data pipeline normalises with (to_model_input): ImageNet statistics.
from .models import MEAN as _IMAGENET_MEAN
from .models import STD as _IMAGENET_STD
from .models import check_image_text_inputs


def _import_open_clip():
    """Import open_clip and undo what its import does to the environment
    (``TOKENIZERS_PARALLELISM=false``, for Hugging Face tokenizers, which this module refuses;
    ``TORCHINDUCTOR_CACHE_DIR``, which timm's import of torch._inductor sets), so importing
    this module changes no process-wide setting."""
    before = dict(os.environ)
    import open_clip
    import open_clip.constants

    for key in set(os.environ) - set(before):
        del os.environ[key]
    for key, value in before.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
    return open_clip


open_clip = _import_open_clip()
OPENAI_DATASET_MEAN = open_clip.constants.OPENAI_DATASET_MEAN
OPENAI_DATASET_STD = open_clip.constants.OPENAI_DATASET_STD
log = logging.getLogger(__name__)


_HF_KEYS = ("hf_tokenizer_name", "hf_model_name")
_ARCH_HELP = ("pass the name of one of open_clip's built-in model configs (e.g. 'ViT-B-32', "
              "'ViT-L-14', 'ViT-H-14'; open_clip.list_models() lists them) or the path of a "
              "JSON file in open_clip's model-config format (keys embed_dim, vision_cfg, "
              "text_cfg) whose text tower is open_clip's own")


# --- reading weights ------------------------------------------------------------------------

def _is_uri(path: str) -> bool:
    return "://" in str(path)


def _read_bytes(uri: str) -> bytes:
    from ..runtime import storage  # AWS_ENDPOINT_URL and credentials, as for run state

    return storage.read_bytes(uri)


def _read_state_dict(path: str) -> dict[str, Tensor]:
    """A state dict from a ``torch.save`` file (plain, or ``{"state_dict": ...}``) or a
    ``.safetensors`` file, local or behind a URI; a leading ``module.`` (DDP) is stripped."""
    path = str(path)
    try:
        if path.endswith(".safetensors"):
            import safetensors.torch  # an open_clip dependency

            if _is_uri(path):
                checkpoint = safetensors.torch.load(_read_bytes(path))
            else:
                checkpoint = safetensors.torch.load_file(path, device="cpu")
        else:
            source = io.BytesIO(_read_bytes(path)) if _is_uri(path) else path
            checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    except (FileNotFoundError, OSError) as e:
        raise ValueError(f"cannot read weights from {path}: {e}") from e
    except Exception as e:  # unpickling refused (weights_only), corrupt file, ...
        raise ValueError(f"{path} is not a readable state dict (torch.save or .safetensors, "
                         f"loaded with weights_only=True): {type(e).__name__}: {e}") from e
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ValueError(f"{path} holds no state dict (a dict of tensors, or "
                         f"{{'state_dict': ...}}), but {type(checkpoint).__name__}")
    bad = [k for k, v in checkpoint.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{path}: not a state dict, non-tensor entries {bad[:5]}")
    if all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module."):]: v for k, v in checkpoint.items()}
    return dict(checkpoint)


def _few(keys, n: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


# --- the CLIP scorer -------------------------------------------------------------------------

def clip_config(arch: str) -> dict:
    """open_clip's model config for ``arch``: a built-in config name, or a JSON file
    (local path or URI) in open_clip's model-config format. Refuses configs whose text tower
    or tokenizer comes from Hugging Face (they would download)."""
    if not isinstance(arch, str) or not arch:
        raise ValueError(f"model.arch is {arch!r}: {_ARCH_HELP}")
    if arch in open_clip.list_models():
        cfg = open_clip.get_model_config(arch)
        source = f"open_clip's built-in config {arch!r}"
    elif arch.endswith(".json") or os.path.isfile(arch) or _is_uri(arch):
        try:
            if _is_uri(arch):
                text = _read_bytes(arch).decode("utf-8")
            else:
                with open(arch, encoding="utf-8") as f:
                    text = f.read()
            cfg = json.loads(text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read the open_clip model config {arch}: {e}; "
                             f"{_ARCH_HELP}") from e
        if isinstance(cfg, dict) and isinstance(cfg.get("model_cfg"), dict):
            cfg = cfg["model_cfg"]  # an open_clip_config.json (hub layout)
        source = f"the model config {arch}"
    else:
        raise ValueError(f"unknown CLIP architecture {arch!r}: {_ARCH_HELP}")
    if not isinstance(cfg, dict) or not all(
            isinstance(cfg.get(k), d) for k, d in
            (("embed_dim", int), ("vision_cfg", dict), ("text_cfg", dict))):
        raise ValueError(f"{source} is not an open_clip model config (it needs embed_dim, "
                         f"vision_cfg and text_cfg): {_ARCH_HELP}")
    cfg = copy.deepcopy(cfg)
    hf = [k for k in _HF_KEYS if cfg["text_cfg"].get(k)]
    if hf:
        named = ", ".join(f"{k}={cfg['text_cfg'][k]!r}" for k in hf)
        raise ValueError(f"{source} uses a Hugging Face text tower or tokenizer "
                         f"({named}), which "
                         f"would download at build time; {_ARCH_HELP}")
    if cfg.get("custom_text") or "multimodal_cfg" in cfg:
        raise ValueError(f"{source} is a CustomTextCLIP/CoCa model (custom_text or "
                         f"multimodal_cfg), which the clip scorer does not build; {_ARCH_HELP}")
    cfg.pop("custom_text", None)
    allowed = set(inspect.signature(open_clip.CLIP.__init__).parameters) - {
        "self", "cast_dtype", "output_dict"}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"{source} has keys open_clip's CLIP does not take: {unknown} "
                         f"(it takes {sorted(allowed)})")
    if cfg["vision_cfg"].get("timm_model_name"):
        cfg["vision_cfg"]["timm_model_pretrained"] = False  # random init: nothing downloads
    _square_size(cfg, source)
    return cfg


def _square_size(cfg: dict, source: str = "the model config") -> int:
    size = cfg["vision_cfg"].get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"{source}: vision_cfg.image_size {size} is not square; the "
                             f"scorer feeds square images (data.image_size)")
        size = size[0]
    return int(size)


class ClipScorer(open_clip.CLIP):
    """open_clip's ``CLIP`` as a ``(prompt, image)`` scorer: ``forward(x, tokens)`` ->
    ``(N,)`` ``logit_scale.exp() * cos(image_emb, text_emb)`` (plus ``logit_bias`` when the
    config has one), as PickScore scores; with ``score_scale="none"`` the plain cosine, as
    HPSv2 scores (tgxs002/HPSv2 ``hpsv2/img_score.py``: the diagonal of
    ``image_features @ text_features.T``, both normalised).

    ``x``: ``(N, 3, image_size, image_size)`` float normalised with ImageNet statistics, as the
    data pipeline does; converted here to CLIP's normalisation. ``tokens``: ``(N,
    context_length)`` from :func:`tokenize`. A subclass rather than a wrapper so the parameter
    names (and so checkpoints) are open_clip's own.
    """

    takes_prompt = True
    head_prefixes = ("logit_scale",)

    def __init__(self, model_cfg: dict, score_scale: str = "logit_scale") -> None:
        if score_scale not in SCORE_SCALES:
            raise ValueError(f"score_scale must be one of {SCORE_SCALES}, got {score_scale!r}")
        cfg = copy.deepcopy(model_cfg)
        if cfg.get("custom_text") or "multimodal_cfg" in cfg or any(
                cfg.get("text_cfg", {}).get(k) for k in _HF_KEYS):
            raise ValueError("ClipScorer builds open_clip's CLIP with its own text tower; "
                             "get the config from clip_config(arch)")
        cfg.pop("custom_text", None)
        if cfg.get("vision_cfg", {}).get("timm_model_name"):
            cfg["vision_cfg"]["timm_model_pretrained"] = False
        super().__init__(**cfg)
        self.model_cfg = copy.deepcopy(model_cfg)
        self.score_scale = score_scale
        self.image_size: int = _square_size(cfg)
        self.context_length: int = int(cfg["text_cfg"].get("context_length", 77))
        # ImageNet-normalised -> CLIP-normalised, as one affine map: x * a + b.
        in_mean, in_std = torch.tensor(_IMAGENET_MEAN), torch.tensor(_IMAGENET_STD)
        clip_mean, clip_std = torch.tensor(OPENAI_DATASET_MEAN), torch.tensor(OPENAI_DATASET_STD)
        self.register_buffer("_norm_scale", (in_std / clip_std).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("_norm_shift", ((in_mean - clip_mean) / clip_std).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:  # type: ignore[override]
        check_image_text_inputs(x, tokens, self.image_size, "ClipScorer",
                                "vision_cfg.image_size")
        x = x * self._norm_scale.to(x.dtype) + self._norm_shift.to(x.dtype)
        image = self.encode_image(x, normalize=True)
        text = self.encode_text(tokens.long(), normalize=True)
        cosine = (image * text).sum(-1)
        if self.score_scale == "none":
            return cosine.reshape(-1)
        score = self.logit_scale.exp() * cosine
        if self.logit_bias is not None:
            score = score + self.logit_bias
        return score.reshape(-1)


def load_pretrained(model: ClipScorer, path: str) -> None:
    """Load an open_clip checkpoint (``torch.save`` state dict, ``{"state_dict": ...}`` or
    ``.safetensors``; local path or URI) into ``model``, strictly."""
    sd = _read_state_dict(path)
    own = model.state_dict()
    # As open_clip's load_checkpoint: a scalar vs 1-element logit_scale/logit_bias is the same.
    for k in ("logit_scale", "logit_bias"):
        if k in sd and k in own and sd[k].numel() == own[k].numel() == 1:
            sd[k] = sd[k].reshape(own[k].shape)
    missing = set(own) - set(sd)
    unexpected = set(sd) - set(own)
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
              for k in sorted(set(sd) & set(own)) if sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches (checkpoint vs model): {_few(shapes, 3)}")
        raise ValueError(f"the checkpoint {path} does not match model.arch (the open_clip "
                         f"architecture this scorer was built from): {'; '.join(parts)}")
    model.load_state_dict(sd, strict=True)
    log.info("loaded %d tensors from %s", len(sd), path)


@functools.lru_cache(maxsize=1)
def _tokenizer() -> open_clip.SimpleTokenizer:
    # The BPE vocabulary ships inside the open_clip wheel: nothing downloads.
    return open_clip.SimpleTokenizer()


def tokenize(texts: list[str], context_length: int) -> np.ndarray:
    """``int32 (N, context_length)`` CLIP tokens (open_clip's SimpleTokenizer: start token,
    BPE, end token, zero padding, truncated to fit). ``None`` or ``""`` -> the empty prompt."""
    texts = ["" if t is None else str(t) for t in texts]
    if not texts:
        return np.zeros((0, int(context_length)), dtype=np.int32)
    tokens = _tokenizer()(texts, context_length=int(context_length))
    return tokens.numpy().astype(np.int32)


# --- torchvision backbones -------------------------------------------------------------------

def load_backbone_weights(model: nn.Module, path: str, head_prefixes: tuple[str, ...]) -> None:
    """Load a torchvision state dict (e.g. ImageNet ``resnet18``, Kinetics ``r3d_18``) into a
    scorer wrapping that model (parameters ``net.*``); checkpoint keys may lack ``net.``.

    Head tensors (names starting with one of ``head_prefixes``) whose shapes differ, or that
    the checkpoint lacks, keep the scorer's own (its 1-output head); every other tensor must
    be present with the same shape, and the checkpoint may hold nothing else."""
    sd = _read_state_dict(path)
    own = model.state_dict()
    prefixes = tuple(head_prefixes)
    mapped: dict[str, Tensor] = {}
    unexpected = []
    for k, v in sd.items():
        name = k if k in own else next(
            (p + k for p in ("net.",) if p + k in own), None)
        if name is None:
            unexpected.append(k)
        else:
            mapped[name] = v

    def is_head(k: str) -> bool:
        return bool(prefixes) and k.startswith(prefixes)

    # Old checkpoints (torchvision's own ImageNet files) lack BatchNorm's num_batches_tracked.
    missing = [k for k in own if k not in mapped and not is_head(k)
               and not k.endswith("num_batches_tracked")]
    skipped = [k for k, v in mapped.items() if is_head(k) and v.shape != own[k].shape]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in mapped.items()
              if not is_head(k) and v.shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"shape mismatches (checkpoint vs model): {_few(shapes, 3)}")
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        raise ValueError(f"the backbone weights {path} do not match this scorer's "
                         f"architecture: {'; '.join(parts)}")
    to_load = {k: v for k, v in mapped.items() if k not in skipped}
    model.load_state_dict(to_load, strict=False)
    log.info("loaded %d tensors from %s; kept the scorer's own %d head tensors (%s)",
             len(to_load), path, len(own) - len(to_load),
             _few([k for k in own if k not in to_load]) or "none")
