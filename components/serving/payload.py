"""The wire formats of ``POST /invocations``.

JSON, as ``mlflow models serve`` takes it (clients need not change): the media column
base64-encoded, ``dataframe_split`` or ``dataframe_records``, an optional ``prompt`` column
and ``params``::

    {"dataframe_split": {"columns": ["image"], "data": [["<base64>"], ...]},
     "params": {"normalize": false}}

Binary (``Content-Type: application/x-visual-dpo-items``), for high request rates: no base64
(a third fewer bytes) and no JSON parse of the media. The body is a sequence of records, each::

    uint32 prompt_len | prompt (UTF-8, prompt_len bytes) | uint32 media_len | media bytes

big-endian, ``prompt_len`` 0 for a scorer that takes no prompt; ``?normalize=true`` in the URL.

Both answer JSON (``Response.as_json``): ``predictions`` in input order (None where the item
failed), ``errors`` (None where it was scored), the model and the version that scored it.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any

BINARY_CONTENT_TYPE = "application/x-visual-dpo-items"
_LEN = struct.Struct(">I")


class PayloadError(ValueError):
    """A request that cannot be read at all (HTTP 400); the message says how to fix it."""


@dataclass(frozen=True)
class Request:
    """One parsed request: encoded items, their prompts (None: no prompt column) and params."""

    items: list[bytes]
    prompts: list[str] | None
    normalize: bool = False


def encode_binary(items: list[bytes], prompts: list[str] | None = None) -> bytes:
    """The binary request body for ``items`` (and their prompts)."""
    if prompts is not None and len(prompts) != len(items):
        raise ValueError(f"{len(items)} items but {len(prompts)} prompts")
    parts = []
    for i, item in enumerate(items):
        prompt = (prompts[i] if prompts is not None else "").encode()
        parts += [_LEN.pack(len(prompt)), prompt, _LEN.pack(len(item)), item]
    return b"".join(parts)


def parse_binary(body: bytes, normalize: bool = False) -> Request:
    items, prompts, pos = [], [], 0
    try:
        while pos < len(body):
            (n,) = _LEN.unpack_from(body, pos)
            prompts.append(body[pos + 4 : pos + 4 + n].decode())
            pos += 4 + n
            (m,) = _LEN.unpack_from(body, pos)
            if pos + 4 + m > len(body):
                raise PayloadError(f"record {len(items)}: media length {m} runs past the body")
            items.append(body[pos + 4 : pos + 4 + m])
            pos += 4 + m
    except (struct.error, UnicodeDecodeError) as e:
        raise PayloadError(f"binary body: record {len(items)} is cut short or its prompt is not "
                           f"UTF-8 ({e}); see payload.encode_binary for the layout") from None
    return Request(items, prompts if any(prompts) else None, normalize)


def parse_json(body: bytes, column: str) -> Request:
    """MLflow's ``dataframe_split`` / ``dataframe_records`` with base64 media in ``column``."""
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PayloadError(f"the body is not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise PayloadError("expected a JSON object with dataframe_split or dataframe_records")
    if "dataframe_split" in doc:
        split = doc["dataframe_split"]
        columns, data = split.get("columns", []), split.get("data", [])
        rows = [dict(zip(columns, row, strict=False)) for row in data]
    elif "dataframe_records" in doc:
        rows = doc["dataframe_records"]
    else:
        raise PayloadError(f"expected dataframe_split or dataframe_records, got keys {sorted(doc)}; "
                           f'e.g. {{"dataframe_split": {{"columns": ["{column}"], '
                           '"data": [["<base64>"]]}}')
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise PayloadError("dataframe rows must be objects (records) or lists (split)")
    items = []
    for i, row in enumerate(rows):
        if column not in row:
            raise PayloadError(f"row {i}: no {column!r} column (base64-encoded bytes); "
                               f"got {sorted(row)}")
        try:
            items.append(base64.b64decode(row[column], validate=True))
        except (binascii.Error, TypeError, ValueError):
            raise PayloadError(f"row {i}: column {column!r} is not base64") from None
    prompts = [str(r["prompt"]) for r in rows] if rows and "prompt" in rows[0] else None
    params = doc.get("params") or {}
    return Request(items, prompts, bool(params.get("normalize", False)))


@dataclass
class Response:
    """The answer to one request; ``as_json`` is what HTTP callers get and handle callers too."""

    predictions: list[Any]
    errors: list[str | None]
    model: str
    model_version: str
    batch_sizes: list[int]  # per item: how many items its model call scored together

    def as_json(self) -> dict[str, Any]:
        return {"predictions": self.predictions, "errors": self.errors, "model": self.model,
                "model_version": self.model_version, "batch_sizes": self.batch_sizes}
