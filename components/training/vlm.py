"""Vision-language reward models (``model.name=vlm`` for images, ``vlm-video`` for clips):
transformers' Qwen2-VL / Qwen2.5-VL / Qwen3-VL with a reward head on the hidden state at special tokens,
as HPSv3 (MizzenAI/HPSv3) and VideoAlign (KwaiVGI/VideoAlign) score.

    s = head(h[<|Reward|>])                  HPSv3: an MLP, outputs (mu, log sigma)
    s_k = head(h[<|k_reward|>]), k in VQ/MQ/TA  VideoAlign: one Linear at three tokens

``h`` is the language model's last hidden state over the checkpoint's own chat template:
``<system> <user> <|vision_start|> media <|vision_end|> instruction(prompt) ... <|Reward|> ...``.

Where the work happens (why): the decode actors produce what the processor would resize to,
uint8 ``(3, S, S)`` images or ``(3, T, S, S)`` clips sampled at ``data.video.fps`` /
``data.video.frames`` (so a clip's length never changes how many frames the model sees), and
tokenise the conversation with the checkpoint's tokenizer (media/vlm_text.py), one media
placeholder per item (Qwen3-VL clips: every media token, each frame group after its time,
``_timed_clip``). The processor's float work (rescale, normalise, cut into
``patch x patch x temporal`` patches) runs here, on the training device: it is a reshape of
the uint8 batch that is already there, and doing it in the actors would ship 4-byte floats
through the object store. ``S`` is the pixel budget: ``S*S`` within the processor's
``[min_pixels, max_pixels]`` and a multiple of ``patch_size * merge_size`` (HPSv3: 448, its
``256*28*28``), so the processor's ``smart_resize`` would leave it as it is. Images are
centre-cropped square by the decode contract, where HPSv3's processor keeps the aspect ratio.

Positions: both publishers call the language model with ``inputs_embeds`` and no
``position_ids``, which gives every token (media included) sequential positions in all three
M-RoPE sections; this scorer does the same, so published checkpoints score as published.

Checkpoint layouts ``model.pretrained`` reads (a local Hugging Face Qwen2-VL directory:
``config.json``, tokenizer and processor files; nothing downloads):

- ``hpsv3``: the directory also holds ``HPSv3.safetensors`` (the reward model's state dict,
  ``visual.* / model.* / rm_head.*``, or transformers >= 4.52's ``model.visual.* /
  model.language_model.*``): HPSv3's instruction and ``<|Reward|>``, its ``ranknet`` head
  ``Linear(h, 1024) ReLU Dropout Linear(1024, 16) ReLU Linear(16, 2)``; ``model.head=mu_sigma``.
- ``videoalign``: the directory also holds VideoAlign's ``model_config.json`` and
  ``checkpoint-N/`` (``adapter_model.safetensors`` LoRA + ``non_lora_state_dict.pth``) next to
  the base model's ``model.safetensors``: the LoRA is merged, the heads' normalisation
  (``inference_config``) kept; ``model.head=named``, ``model.head_names=VQ,MQ,TA``.
- ``plain``: a Qwen2-VL model (``model.safetensors``): a short instruction (vlm_prompts.py)
  around HPSv3's token, a new head (HPSv3's MLP shape).
"""

from __future__ import annotations

import copy
import glob
import json
import logging
import os
from typing import Any

import torch
from torch import Tensor, nn

from .models import MEAN as _IMAGENET_MEAN
from .models import SCORE, RewardHead
from .models import STD as _IMAGENET_STD

log = logging.getLogger(__name__)

FAMILIES = {"qwen2_vl": "Qwen2VLModel", "qwen2_5_vl": "Qwen2_5_VLModel",
            "qwen3_vl": "Qwen3VLModel"}
