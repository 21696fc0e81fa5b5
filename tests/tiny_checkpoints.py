"""Tiny random checkpoints in the exact file layouts the field publishes, for parity and
workflow tests (nothing downloads):

- ``write_pickscore_layout``: a Hugging Face CLIP directory as PickScore's users hold one
  (yuvalkirstain/PickScore_v1's ``config.json`` + ``model.safetensors``, with the tokenizer
  and processor files of laion/CLIP-ViT-H-14-laion2B-s32B-b79K that its README loads):
  ``CLIPModel.save_pretrained``, a CLIP BPE tokenizer trained here with ``tokenizers`` and
  saved by ``CLIPTokenizer.save_pretrained``, the CLIP ViT-H/14 ``CLIPImageProcessor``
  settings (shortest edge 224, bicubic, centre crop 224, OpenAI CLIP mean/std).
- ``write_hpsv2_layout``: HPSv2's ``HPS_v2_compressed.pt`` layout, ``{"state_dict": ...}`` of
  an open_clip ViT-H-14 (the same config keys as open_clip's ``ViT-H-14.json``, tiny
  widths; the same 49408-token vocabulary, so open_clip's own tokenizer applies). Its key names
  equal those of HPSv2's fork of open_clip (``hpsv2/src/open_clip/model.py``; compared once by
  building both).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# open_clip's ViT-H-14.json (HPSv2's base model) with every width shrunk; the structure is its.
TINY_VIT_H_14 = {"embed_dim": 16,
                 "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16,
                                "patch_size": 32},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32,
                              "heads": 2, "layers": 2}}
# CLIP's pre-tokenizer pattern (transformers' CLIPTokenizer, from OpenAI's simple_tokenizer).
_CLIP_SPLIT = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|"""
               r"""[\p{N}]|[^\s\p{L}\p{N}]+""")
_CORPUS = ["a photo of a cat", "a red apple on a wooden table", "an astronaut riding a horse",
           "the quick brown fox jumps over the lazy dog", "a painting of a sunset over the sea",
           "two dogs playing in the snow", "a bowl of soup, studio lighting, 4k"]


def _clip_tokenizer(directory: Path):
    """A CLIP-style byte-level BPE (``</w>`` word ends, lower-cased, NFC) with a few hundred
    tokens, trained on a small corpus, as ``transformers.CLIPTokenizer``."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>",
                               continuing_subword_prefix=""))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(),
                                           normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                  special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                  end_of_word_suffix="</w>",
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 10, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = tok.model.save(str(directory))
    # model_max_length 77, as laion/CLIP-ViT-H-14-laion2B-s32B-b79K's tokenizer_config.json.
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def write_pickscore_layout(directory: Path, seed: int = 0, logit_scale: float = 4.6052) -> Path:
    """A tiny random CLIP in PickScore's directory layout; returns ``directory``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    directory = Path(directory)
    tokenizer = _clip_tokenizer(directory)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
                num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                projection_dim=16, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(image_size=224, patch_size=32, hidden_size=32, intermediate_size=37,
                  num_hidden_layers=2, num_attention_heads=2, projection_dim=16)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    with torch.no_grad():  # PickScore's is ~4.6 (exp = 100): not the init's, so it shows
        model.logit_scale.fill_(logit_scale)
    model.save_pretrained(directory)  # config.json + model.safetensors
    tokenizer.save_pretrained(directory)
    CLIPImageProcessor(do_resize=True, size={"shortest_edge": 224}, resample=3,
                       do_center_crop=True, crop_size={"height": 224, "width": 224},
                       do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                       image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
                       do_convert_rgb=True).save_pretrained(directory)
    return directory


def write_hpsv2_layout(directory: Path, seed: int = 0) -> tuple[Path, Path]:
    """``(arch.json, hpsv2.pt)``: the tiny ViT-H-14 config and ``{"state_dict": ...}``."""
    import open_clip

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arch = directory / "tiny-vit-h-14.json"
    arch.write_text(json.dumps(TINY_VIT_H_14))
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_VIT_H_14)
    with torch.no_grad():
        model.logit_scale.fill_(4.0)  # trained HPSv2's is ~4.6; anything but the init's
    ckpt = directory / "hpsv2.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    return arch, ckpt


