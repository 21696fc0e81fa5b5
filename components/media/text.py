"""Prompts -> token ids, the text half of the decode contract (``MediaSpec.text``).

Two tokenizers, chosen by the scorer, never by the user:

- ``words``: lower-cased words (``[a-z0-9]+``), each hashed (CRC-32, the same on every
  machine and Python) into ``vocab_size - 1`` buckets; id 0 is padding. The small
  prompt-conditioned CNNs use it: no vocabulary file to ship or version.
- ``clip``: open_clip's BPE tokenizer (its vocabulary ships inside the open_clip wheel),
  which CLIP checkpoints were trained with.

Both give int32 ``(N, context_length)``, truncated or zero-padded. A missing prompt
tokenises as the empty string (all padding).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

TOKENIZERS = ("", "words", "clip")
_WORD = re.compile(r"[a-z0-9]+")


def _text(prompt: object) -> str:
    if prompt is None or (isinstance(prompt, float) and prompt != prompt):  # None / NaN
        return ""
    return str(prompt)


def word_ids(prompts: Sequence[object], context_length: int, vocab_size: int) -> np.ndarray:
    out = np.zeros((len(prompts), context_length), dtype=np.int32)
    for i, p in enumerate(prompts):
        words = _WORD.findall(_text(p).lower())[:context_length]
        out[i, : len(words)] = [1 + zlib.crc32(w.encode()) % (vocab_size - 1) for w in words]
    return out


def tokenize(kind: str, prompts: Sequence[object], context_length: int,
             vocab_size: int) -> np.ndarray:
    """``prompts`` -> int32 ``(N, context_length)`` token ids with tokenizer ``kind``."""
    if kind == "words":
        return word_ids(prompts, context_length, vocab_size)
    if kind == "clip":
        from ..training.clip import tokenize as clip_tokenize

        return clip_tokenize([_text(p) for p in prompts], context_length)
    raise ValueError(f"unknown tokenizer {kind!r}; one of {', '.join(TOKENIZERS[1:])}")