"""``config.json``'s ``model_type`` -> the transformers backbone (vision tower + language
model, no LM head). Qwen3-VL's vision tower also returns DeepStack features, added to the
first language-model layers' outputs at the media tokens (``hidden_states``)."""
TIMED_CLIPS = ("qwen3_vl",)
"""Families whose processor writes a clip as timed frame groups, ``<t seconds>
<|vision_start|> media <|vision_end|>`` each: their conversation holds every media token
(``_timed_clip``), where the others hold one placeholder the model expands."""
NOT_YET = {"qwen3_vl_moe": "the Qwen3-VL mixture-of-experts models are not supported yet (their "
           "expert layers are untested here)"}
PROMPT_TOKENS = 128  # prompt ids per conversation beyond the template (longer ones are cut)
_MLP_HIDDEN = (1024, 16)  # HPSv3's default ranknet head (hpsv3/model/qwen2vl_trainer.py)


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError(f"model.name=vlm needs transformers, tokenizers and safetensors "
                          f"(pip install 'visual-dpo[hf]'): {e}") from e
    return transformers


def layout(path: str) -> str:
    """``hpsv3``, ``videoalign`` or ``plain``: which published layout the directory holds."""
    if os.path.isfile(os.path.join(path, "HPSv3.safetensors")):
        return "hpsv3"
    if os.path.isfile(os.path.join(path, "model_config.json")) and glob.glob(
            os.path.join(path, "checkpoint-*")):
        return "videoalign"
    return "plain"


def directory_problems(path: str, video: bool, size: int, frames: int,
                       head: RewardHead, fps: float = 0.0) -> list[str]:
    """What keeps a local directory from being a ``vlm`` scorer at ``data.image_size=size``
    (and ``frames`` per clip sampled at ``fps``): family, pixel budget, layout and head. A URI
    is checked when the run reads it."""
    if "://" in path:
        return [f"model.pretrained: {path} is a URI; model.name=vlm reads a local directory "
                "(its several weight files are not copied from object storage yet): copy it "
                "to local disk first"]
    if not path or not os.path.isfile(os.path.join(path, "config.json")):
        return []
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        family = config.get("model_type")
        vision = config.get("vision_config", {})
    except (OSError, ValueError, AttributeError) as e:
        return [f"model.pretrained: {path}/config.json is not readable ({e})"]
    if family in NOT_YET:
        return [f"model.pretrained: {path} is a {family} model; {NOT_YET[family]}. Use a "
                f"Qwen2-VL, Qwen2.5-VL or dense Qwen3-VL checkpoint ({', '.join(FAMILIES)})"]
    if family not in FAMILIES:
        return [f"model.pretrained: {path}/config.json has model_type {family!r}; model.name="
                f"vlm scores {', '.join(FAMILIES)} models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL)"]
    p = []
    timed = video and family in TIMED_CLIPS
    if timed and not fps > 0:
        p.append(f"data.video.fps: 0 (frames spread over the whole clip), but {path} is a "
                 f"{family} model, whose prompt gives each frame group its time in seconds: "
                 "sample at a fixed rate, e.g. data.video.fps=2 (VideoAlign's rate)")
    p += _size_problems(path, vision, size, frames if timed else 0)
    temporal = int(vision.get("temporal_patch_size", 2))
    if video and frames % temporal:
        p.append(f"data.video.frames: {frames}, but the vision tower takes frames in groups "
                 f"of {temporal}; set a multiple of {temporal}")
    kind = layout(path)
    want = {"hpsv3": ("mu_sigma", 2), "videoalign": ("named", 3)}.get(kind)
    if want and (head.kind, head.width) != want:
        p.append(f"model.head: {path} holds a {kind} reward model, whose head is "
                 f"{want[0]} with {want[1]} outputs; set model.head={want[0]}"
                 + (" model.head_names=VQ,MQ,TA" if kind == "videoalign" else ""))
    return p