# --- Qwen2-VL reward models (HPSv3, VideoAlign) -------------------------------------------
# Qwen2-VL-*-Instruct's chat_template.json (the processor renders the conversation with it).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
_QWEN2_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                  "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                  "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                  "<|image_pad|>", "<|video_pad|>"]
_QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"""
                r"""[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
_VLM_CORPUS = _CORPUS + ["You are a helpful assistant.", "Please provide the overall ratings of "
                         "this image", "Visual Quality, Motion Quality and Text Alignment",
                         "Evaluate the video: the quality of the motion in terms of consistency"]


def _qwen2_tokenizer():
    """A Qwen2-style byte-level BPE (Qwen2's pre-tokenizer split, NFC) with a few hundred
    tokens and Qwen2-VL's special tokens, as ``transformers.Qwen2TokenizerFast``."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_VLM_CORPUS * 10, trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _QWEN2_SPECIAL])
    return Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                              pad_token="<|endoftext|>", unk_token=None, bos_token=None,
                              errors="replace", model_max_length=32768)


def write_qwen2_vl_base(directory: Path, seed: int = 0, min_pixels: int = 56 * 56,
                        max_pixels: int = 56 * 56, family: str = "qwen2_vl") -> Path:
    """A tiny random Qwen2-VL-*-Instruct directory (``config.json``, ``model.safetensors``,
    the tokenizer, ``preprocessor_config.json``, ``video_preprocessor_config.json``, the chat
    template): Qwen2-VL's structure (14 px patches, 2x2 merge, 2-frame temporal patches,
    M-RoPE) with tiny widths. ``family="qwen2_5_vl"``: a Qwen2.5-VL-*-Instruct directory
    instead (windowed vision attention: 28 px windows, the second block full; an RMSNorm
    vision tower with a gated MLP and an output projection to the text width).
    ``family="qwen3_vl"``: a Qwen3-VL-*-Instruct directory (16 px patches, interpolated
    position embeddings, DeepStack: vision block 0's merged features added to the first
    language-model layer's output at the image tokens; Qwen3-VL's video processor, whose
    budget is 4 frames of the image budget); pass pixel budgets of 64 x 64."""
    import transformers
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _qwen2_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                max_position_embeddings=4096, rope_theta=1000000.0, rms_norm_eps=1e-6,
                initializer_range=0.5, bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
    vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                  initializer_range=0.5)
    # initializer_range 0.5, not 0.02: at tiny widths the default leaves the hidden state at
    # a token all but independent of the image and prompt, and a parity test would prove
    # nothing.
    config_class = Qwen2VLConfig
    model_class, processor_class = "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"
    if family == "qwen2_5_vl":
        config_class = transformers.Qwen2_5_VLConfig
        model_class, processor_class = "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                      out_hidden_size=text["hidden_size"], patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2, in_channels=3, window_size=28,
                      fullatt_block_indexes=[1], initializer_range=0.5)
    elif family == "qwen3_vl":  # 16 px patches (32 px merged), deepstack after vision block 0
        config_class = transformers.Qwen3VLConfig
        model_class, processor_class = "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"
        text = {**{k: v for k, v in text.items() if k not in ("rope_scaling", "rope_theta")},
                "head_dim": 16, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6,
                                                   "mrope_section": [2, 3, 3],
                                                   "mrope_interleaved": True}}
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                      out_hidden_size=text["hidden_size"], patch_size=16, spatial_merge_size=2,
                      temporal_patch_size=2, in_channels=3, num_position_embeddings=16,
                      deepstack_visual_indexes=[0], initializer_range=0.5)
    else:
        assert family == "qwen2_vl", family
    config = config_class(text_config=text, vision_config=vision,
                          image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                          vision_start_token_id=ids("<|vision_start|>"),
                          vision_end_token_id=ids("<|vision_end|>"),
                          bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                          pad_token_id=ids("<|endoftext|>"))
    torch.manual_seed(seed)
    getattr(transformers, model_class)(config).save_pretrained(directory)
    pixels = dict(min_pixels=min_pixels, max_pixels=max_pixels,
                  patch_size=16 if family == "qwen3_vl" else 14, merge_size=2,
                  temporal_patch_size=2, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
    video = Qwen2VLVideoProcessor(**pixels)
    if family == "qwen3_vl":  # its own video processor: a clip's budget counts its frames
        clip = {k: v for k, v in pixels.items() if not k.endswith("_pixels")}
        video = transformers.Qwen3VLVideoProcessor(
            **clip, size={"shortest_edge": 4 * min_pixels, "longest_edge": 4 * max_pixels})
    getattr(transformers, processor_class)(
        image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
        video_processor=video, chat_template=QWEN2_VL_CHAT_TEMPLATE).save_pretrained(directory)
    return directory


def _legacy_qwen2_vl_keys(state: dict) -> dict:
    """transformers >= 4.52 keys -> the < 4.52 ones (``visual.*``, ``model.*``) that
    ``Qwen2VLForConditionalGeneration.state_dict()`` had under 4.45.2 (hpsv3 1.0.0's pin)."""
    out = {}
    for k, v in state.items():
        k = k.replace("model.visual.", "visual.", 1) if k.startswith("model.visual.") else \
            k.replace("model.language_model.", "model.", 1)
        out[k] = v.contiguous()
    return out


def write_hpsv3_layout(directory: Path, seed: int = 0) -> Path:
    """A tiny random HPSv3: the base Qwen2-VL-Instruct directory HPSv3 builds on plus
    ``HPSv3.safetensors``, the state dict of hpsv3's ``Qwen2VLRewardModelBT`` as
    ``hpsv3/train.py`` makes it (``<|Reward|>`` added to the tokenizer, embeddings resized to
    it, ``rm_head_type="ranknet"`` default head ``Linear(h,1024) ReLU Dropout(0.05)
    Linear(1024,16) ReLU Linear(16,2)``), keys as transformers 4.45.2 names them. The base
    directory's processor takes 56x56 images (tiny widths: HPSv3's is 256*28*28 = 448^2)."""
    from safetensors.torch import save_file
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    directory = write_qwen2_vl_base(Path(directory), seed)
    processor = AutoProcessor.from_pretrained(directory, local_files_only=True)
    processor.tokenizer.add_special_tokens({"additional_special_tokens": ["<|Reward|>"]})
    torch.manual_seed(seed + 1)
    model = Qwen2VLForConditionalGeneration.from_pretrained(directory, local_files_only=True)
    model.resize_token_embeddings(len(processor.tokenizer))
    hidden = model.config.get_text_config().hidden_size
    rm_head = torch.nn.Sequential(torch.nn.Linear(hidden, 1024), torch.nn.ReLU(),
                                  torch.nn.Dropout(0.05), torch.nn.Linear(1024, 16),
                                  torch.nn.ReLU(), torch.nn.Linear(16, 2))
    state = {**model.state_dict(), **{f"rm_head.{k}": v for k, v in rm_head.state_dict().items()}}
    with torch.no_grad():  # the new token's row: trained in HPSv3, so not the resize's mean
        key = "model.language_model.embed_tokens.weight"
        state[key][-1] = torch.randn_like(state[key][-1])
    save_file(_legacy_qwen2_vl_keys(state), str(directory / "HPSv3.safetensors"))
    return directory


VIDEOALIGN_NORM = {"VQ_mean": 0.3, "VQ_std": 2.0, "MQ_mean": -0.2, "MQ_std": 1.5,
                   "TA_mean": 0.1, "TA_std": 0.5}


def write_videoalign_layout(directory: Path, seed: int = 0, r: int = 4, alpha: int = 8) -> Path:
    """A tiny random VideoAlign (KwaiVGI/VideoReward) directory: the base Qwen2-VL-Instruct
    files, VideoAlign's ``model_config.json`` (``data_config`` / ``model_config`` /
    ``peft_lora_config`` / ``inference_config`` as ``train_reward.py`` writes them) and
    ``checkpoint-100/`` holding ``adapter_model.safetensors`` (LoRA on every language-model
    Linear, peft's key names ``base_model.model.model.layers.N...lora_A.weight``, non-zero B)
    and ``non_lora_state_dict.pth`` (the trained vision tower, the head
    ``rm_head.weight`` = ``Linear(h, 1, bias=False)`` read at the three reward tokens, and the
    embeddings, resized to the tokenizer with ``<|VQ_reward|>``, ``<|MQ_reward|>``,
    ``<|TA_reward|>``), with transformers 4.45's key names."""
    from safetensors.torch import save_file
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    directory = write_qwen2_vl_base(Path(directory), seed)
    processor = AutoProcessor.from_pretrained(directory, local_files_only=True)
    processor.tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"]})
    torch.manual_seed(seed + 1)
    model = Qwen2VLForConditionalGeneration.from_pretrained(directory, local_files_only=True)
    model.resize_token_embeddings(len(processor.tokenizer))
    hidden = model.config.get_text_config().hidden_size
    state = _legacy_qwen2_vl_keys(model.state_dict())
    non_lora = {f"base_model.model.{k}": torch.randn_like(v) * 0.5 if k.startswith("visual.")
                else v for k, v in state.items() if k.startswith(("visual.", "model.embed_tokens"))}
    non_lora["base_model.model.model.embed_tokens.weight"][-3:] = torch.randn(3, hidden)
    non_lora["base_model.model.rm_head.weight"] = torch.randn(1, hidden)
    adapters = {}
    for name, module in model.model.language_model.named_modules():
        if isinstance(module, torch.nn.Linear):
            key = f"base_model.model.model.{name}"
            adapters[f"{key}.lora_A.weight"] = torch.randn(r, module.in_features) * 0.3
            adapters[f"{key}.lora_B.weight"] = torch.randn(module.out_features, r) * 0.3
    ckpt = directory / "checkpoint-100"
    ckpt.mkdir()
    save_file(adapters, str(ckpt / "adapter_model.safetensors"))
    torch.save(non_lora, ckpt / "non_lora_state_dict.pth")
    (directory / "model_config.json").write_text(json.dumps({
        "data_config": {"meta_data": "train.csv", "data_dir": "videos", "max_frame_pixels": 56 * 56,
                        "num_frames": None, "fps": 2.0, "eval_dim": ["VQ", "MQ", "TA"],
                        "prompt_template_type": "detailed_special", "sample_type": "uniform"},
        "model_config": {"model_name_or_path": "Qwen/Qwen2-VL-2B-Instruct", "output_dim": 1,
                         "use_special_tokens": True, "reward_token": "special",
                         "torch_dtype": "bfloat16"},
        "peft_lora_config": {"lora_enable": True, "vision_lora": False, "lora_r": r,
                             "lora_alpha": alpha, "lora_dropout": 0.05,
                             "lora_namespan_exclude": ["lm_head", "rm_head", "embed_tokens",
                                                       "visual"],
                             "use_rslora": False, "num_lora_modules": -1},
        "inference_config": VIDEOALIGN_NORM}, indent=2))
    return directory
