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
