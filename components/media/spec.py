"""What one encoded item (an image, or a clip) becomes before it reaches a scorer.

A ``MediaSpec`` is the decode contract shared by training (the preprocessing actors), batch
scoring and the registered pyfunc model, so a consumer's bytes go through exactly the
preprocessing the scorer was trained with. It owns every decode setting and limit; nothing
else carries a copy:

    image: encoded JPEG/PNG/WebP          -> uint8 ``(3, S, S)``
    video: encoded MP4/WebM/GIF container,
           or a list of encoded frames    -> uint8 ``(3, T, S, S)`` and its consistency ``c``
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..config import MODALITIES, PAD_POLICIES, DataConfig
from .image import Deadline, DecodeError, decode_image


@dataclass(frozen=True)
class MediaSpec:
    modality: str  # "image" | "video"
    size: int  # S: frames/images are resized (shorter side) and centre-cropped to S x S
    max_pixels: int  # per image / per frame, checked from the header (config data.max_pixels)
    frames: int = 0  # T (video)
    fps: float = 0.0  # 0 = uniform over the clip
    pad: str = "repeat"
    max_bytes: int = 200_000_000
    max_duration_s: float = 600.0
    max_frames: int = 20_000
    max_decoded_pixels: int = 5_000_000_000  # frames x width x height one clip may decode
    decoder_threads: int = 1
    decode_timeout_s: float = 30.0  # wall-clock deadline of one item's decode (image or clip)
    # Prompt-conditioned scorers: how prompts become token ids (media/text.py); "" = none.
    text: str = ""
    context_length: int = 0
    vocab_size: int = 0
    tokenizer: str = ""  # text="hf"/"chat": the checkpoint's own tokenizer, as tokenizers' JSON
    # text="chat" (vision-language scorers, media/vlm_text.py): the rendered conversation with
    # the prompt's place marked, and the id that pads it to context_length.
    chat_template: str = ""
    pad_id: int = 0
    # Prompts over either limit are refused before tokenising (media/text.py); a scorer.json
    # written before these fields reads with the defaults of data.max_prompt_*.
    max_prompt_chars: int = 2000
    max_prompt_tokens: int = 256

    def __post_init__(self) -> None:
        # Internal invariants: a user's config is validated (with key names) before this.
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.size < 1 or self.max_pixels < 1:
            raise ValueError(f"size and max_pixels must be >= 1, got {self.size}, {self.max_pixels}")
        if not self.decode_timeout_s > 0:
            raise ValueError(f"decode_timeout_s must be > 0, got {self.decode_timeout_s}")
        if self.video:
            if self.frames < 1:
                raise ValueError(f"frames must be >= 1 for video, got {self.frames}")
            if self.pad not in PAD_POLICIES:
                raise ValueError(f"pad must be one of {PAD_POLICIES}, got {self.pad!r}")
            if not self.fps >= 0:
                raise ValueError(f"fps must be >= 0 (0: uniform), got {self.fps}")
            if self.max_decoded_pixels < 1:
                raise ValueError(f"max_decoded_pixels must be >= 1, got {self.max_decoded_pixels}")
        if self.text and self.context_length < 1:
            raise ValueError(f"context_length must be >= 1 with a tokenizer, got {self.context_length}")
        if self.text in ("hf", "chat") and not self.tokenizer:
            raise ValueError(f"text={self.text!r} needs the tokenizer (tokenizers' JSON) in the spec")
        if self.text == "chat" and not self.chat_template:
            raise ValueError("text='chat' needs the rendered conversation (chat_template)")
        if self.max_prompt_chars < 1 or self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_chars and max_prompt_tokens must be >= 1, got "
                             f"{self.max_prompt_chars}, {self.max_prompt_tokens}")

    @classmethod
    def from_config(cls, modality: str, data: DataConfig, text: dict | None = None) -> MediaSpec:
        """The one place config keys become decode settings (``data.image_size``,
        ``data.max_pixels``, ``data.decode_timeout_s``, ``data.max_prompt_*``,
        ``data.video.*``); ``text``: the scorer's tokenizer (``models.text_contract``), for
        prompt-conditioned scorers."""
        common = {"decode_timeout_s": data.decode_timeout_s,
                  "max_prompt_chars": data.max_prompt_chars,
                  "max_prompt_tokens": data.max_prompt_tokens, **(text or {})}
        if modality == "image":
            return cls("image", data.image_size, data.max_pixels, **common)
        return cls("video", data.image_size, data.max_pixels, **dataclasses.asdict(data.video),
                   **common)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MediaSpec:
        return cls(**d)  # a scorer.json written before the text fields reads as no prompt

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def video(self) -> bool:
        return self.modality == "video"

    @property
    def takes_prompt(self) -> bool:
        return bool(self.text)

    def prompt_problem(self, prompt: Any) -> str | None:
        """Why ``prompt`` is refused (over ``max_prompt_chars`` or ``max_prompt_tokens``), or
        None; cheap, no tokenizer runs. The caller quarantines or reports that row."""
        from .text import prompt_problem

        return prompt_problem(prompt, self.max_prompt_chars, self.max_prompt_tokens)

    def tokenize(self, prompts) -> np.ndarray:
        """Prompts -> int32 ``(N, context_length)`` token ids (media/text.py). A prompt over
        the limits (``prompt_problem``: its row is quarantined or reported) never reaches
        the tokenizer; it becomes the empty prompt, so the work stays bounded."""
        prompts = ["" if self.prompt_problem(p) else p for p in prompts]
        if self.text == "chat":
            from .vlm_text import chat_ids

            return chat_ids(prompts, self.context_length, self.tokenizer, self.chat_template,
                            self.pad_id)
        from .text import tokenize

        return tokenize(self.text, prompts, self.context_length, self.vocab_size, self.tokenizer)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one decoded item: ``(3, S, S)`` or ``(3, T, S, S)``."""
        s = self.size
        return (3, self.frames, s, s) if self.video else (3, s, s)

    @property
    def column(self) -> str:
        """Name of the encoded-bytes column consumers pass (``image`` or ``video``)."""
        return self.modality

    def decode(self, data: Any) -> tuple[np.ndarray, str, float | None]:
        """Encoded item -> (uint8 array of ``shape``, source size "WxH", consistency ``c``).

        ``c`` is ``None`` for images. Raises ``DecodeError`` with the reason, also when the
        decode runs past ``decode_timeout_s``.
        """
        data = _encoded_or_none(data, self.video)
        if not self.video:
            deadline = Deadline.start(self.decode_timeout_s)
            px, (w, h) = decode_image(data, self.size, self.max_pixels, deadline)
            return px, f"{w}x{h}", None
        from .video import decode_video, temporal_consistency

        px, info = decode_video(data, self)
        return px, f"{info['width']}x{info['height']}", temporal_consistency(px)


def _encoded_or_none(data: Any, video: bool) -> Any:
    """The item as the decoders take it, or ``DecodeError`` naming what it is instead: a
    consumer's DataFrame may hold a str, a number or NaN (pandas' missing value) in the
    media column."""
    if data is None or isinstance(data, (bytes, bytearray, memoryview)):
        return data
    if isinstance(data, float) and data != data:  # NaN: a missing value
        return None
    if isinstance(data, np.ndarray) and (data.dtype == np.uint8 or (video and data.dtype.kind in "OS")):
        return data
    if video and isinstance(data, (list, tuple)):
        return data  # a clip as a list of encoded frames
    kind = "encoded video bytes or a list of encoded frames" if video else "encoded image bytes"
    raise DecodeError(f"expected {kind}, got a {type(data).__name__} value"
                      + (" (a file path or URL? read the file into a binary column)"
                         if isinstance(data, str) else ""))
