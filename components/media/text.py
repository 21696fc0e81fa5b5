"""Prompts -> token ids, the text half of the decode contract (``MediaSpec.text``).

Three tokenizers, chosen by the scorer, never by the user:

- ``words``: lower-cased words (``[a-z0-9]+``), each hashed (CRC-32, the same on every
  machine and Python) into ``vocab_size - 1`` buckets; id 0 is padding. The small
  prompt-conditioned CNNs use it: no vocabulary file to ship or version.
- ``clip``: open_clip's BPE tokenizer (its vocabulary ships inside the open_clip wheel),
  which CLIP checkpoints were trained with.
- ``hf``: a Hugging Face checkpoint's own tokenizer (``hf-clip``), carried in the spec as
  ``tokenizers``' JSON with truncation and padding to ``context_length`` set, so the decode
  actors and a consumer of the registered model tokenise as the checkpoint's processor does
  (``padding="max_length"``, ``truncation=True``) without the model directory.

All give int32 ``(N, context_length)``, truncated or padded (with zeros; ``hf`` with the
checkpoint's pad token). A missing prompt tokenises as the empty string (all padding).

Length limits (``data.max_prompt_chars``, ``data.max_prompt_tokens``, carried in the
``MediaSpec``) are checked before any tokenizer runs: open_clip's BPE is superlinear in the
length of one word (one 50,000-letter word took 46 s, 100,000 took 145 s), so a hostile
caption would stall a decode actor or a served request. ``prompt_problem`` says why a prompt
is refused; callers quarantine that row (or report it), and ``tokenize`` never passes refused
text to a tokenizer. Within the default limits the worst case, one 2,000-letter word, costs
~0.5 s of BPE.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Sequence

import numpy as np

TOKENIZERS = ("", "words", "clip", "hf")
_WORD = re.compile(r"[a-z0-9]+")


def _text(prompt: object) -> str:
    if prompt is None or (isinstance(prompt, float) and prompt != prompt):  # None / NaN
        return ""
    return str(prompt)


def prompt_problem(prompt: object, max_chars: int, max_tokens: int) -> str | None:
    """Why ``prompt`` is refused, or None; linear in its length, no tokenizer involved.

    Characters first (``len``), then words: every whitespace-separated word is at least one
    token of the BPE tokenizers, so more words than ``max_tokens`` is certainly more tokens.
    """
    text = _text(prompt)
    if len(text) > max_chars:
        return (f"prompt is {len(text)} characters, over data.max_prompt_chars={max_chars}; "
                "shorten it")
    words = len(text.split())
    if words > max_tokens:
        return (f"prompt has {words} words, more tokens than data.max_prompt_tokens="
                f"{max_tokens}; shorten it")
    return None


def word_ids(prompts: Sequence[object], context_length: int, vocab_size: int) -> np.ndarray:
    out = np.zeros((len(prompts), context_length), dtype=np.int32)
    for i, p in enumerate(prompts):
        words = _WORD.findall(_text(p).lower())[:context_length]
        out[i, : len(words)] = [1 + zlib.crc32(w.encode()) % (vocab_size - 1) for w in words]
    return out


@functools.lru_cache(maxsize=2)
def _hf_tokenizer(tokenizer_json: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json)


def hf_ids(prompts: Sequence[object], context_length: int, tokenizer_json: str) -> np.ndarray:
    """Token ids from a ``tokenizers`` JSON whose truncation and padding give exactly
    ``context_length`` ids (``hf_clip.tokenizer_json`` writes it so)."""
    if len(prompts) == 0:
        return np.zeros((0, context_length), dtype=np.int32)
    encodings = _hf_tokenizer(tokenizer_json).encode_batch([_text(p) for p in prompts])
    ids = np.asarray([e.ids for e in encodings], dtype=np.int32).reshape(len(prompts), -1)
    if ids.shape[1] != context_length:
        raise ValueError(f"the hf tokenizer gave {ids.shape[1]} ids per prompt, not "
                         f"context_length={context_length}: its padding is not fixed-length")
    return ids


def tokenize(kind: str, prompts: Sequence[object], context_length: int,
             vocab_size: int, tokenizer: str = "") -> np.ndarray:
    """``prompts`` -> int32 ``(N, context_length)`` token ids with tokenizer ``kind``
    (``tokenizer``: the JSON of ``hf``). No length limit here: ``MediaSpec.tokenize``
    applies them."""
    if kind == "words":
        return word_ids(prompts, context_length, vocab_size)
    if kind == "clip":
        from ..training.clip import tokenize as clip_tokenize

        return clip_tokenize([_text(p) for p in prompts], context_length)
    if kind == "hf":
        return hf_ids(prompts, context_length, tokenizer)
    raise ValueError(f"unknown tokenizer {kind!r}; one of {', '.join(TOKENIZERS[1:])}")
