"""Parameters and bytes per GPU of the scorers under ``ddp`` and ``fsdp`` -> docs/training.md.

Parameters are counted, not quoted: each model is built on PyTorch's meta device (no memory,
no download) from its configuration: ``bn-cnn`` from the catalogue, CLIP from open_clip's
shipped configs, Qwen2-VL from transformers' ``Qwen2VLConfig`` with the published sizes of the
2B and 7B checkpoints (written out below).

Bytes per GPU are estimated with the stated model (nothing measured here; no GPU):

- full fine-tuning with AdamW and fp32 master weights: 4 (weights) + 4 (gradients) + 8 (two
  moments) = 16 bytes per parameter. ``ddp`` holds all of it on every GPU; ``fsdp`` over W
  GPUs holds 16P/W plus the bf16 copy of the block being computed and the next one
  (prefetch): 2 x 2 bytes x the largest block.
- LoRA (r=64 on every Linear of the language model, VideoAlign's recipe; vision tower and head
  trained in full): frozen weights stay fp32 here (4 bytes, no gradient or optimiser state),
  trainable ones cost 16 bytes; ``fsdp`` shards both.
- activations of one micro-batch of ``pairs`` pairs (2 x pairs sequences) per transformer
  layer, bf16 (Korthikanti et al. 2022, "Reducing Activation Recomputation", eq. 2):
  ``s*b*h*(34 + 5*a*s/h)`` bytes without checkpointing; with per-block activation
  checkpointing ``2*s*b*h`` per layer (the block input) plus one layer recomputed in full.

Run: ``.venv/bin/python benchmarks/scale_table.py [--json OUT]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GB = 1e9
# Qwen2-VL's published sizes (config.json of Qwen/Qwen2-VL-2B-Instruct and -7B-Instruct).
QWEN2_VL = {
    "Qwen2-VL-2B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                        num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                        tie_word_embeddings=True),
    "Qwen2-VL-7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                        tie_word_embeddings=False),
}
QWEN2_VL_VISION = dict(depth=32, embed_dim=1280, mlp_ratio=4, num_heads=16, patch_size=14,
                       spatial_merge_size=2)


def _largest_block(model: nn.Module) -> int:
    from components.training.sharding import shard_units

    units = shard_units(model)
    return max((sum(p.numel() for p in u.parameters()) for u in units), default=0)


def _clip(arch: str) -> tuple[nn.Module, list[tuple[int, int, int, int]]]:
    import os

    import open_clip

    cfg = json.loads(Path(os.path.dirname(open_clip.__file__), "model_configs",
                          f"{arch}.json").read_text())
    with torch.device("meta"):
        model = open_clip.CLIP(**cfg)
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    tokens = (v["image_size"] // v["patch_size"]) ** 2 + 1
    heads_v = v["width"] // v.get("head_width", 64)
    towers = [(v["layers"], tokens, v["width"], heads_v),
              (t["layers"], t.get("context_length", 77), t["width"], t.get("heads", 8))]
    return model, towers


def _qwen2_vl(name: str) -> tuple[nn.Module, list[tuple[int, int, int, int]]]:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    text = QWEN2_VL[name]
    vision = {**QWEN2_VL_VISION, "hidden_size": text["hidden_size"]}
    cfg = Qwen2VLConfig(text_config=text, vision_config=vision,
                        tie_word_embeddings=text["tie_word_embeddings"])
    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration(cfg)
    patches = (448 // 14) ** 2  # one 448x448 image
    llm_tokens = patches // 4 + 64  # merged 2x2 visual tokens + instruction and prompt
    towers = [(QWEN2_VL_VISION["depth"], patches, QWEN2_VL_VISION["embed_dim"], 16),
              (text["num_hidden_layers"], llm_tokens, text["hidden_size"],
               text["num_attention_heads"])]
    return model, towers


def _lora_trainable(model: nn.Module, r: int = 64) -> tuple[int, int]:
    """(adapter parameters, parameters trained in full) for VideoAlign's recipe: LoRA on the
    language model's Linear layers, the vision tower and heads trained in full."""
    adapters, full = 0, 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and "visual" not in name and "lm_head" not in name:
            adapters += r * (m.in_features + m.out_features)
    for name, p in model.named_parameters():
        if "visual" in name:
            full += p.numel()
    return adapters, full


def activations(towers, pairs: int, checkpointing: bool) -> float:
    total = 0.0
    b = 2 * pairs
    for layers, s, h, a in towers:
        full = s * b * h * (34 + 5 * a * s / h)
        total += (layers * 2 * s * b * h + full) if checkpointing else layers * full
    return total


def row(name: str, model: nn.Module, towers, pairs: int) -> dict:
    p = sum(t.numel() for t in model.parameters())
    block = _largest_block(model)
    out = {"model": name, "params": p, "largest_block": block}
    for tag, lora in (("full", False), ("lora", True)):
        if lora:
            if not name.startswith("Qwen"):
                continue
            adapters, vision = _lora_trainable(model)
            frozen, trained = p - vision, adapters + vision
        else:
            frozen, trained = 0, p
        static = 4 * frozen + 16 * trained
        out[f"{tag}/ddp_gb"] = static / GB
        for w in (8, 16):
            out[f"{tag}/fsdp{w}_gb"] = (static / w + 4 * block) / GB
        out[f"{tag}/trainable"] = trained
    for ck in (False, True):
        out[f"activations/{'ckpt' if ck else 'no_ckpt'}_gb"] = activations(towers, pairs, ck) / GB
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=4, help="pairs per micro-batch per GPU")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    from components.training.models import build_scorer

    rows = []
    with torch.device("meta"):
        rows.append(row("bn-cnn", build_scorer("bn-cnn"), [], a.pairs))
    for arch in ("ViT-L-14", "ViT-H-14"):
        model, towers = _clip(arch)
        rows.append(row(f"CLIP {arch}", model, towers, a.pairs))
    for name in QWEN2_VL:
        model, towers = _qwen2_vl(name)
        rows.append(row(name, model, towers, a.pairs))
    for r in rows:
        print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
