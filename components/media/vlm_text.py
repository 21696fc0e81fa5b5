"""Prompts -> the token ids of a vision-language scorer's whole conversation
(``MediaSpec.text == "chat"``), computed in the decode actors.

The scorer's options hold the conversation as the checkpoint's processor renders it once on
the driver (chat template, instruction, the media placeholder already expanded to its
``<|image_pad|>`` / ``<|video_pad|>`` count for the configured pixel budget), with
``PROMPT`` where the prompt goes. Tokenising ``template.replace(PROMPT, prompt)`` with the
checkpoint's own tokenizer is what the processor does with the rendered text, so the ids are
its ids, without transformers or the model directory here.

Out: int32 ``(N, context_length)``, right-padded with the pad id; a prompt longer than the
budget (``context_length`` minus the template) is cut to its first tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

PROMPT = "\x00prompt\x00"  # where the prompt goes in the rendered conversation


@functools.lru_cache(maxsize=2)
def _tokenizer(tokenizer_json: str):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    tok.no_padding()
    tok.no_truncation()
    return tok


def _text(prompt: object) -> str:
    if prompt is None or (isinstance(prompt, float) and prompt != prompt):  # None / NaN
        return ""
    return str(prompt).replace(PROMPT, "")


def chat_ids(prompts: Sequence[object], context_length: int, tokenizer_json: str,
             template: str, pad_id: int) -> np.ndarray:
    """``prompts`` -> int32 ``(N, context_length)`` ids of ``template`` with each prompt."""
    tok = _tokenizer(tokenizer_json)
    budget = context_length - len(tok.encode(template.replace(PROMPT, "")).ids)
    out = np.full((len(prompts), context_length), pad_id, dtype=np.int32)
    for i, p in enumerate(prompts):
        text = _text(p)
        ids = tok.encode(template.replace(PROMPT, text)).ids
        if len(ids) > context_length:  # cut the prompt, never the instruction or the token
            words = tok.encode(text, add_special_tokens=False).ids[:max(budget - 2, 0)]
            ids = tok.encode(template.replace(PROMPT, tok.decode(words))).ids[:context_length]
        out[i, :len(ids)] = ids
    return out
