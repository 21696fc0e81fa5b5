"""Hugging Face CLIP-family scorers (``model.name=hf-clip``): transformers' ``CLIPModel`` or
``SiglipModel`` from a checkpoint directory in the Hugging Face layout (``config.json``,
``model.safetensors``, tokenizer and processor files), e.g. PickScore.

``HfClipScorer`` scores a ``(prompt, image)`` pair as the checkpoint's publisher does:
PickScore (yuvalkirstain/PickScore README) ``logit_scale.exp() * cos(image_emb, text_emb)``;
SigLIP adds its ``logit_bias``, as ``SiglipModel.forward`` computes its logits;
``score_scale="none"`` gives the plain cosine.

What travels with the weights (``hf_clip_options``, stored in ``scorer.json``): the model
config as a dict, the processor's normalisation, the score scale and the tokenizer (as
``tokenizers``' JSON, which also becomes the decode contract's ``MediaSpec.tokenizer``). A
consumer rebuilds the scorer from those alone: no model directory, no download.

Nothing downloads: the directory is read with ``local_files_only=True``; an object-store URI
(``s3://``, ``gs://``) is copied to a temporary local directory first (runtime/storage.py).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..config import SCORE_SCALES
from .models import MEAN as _IMAGENET_MEAN
from .models import STD as _IMAGENET_STD
from .models import check_image_text_inputs

log = logging.getLogger(__name__)

FAMILIES = {"clip": "CLIPModel", "siglip": "SiglipModel"}
"""``config.json``'s ``model_type`` -> the transformers class that scores it."""
# What building the scorer reads (model config, tokenizer, processor) and what its weights are.
_SETUP_FILES = ("config.json", "preprocessor_config.json", "processor_config.json",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "vocab.json", "merges.txt", "spiece.model", "added_tokens.json")
_WEIGHT_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")


def _import_transformers():
    """transformers, imported when an ``hf-clip`` scorer is first built or read (the ``hf``
    extra), never when this module is."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError(f"model.name=hf-clip needs transformers, tokenizers and safetensors "
                          f"(pip install 'visual-dpo[hf]'): {e}") from e
    return transformers


@contextlib.contextmanager
def local_directory(path: str, names: Sequence[str]) -> Iterator[str]:
    """``path`` itself when local; for a URI, a temporary directory holding the files of
    ``names`` that exist there (and the shards a ``model.safetensors.index.json`` names)."""
    if "://" not in str(path):
        yield str(path)
        return
    from ..runtime import storage

    with tempfile.TemporaryDirectory(prefix="hf-clip-") as d:
        wanted = list(names)
        while wanted:
            name = wanted.pop(0)
            source = storage.join(path, name)
            if not storage.exists(source):
                continue
            data = storage.read_bytes(source)
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
            if name == "model.safetensors.index.json":
                wanted += sorted(set(json.loads(data)["weight_map"].values()))
        yield d


def _read_config(directory: str, source: str):
    t = _import_transformers()
    try:
        config = t.AutoConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"{source}: cannot read config.json as a transformers model config "
                         f"({e}); model.pretrained must be a Hugging Face model directory") from e
    if config.model_type not in FAMILIES:
        raise ValueError(f"{source}: config.json has model_type {config.model_type!r}; "
                         f"model.name=hf-clip scores {', '.join(FAMILIES)} models")
    return config


def hf_clip_options(path: str, score_scale: str = "logit_scale") -> dict[str, Any]:
    """The construction options of an ``hf-clip`` scorer from the directory (or URI) ``path``:
    ``{"hf_config", "image_mean", "image_std", "score_scale", "tokenizer"}``, all plain JSON,
    so they travel with the weights."""
    t = _import_transformers()
    with local_directory(path, _SETUP_FILES) as d:
        config = _read_config(d, path)
        try:
            tokenizer = t.AutoTokenizer.from_pretrained(d, local_files_only=True)
            processor = t.AutoImageProcessor.from_pretrained(d, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot load the tokenizer or the image processor "
                             f"({e}); the directory needs the checkpoint's tokenizer files "
                             "(tokenizer.json, or vocab.json + merges.txt) and "
                             "preprocessor_config.json, e.g. from the model it was fine-tuned "
                             "from") from e
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ValueError(f"{path}: the tokenizer {type(tokenizer).__name__} has no "
                         "tokenizers backend (tokenizer.json) to ship with the model")
    rescale = getattr(processor, "rescale_factor", 1 / 255) if getattr(
        processor, "do_rescale", True) else 1.0
    if abs(rescale - 1 / 255) > 1e-9:
        raise ValueError(f"{path}: the image processor rescales pixels by {rescale}, not "
                         "1/255; the data pipeline feeds pixels in [0, 1]")
    normalize = getattr(processor, "do_normalize", True)
    mean = list(processor.image_mean) if normalize else [0.0, 0.0, 0.0]
    std = list(processor.image_std) if normalize else [1.0, 1.0, 1.0]
    context = int(config.text_config.max_position_embeddings)
    return {"hf_config": _without_paths(json.loads(config.to_json_string(use_diff=False))),
            "image_mean": [float(v) for v in mean], "image_std": [float(v) for v in std],
            "score_scale": score_scale,
            "tokenizer": tokenizer_json(tokenizer, context)}


def _without_paths(config: dict[str, Any]) -> dict[str, Any]:
    """The config without where it was read from (``_name_or_path``, here and in the
    sub-configs): options that name a local path would differ by machine."""
    return {k: _without_paths(v) if isinstance(v, dict) else v
            for k, v in config.items() if k != "_name_or_path"}


def tokenizer_json(tokenizer: Any, context_length: int) -> str:
    """The tokenizer's ``tokenizers`` backend as JSON, set to truncate and pad every prompt to
    exactly ``context_length`` ids with its pad token (its end-of-text token when it has none),
    as the processor does with ``padding="max_length", truncation=True,
    max_length=context_length``."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a copy to configure
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
        tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad token nor an end-of-text token")
    backend.enable_truncation(max_length=context_length)
    backend.enable_padding(length=context_length, pad_id=int(pad_id),
                           pad_token=tokenizer.convert_ids_to_tokens(int(pad_id)))
    return backend.to_str()