def _size_problems(path: str, vision: dict[str, Any], size: int, clip_frames: int) -> list[str]:
    """``data.image_size`` against the processor's pixel budget: an image's, or with
    ``clip_frames`` (Qwen3-VL's video processor) a whole clip's, frames included."""
    factor = int(vision.get("patch_size", 14)) * int(vision.get("spatial_merge_size", 2))
    low, high = _pixel_budget(path)
    if clip_frames:
        low, high = _clip_pixel_budget(path)
        low, high = -(-low // clip_frames), high // clip_frames
    if size % factor or not low <= size * size <= high:
        return [f"data.image_size: {size}, but {path} takes a side that is a multiple of "
                f"{factor} with side^2 in [{low}, {high}] pixels (its processor's min/max "
                f"pixels); e.g. data.image_size={max(factor, round(high ** 0.5) // factor * factor)}"]
    return []


def _pixel_budget(path: str) -> tuple[int, int]:
    """(min, max) pixels of an image: HPSv3's inference fixes both at 256*28*28; else the
    processor's (``min_pixels``/``max_pixels`` or ``size``'s shortest/longest edge)."""
    if layout(path) == "hpsv3":
        return 256 * 28 * 28, 256 * 28 * 28
    if layout(path) == "videoalign":
        data = _videoalign_config(path)["data_config"]
        return 1, int(data.get("max_frame_pixels") or 448 * 448)
    for name in ("preprocessor_config.json", "processor_config.json"):
        try:
            with open(os.path.join(path, name), encoding="utf-8") as f:
                cfg = json.load(f)
        except (OSError, ValueError):
            continue
        cfg = cfg.get("image_processor", cfg)
        size = cfg.get("size") or {}
        low = cfg.get("min_pixels") or size.get("shortest_edge")
        high = cfg.get("max_pixels") or size.get("longest_edge")
        if low and high:
            return int(low), int(high)
    return 56 * 56, 28 * 28 * 1280  # Qwen2-VL's processor defaults


def _clip_pixel_budget(path: str) -> tuple[int, int]:
    """(min, max) pixels of a whole clip (frames x height x width) for Qwen3-VL's video
    processor: its ``size`` (shortest/longest edge) in ``video_preprocessor_config.json``
    (the published checkpoints) or ``processor_config.json`` (transformers 5), else its
    defaults."""
    size = {}
    for name, key in (("video_preprocessor_config.json", None),
                      ("processor_config.json", "video_processor")):
        try:
            with open(os.path.join(path, name), encoding="utf-8") as f:
                cfg = json.load(f)
        except (OSError, ValueError):
            continue
        size = (cfg.get(key, {}) if key else cfg).get("size") or {}
        if size:
            break
    return (int(size.get("shortest_edge") or 128 * 32 * 32),
            int(size.get("longest_edge") or 768 * 32 * 32))


def _videoalign_config(path: str) -> dict[str, Any]:
    with open(os.path.join(path, "model_config.json"), encoding="utf-8") as f:
        return json.load(f)


def _instruction(kind: str, path: str, video: bool) -> tuple[str, tuple[str, ...]]:
    from . import vlm_prompts as P

    if kind == "hpsv3":
        return P.HPSV3_INSTRUCTION, P.HPSV3_TOKENS
    if kind == "plain":
        return (P.PLAIN_VIDEO_INSTRUCTION if video else P.PLAIN_INSTRUCTION), P.PLAIN_TOKENS
    template = _videoalign_config(path)["data_config"].get("prompt_template_type")
    if template != "detailed_special":
        raise ValueError(f"{path}/model_config.json: prompt_template_type {template!r}; "
                         "this scorer reads VideoAlign's 'detailed_special' layout (three "
                         "reward tokens)")
    return P.VIDEOALIGN_INSTRUCTION, P.VIDEOALIGN_TOKENS


def _media_processor(t: Any, d: str, video: bool) -> Any:
    """The image (or video) processor, for its normalisation. transformers' video processors
    need torchvision; without it (a bare GPU image) a clip scorer takes the image processor's,
    which the Qwen2-VL family shares with its video processor (both CLIP's mean and std)."""
    if video:
        try:
            return t.AutoVideoProcessor.from_pretrained(d, local_files_only=True)
        except ImportError as e:
            log.info("video processor unavailable (%s); using the image processor's "
                     "normalisation", str(e).strip().splitlines()[0])
    return t.AutoImageProcessor.from_pretrained(d, local_files_only=True)


def _chat_template(d: str, tokenizer: Any) -> str:
    """The checkpoint's chat template: the processor's file (``chat_template.jinja``, or the
    older ``chat_template.json``), else the tokenizer's own."""
    jinja = os.path.join(d, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            return f.read()
    legacy = os.path.join(d, "chat_template.json")
    if os.path.isfile(legacy):
        with open(legacy, encoding="utf-8") as f:
            return json.load(f)["chat_template"]
    if tokenizer.chat_template:
        return tokenizer.chat_template
    raise ValueError(f"{d}: no chat template (chat_template.jinja, chat_template.json or the "
                     "tokenizer's): copy the checkpoint's processor files into the directory")


def vlm_options(path: str, video: bool, clip: tuple[int, int, float] = (0, 0, 0.0)
                ) -> dict[str, Any]:
    """The construction options of a ``vlm`` / ``vlm-video`` scorer from the directory
    ``path``, all plain JSON (they travel with the weights; no path in them). ``clip``:
    (side, frames, fps) of the clips the data pipeline makes, which a Qwen3-VL clip
    conversation spells out (``_timed_clip``)."""
    from ..media.vlm_text import PROMPT
    from .hf_clip import _without_paths

    t = _transformers()
    d = path  # a local directory (directory_problems refuses a URI)
    config = t.AutoConfig.from_pretrained(d, local_files_only=True)
    if config.model_type not in FAMILIES:
        raise ValueError(f"{path}: model_type {config.model_type!r}; model.name=vlm scores "
                         f"{', '.join(FAMILIES)} models")
    # The tokenizer and the one media processor this scorer needs, not AutoProcessor: that
    # builds the video processor too, which needs torchvision even for an image scorer.
    tokenizer = t.AutoTokenizer.from_pretrained(d, local_files_only=True)
    ip = _media_processor(t, d, video)
    kind = layout(d)
    instruction, tokens = _instruction(kind, d, video)
    affine = _videoalign_affine(d) if kind == "videoalign" else None
    tokenizer.add_special_tokens({"additional_special_tokens": list(tokens)})
    media = "video" if video else "image"
    messages = [{"role": "user", "content": [{"type": media},
                                              {"type": "text", "text": instruction.format(
                                                  text_prompt=PROMPT)}]}]
    template = tokenizer.apply_chat_template(messages, chat_template=_chat_template(d, tokenizer),
                                             tokenize=False, add_generation_prompt=True)
    if video and config.model_type in TIMED_CLIPS:
        template = _timed_clip(t, d, template, config.vision_config, *clip)
    hf = _without_paths(json.loads(config.to_json_string(use_diff=False)))
    text = hf.get("text_config", hf)
    # HPSv3 and VideoAlign resize the embeddings to the tokenizer with their tokens added.
    text["vocab_size"] = len(tokenizer) if kind != "plain" else max(len(tokenizer),
                                                                    int(text["vocab_size"]))
    vision = hf["vision_config"]
    n_template = len(tokenizer(template.replace(PROMPT, ""), add_special_tokens=False)["input_ids"])
    return {"family": config.model_type, "hf_config": hf, "video": video,
            "reward_token_ids": [int(tokenizer.convert_tokens_to_ids(tk)) for tk in tokens],
            "media_token_id": int(config.video_token_id if video else config.image_token_id),
            "pad_id": int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                          else tokenizer.eos_token_id),
            "image_mean": [float(v) for v in ip.image_mean],
            "image_std": [float(v) for v in ip.image_std],
            "patch_size": int(vision["patch_size"]),
            "merge_size": int(vision.get("spatial_merge_size", 2)),
            "temporal_patch_size": int(vision.get("temporal_patch_size", 2)),
            "mlp": kind != "videoalign", "affine": affine,
            "tokenizer": tokenizer.backend_tokenizer.to_str(), "chat_template": template,
            "context_length": n_template + PROMPT_TOKENS}


def _timed_clip(t: Any, d: str, template: str, vision: Any, side: int, frames: int,
                fps: float) -> str:
    """``template`` with its one video placeholder written out as the checkpoint's processor
    writes a ``frames`` x ``side`` x ``side`` clip sampled at ``fps`` (frame i at i/fps s,
    as the decode actors sample it): per group of ``temporal_patch_size`` frames, its mean
    time ``<t seconds>`` and the group's media tokens between vision start/end. The
    processor's own ``replace_video_token`` writes it, so the text is its text."""
    if not (side > 0 and frames > 0 and fps > 0):
        raise ValueError(f"{d}: a Qwen3-VL clip scorer needs the clip's side, frame count and "
                         f"fps (> 0) to write its frame times, got {side}, {frames}, {fps}")
    from transformers.video_utils import VideoMetadata

    processor = t.AutoProcessor.from_pretrained(d, local_files_only=True)
    temporal, patch = int(vision.temporal_patch_size), int(vision.patch_size)
    grid = torch.tensor([[frames // temporal, side // patch, side // patch]])
    metadata = VideoMetadata(total_num_frames=frames, fps=fps, width=side, height=side,
                             frames_indices=list(range(frames)))
    written = processor.replace_video_token({"video_grid_thw": grid,
                                             "video_metadata": [metadata]}, 0)
    token = processor.video_token
    if template.count(token) != 1:
        raise ValueError(f"{d}: the chat template wrote {template.count(token)} video "
                         "placeholders for one clip")
    return template.replace(token, written)


def _videoalign_affine(path: str) -> list[list[float]] | None:
    """VideoAlign's ``inference.py`` ``_norm``: ``(r_k - k_mean) / k_std`` per head, as
    ``[scale, shift]`` pairs; None without an ``inference_config``."""
    norm = _videoalign_config(path).get("inference_config")
    if not norm:
        return None
    return [[1.0 / norm[f"{k}_std"], -norm[f"{k}_mean"] / norm[f"{k}_std"]]
            for k in ("VQ", "MQ", "TA")]


def text_contract(options: dict[str, Any]) -> dict[str, Any]:
    """The ``MediaSpec`` text fields: the conversation tokenised in the decode actors."""
    return {"text": "chat", "context_length": int(options["context_length"]), "vocab_size": 0,
            "tokenizer": options["tokenizer"], "chat_template": options["chat_template"],
            "pad_id": int(options["pad_id"])}


def patchify(frames: Tensor, patch: int, merge: int, temporal: int) -> Tensor:
    """``(N, T, C, H, W)`` normalised frames -> ``(N * T/temporal * H/patch * W/patch,
    C * temporal * patch * patch)``, the rows in the order Qwen2-VL's image processor
    writes ``pixel_values`` (merge windows contiguous)."""
    n, t, c, h, w = frames.shape
    gt, gh, gw = t // temporal, h // patch, w // patch
    x = frames.reshape(n, gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return x.reshape(n * gt * gh * gw, c * temporal * patch * patch)


class VlmScorer(nn.Module):
    """A Qwen2-VL-family model (``net``: vision tower + language model) with a reward head
    (``rm_head``) read at the reward tokens: ``forward(x, tokens)`` -> ``(N,)`` scores, or
    ``(N, width)`` outputs with ``outputs=True``.

    ``x``: ``(N, 3, S, S)`` images or ``(N, 3, T, S, S)`` clips, ImageNet-normalised as the
    data pipeline makes them. ``tokens``: ``(N, L)`` conversation ids from the decode actors,
    one media placeholder each, right-padded with ``pad_id``.
    """

    takes_prompt = True
    head_prefixes = ("rm_head",)

    def __init__(self, family: str, hf_config: dict[str, Any], video: bool,
                 reward_token_ids: list[int], media_token_id: int, pad_id: int,
                 image_mean: list[float], image_std: list[float], head: RewardHead = SCORE,
                 **layout_options: Any) -> None:
        super().__init__()
        t = _transformers()
        cls = getattr(t, FAMILIES[family])
        self.net = cls(cls.config_class.from_dict(copy.deepcopy(hf_config)))  # random init
        self.video = video
        self.reward_head = head
        self.reward_token_ids = [int(i) for i in reward_token_ids]
        self.media_token_id, self.pad_id = int(media_token_id), int(pad_id)
        o = layout_options
        self.patch, self.merge = int(o["patch_size"]), int(o["merge_size"])
        self.temporal = int(o["temporal_patch_size"])
        if head.width % len(self.reward_token_ids):
            raise ValueError(f"a {head.kind} head has {head.width} outputs, not a multiple of "
                             f"the {len(self.reward_token_ids)} reward tokens")
        per_token = head.width // len(self.reward_token_ids)
        hidden = int(self.net.config.get_text_config().hidden_size)
        self.rm_head = _mlp(hidden, per_token) if o.get("mlp", True) else nn.Linear(
            hidden, per_token, bias=False)
        affine = torch.tensor(o.get("affine") or [[1.0, 0.0]] * head.width, dtype=torch.float32)
        self.register_buffer("_out_scale", affine[:, 0].clone(), persistent=False)
        self.register_buffer("_out_shift", affine[:, 1].clone(), persistent=False)
        # ImageNet-normalised -> the processor's normalisation, as one affine map: x * a + b.
        in_mean, in_std = torch.tensor(_IMAGENET_MEAN), torch.tensor(_IMAGENET_STD)
        mean, std = torch.tensor(list(image_mean)), torch.tensor(list(image_std))
        self.register_buffer("_norm_scale", (in_std / std).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("_norm_shift", ((in_mean - mean) / std).view(1, 3, 1, 1, 1),
                             persistent=False)

    def pixel_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """ImageNet-normalised ``x`` -> (``pixel_values``, ``grid_thw`` ``(N, 3)``) as the
        processor gives them; an image is repeated ``temporal_patch_size`` times, as there."""
        if x.dim() == 4:
            x = x.unsqueeze(2).expand(-1, -1, self.temporal, -1, -1)
        n, _, t, h, w = x.shape
        side = self.patch * self.merge
        if h % side or w % side or t % self.temporal:
            raise ValueError(f"this model takes frames whose sides are multiples of {side} "
                             f"and clips of a multiple of {self.temporal} frames, got "
                             f"{t} x {h} x {w}: set data.image_size (and data.video.frames)")
        x = x * self._norm_scale.to(x.dtype) + self._norm_shift.to(x.dtype)
        grid = torch.tensor([t // self.temporal, h // self.patch, w // self.patch],
                            device=x.device).expand(n, 3)
        return patchify(x.transpose(1, 2), self.patch, self.merge, self.temporal), grid

    def hidden_states(self, x: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(last hidden states ``(N, L', D)``, the expanded ids ``(N, L')``): the media
        placeholder replaced by the vision tower's ``(S/patch/merge)^2`` (x frame groups)
        features, padding beyond the longest conversation dropped."""
        tokens = tokens.long()[:, : int((tokens != self.pad_id).sum(1).max())]
        n = tokens.shape[0]
        pixels, grid = self.pixel_values(x)
        vision = self.net.visual(pixels, grid_thw=grid)
        media = _pooled(vision).view(n, -1, self._width())
        embed = self.net.get_input_embeddings()(tokens)
        at = tokens == self.media_token_id
        if media.shape[1] > 1 and bool((at.sum(1) == media.shape[1]).all()):
            # Every media token is in the conversation (Qwen3-VL clips: timed frame groups):
            # the features go there in order, as transformers' masked_scatter puts them.
            ids = tokens
            embeds = embed.masked_scatter(at.unsqueeze(-1), media.to(embed.dtype))
        else:  # one placeholder per conversation, expanded here to the item's features
            where = at.nonzero()
            if where.shape[0] != n or not bool((where[:, 1] == where[0, 1]).all()):
                raise ValueError("each conversation must hold one media placeholder, at the "
                                 "same place (the template puts the image or clip before the "
                                 "prompt), or all of the item's media tokens")
            p = int(where[0, 1])
            embeds = torch.cat([embed[:, :p], media.to(embed.dtype), embed[:, p + 1:]], dim=1)
            ids = torch.cat([tokens[:, :p], tokens.new_full(media.shape[:2],
                                                            self.media_token_id),
                             tokens[:, p + 1:]], dim=1)
        mask = (ids != self.pad_id).long()
        # The publishers' positions: sequential over the sequence in all three M-RoPE sections.
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        extra = {}
        deepstack = getattr(vision, "deepstack_features", None)
        if deepstack:  # Qwen3-VL: (N * media tokens, width) per layer, in the splice's order
            extra = {"visual_pos_masks": ids == self.media_token_id,
                     "deepstack_visual_embeds": [f.to(embed.dtype) for f in deepstack]}
        out = self.net.language_model(inputs_embeds=embeds, attention_mask=mask,
                                      position_ids=position[None].expand(3, -1, -1), **extra)
        return out.last_hidden_state, ids

    def _width(self) -> int:
        return int(self.net.config.get_text_config().hidden_size)

    def forward(self, x: Tensor, tokens: Tensor, *, outputs: bool = False) -> Tensor:
        hidden, ids = self.hidden_states(x, tokens)
        picked = []
        for token in self.reward_token_ids:
            where = ids == token
            if not bool((where.sum(1) == 1).all()):
                raise ValueError(f"each conversation must hold reward token id {token} once")
            with torch.autocast(hidden.device.type, enabled=False):  # fp32 head, as HPSv3's
                picked.append(self.rm_head(hidden[where].float()))  # (N, per_token)
        out = torch.cat(picked, dim=1) * self._out_scale + self._out_shift
        return out if outputs else self.reward_head.score(out)


def _pooled(out: Any) -> Tensor:
    return out if isinstance(out, Tensor) else out.pooler_output


def _mlp(hidden: int, outputs: int) -> nn.Sequential:
    """HPSv3's ``ranknet`` head, module for module (so its ``rm_head.{0,3,5}`` keys load)."""
    a, b = _MLP_HIDDEN
    return nn.Sequential(nn.Linear(hidden, a), nn.ReLU(), nn.Dropout(0.05), nn.Linear(a, b),
                         nn.ReLU(), nn.Linear(b, outputs))


def _ours(key: str) -> str | None:
    """A published state-dict key -> this scorer's (None: not part of the scorer, the LM
    head). Takes transformers < 4.52 (``visual.*``, ``model.*``), >= 4.52 (``model.visual.*``,
    ``model.language_model.*``) and peft's ``base_model.model.`` prefix."""
    key = key.removeprefix("base_model.model.")
    for old, new in (("model.visual.", "net.visual."), ("model.language_model.",
                     "net.language_model."), ("visual.", "net.visual."),
                     ("model.", "net.language_model."), ("rm_head.", "rm_head.")):
        if key.startswith(old):
            return new + key[len(old):]
    return None


def _read_safetensors(path: str) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out: dict[str, Tensor] = {}
    for name in files:
        out.update(load_file(os.path.join(path, name)))
    return out


def pretrained_state_dict(path: str, model: VlmScorer) -> dict[str, Tensor]:
    """The weights of the local directory ``path`` (its layout: ``layout``) as ``model``'s
    state dict; what the checkpoint lacks (a ``plain`` model's head) keeps ``model``'s init."""
    state = model.state_dict()
    d = path
    kind = layout(d)
    if kind == "hpsv3":
        from safetensors.torch import load_file

        published = load_file(os.path.join(d, "HPSv3.safetensors"))
        published = published.get("model", published)
    else:
        published = _read_safetensors(d)
    loaded = _merge(state, published)
    if kind == "videoalign":
        loaded |= _videoalign_weights(d, state)
    missing = sorted(k for k in state if k not in loaded and not k.startswith("rm_head"))
    if missing or (kind != "plain" and not any(k.startswith("rm_head") for k in loaded)):
        raise ValueError(f"{path}: the {kind} checkpoint lacks weights of this model: "
                         f"{(missing or ['rm_head.*'])[:5]}")
    log.info("loaded a %s reward model from %s", kind, path)
    return state


def _merge(state: dict[str, Tensor], published: dict[str, Tensor]) -> set[str]:
    """Copy ``published`` into ``state`` (in place) by ``_ours``; an embedding with another
    row count is cut, or extended by rows at the mean embedding, as
    ``resize_token_embeddings`` keeps the first rows.
    Returns the keys set."""
    done = set()
    for key, value in published.items():
        ours = _ours(key)
        if ours is None or ours not in state:
            continue
        target = state[ours]
        if value.shape != target.shape and key.endswith("embed_tokens.weight"):
            rows = min(value.shape[0], target.shape[0])
            target[:rows] = value[:rows]
            # The added tokens (<|Reward|>, ...) start at the mean embedding, where
            # transformers' resize_token_embeddings puts them (mean_resizing: the mean plus
            # 1e-9-scaled noise). A zero row would reach the first RMSNorm as a zero vector,
            # whose gradient is 1/sqrt(eps) large (measured: 2.4e5 on a tiny Qwen3-VL).
            target[rows:] = value.float().mean(0).to(target.dtype)
        elif value.shape != target.shape:
            raise ValueError(f"{key}: shape {tuple(value.shape)}, the model's config gives "
                             f"{tuple(target.shape)}")
        else:
            target.copy_(value)
        done.add(ours)
    return done


def _videoalign_weights(path: str, state: dict[str, Tensor]) -> set[str]:
    """VideoAlign's ``utils.load_model_from_checkpoint``: the newest ``checkpoint-N`` (its
    ``non_lora_state_dict.pth`` over the base weights, then the LoRA of
    ``adapter_model.safetensors`` merged: ``W += (alpha / r) * B @ A``, alpha/sqrt(r) with
    rsLoRA, ``peft_lora_config`` of ``model_config.json``)."""
    from safetensors.torch import load_file

    ckpt = max(glob.glob(os.path.join(path, "checkpoint-*")),
               key=lambda p: int(p.rsplit("-", 1)[-1]))
    non_lora = torch.load(os.path.join(ckpt, "non_lora_state_dict.pth"), map_location="cpu",
                          weights_only=True)
    done = _merge(state, non_lora)
    lora_cfg = _videoalign_config(path)["peft_lora_config"]
    r, alpha = lora_cfg["lora_r"], lora_cfg["lora_alpha"]
    scale = alpha / (r ** 0.5 if lora_cfg.get("use_rslora") else r)
    adapters = load_file(os.path.join(ckpt, "adapter_model.safetensors"))
    for key, a in adapters.items():
        if ".lora_A." not in key:
            continue
        b = adapters[key.replace(".lora_A.", ".lora_B.")]
        ours = _ours(key.split(".lora_A.")[0] + ".weight")
        if ours not in state:
            raise ValueError(f"{ckpt}: LoRA for {key}, a layer this model does not have")
        state[ours] += scale * (b.float() @ a.float()).to(state[ours].dtype)
    return done