def image_size(options: dict[str, Any]) -> int:
    """The square side the vision tower takes (``vision_config.image_size``)."""
    return int(options["hf_config"]["vision_config"]["image_size"])


class HfClipScorer(nn.Module):
    """transformers' ``CLIPModel`` / ``SiglipModel`` (``net``) as a ``(prompt, image)``
    scorer: ``forward(x, tokens)`` -> ``(N,)`` scores.

    ``x``: ``(N, 3, S, S)`` float normalised with ImageNet statistics, as the data pipeline
    does; converted here to the processor's normalisation (``image_mean``/``image_std``).
    ``tokens``: ``(N, context_length)`` ids from the checkpoint's tokenizer (``tokenize``),
    padded to ``context_length``. No attention mask, as SigLIP is used; for CLIP the pooled
    text feature is read at the end-of-text token, which a causal mask keeps from seeing the
    padding after it, so the padding changes nothing.
    """

    takes_prompt = True
    head_prefixes = ("net.logit_scale", "net.logit_bias")

    def __init__(self, hf_config: dict[str, Any], image_mean: Sequence[float],
                 image_std: Sequence[float], tokenizer: str,
                 score_scale: str = "logit_scale") -> None:
        super().__init__()
        if score_scale not in SCORE_SCALES:
            raise ValueError(f"score_scale must be one of {SCORE_SCALES}, got {score_scale!r}")
        family = hf_config.get("model_type")
        if family not in FAMILIES:
            raise ValueError(f"hf_config.model_type is {family!r}; one of {', '.join(FAMILIES)}")
        t = _import_transformers()
        config = getattr(t, FAMILIES[family]).config_class.from_dict(copy.deepcopy(hf_config))
        self.net = getattr(t, FAMILIES[family])(config)  # random init: nothing downloads
        self.family = family
        self.score_scale = score_scale
        self.tokenizer_json = tokenizer
        self.image_size = int(hf_config["vision_config"]["image_size"])
        self.context_length = int(config.text_config.max_position_embeddings)
        # ImageNet-normalised -> the processor's normalisation, as one affine map: x * a + b.
        in_mean, in_std = torch.tensor(_IMAGENET_MEAN), torch.tensor(_IMAGENET_STD)
        mean, std = torch.tensor(list(image_mean)), torch.tensor(list(image_std))
        self.register_buffer("_norm_scale", (in_std / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_norm_shift", ((in_mean - mean) / std).view(1, 3, 1, 1),
                             persistent=False)

    def tokenize(self, prompts: Sequence[object]) -> Tensor:
        """``(N, context_length)`` int64 ids, as the decode actors tokenise (media/text.py)."""
        from ..media.text import hf_ids

        return torch.from_numpy(hf_ids(prompts, self.context_length,
                                       self.tokenizer_json).astype(np.int64))

    def embeddings(self, pixel_values: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """L2-normalised ``(image, text)`` embeddings of processor-normalised pixels."""
        image = _features(self.net.get_image_features(pixel_values=pixel_values))
        text = _features(self.net.get_text_features(input_ids=tokens.long()))
        return (image / image.norm(dim=-1, keepdim=True),
                text / text.norm(dim=-1, keepdim=True))

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        check_image_text_inputs(x, tokens, self.image_size, "HfClipScorer",
                                "vision_config.image_size")
        x = x * self._norm_scale.to(x.dtype) + self._norm_shift.to(x.dtype)
        image, text = self.embeddings(x, tokens)
        cosine = (image * text).sum(-1)
        if self.score_scale == "none":
            return cosine
        score = self.net.logit_scale.exp() * cosine
        if self.family == "siglip":
            score = score + self.net.logit_bias
        return score.reshape(-1)


def _features(out: Any) -> Tensor:
    """``get_*_features`` return a tensor, or (transformers 5) an output whose
    ``pooler_output`` is the projected embedding."""
    return out if isinstance(out, Tensor) else out.pooler_output


def pretrained_state_dict(path: str, options: dict[str, Any]) -> dict[str, Tensor]:
    """The weights of the directory (or URI) ``path`` as ``HfClipScorer``'s state dict,
    loaded by transformers' own ``from_pretrained`` (``local_files_only=True``); raises when
    the checkpoint lacks weights of the architecture or is another architecture."""
    t = _import_transformers()
    family = options["hf_config"]["model_type"]
    with local_directory(path, _WEIGHT_FILES) as d:
        config = _read_config(d, path)
        if config.model_type != family:
            raise ValueError(f"{path}: config.json is a {config.model_type} model, the run "
                             f"was set up for {family}")
        try:
            model, info = getattr(t, FAMILIES[family]).from_pretrained(
                d, local_files_only=True, output_loading_info=True, dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot load the weights ({e}); the directory needs "
                             "model.safetensors (or a sharded index) next to config.json") from e
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if bad:
        raise ValueError(f"{path}: the weights do not match config.json: "
                         + "; ".join(f"{k}: {sorted(map(str, v))[:5]}" for k, v in bad.items()))
    log.info("loaded %s weights from %s", FAMILIES[family], path)
    return {f"net.{k}": v for k, v in model.state_dict().items()}
