"""MLflow's input example of a registered scorer: a real encoded item (and its prompt) from
the prepared eval data, so the logged signature and the served example are true bytes."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.dataset as pads

from ..datasets.contract import OK
from ..runtime import storage


def example_prompt(prepared_path: str) -> str:
    """The first usable pair's prompt ("" when it has none), for the model's input example."""
    table = storage.dataset(prepared_path).head(
        1, columns=["prompt"], filter=pads.field("status") == OK)
    values = table["prompt"].to_pylist()
    return (values[0] or "") if values else ""


def example_item(prepared_path: str, video: bool) -> bytes:
    """A real encoded item for the model's input example: the first usable pair's chosen
    image (from prepared data) as PNG, or its chosen clip as MP4 (GIF for odd sizes)."""
    import ray.data  # noqa: F401  (registers Ray's tensor extension type with pyarrow)
    from PIL import Image

    table = storage.dataset(prepared_path).head(
        1, columns=["chosen_px"], filter=pads.field("status") == OK
    )
    px = table["chosen_px"].combine_chunks().to_numpy()[0]  # uint8 (3, S, S) or (3, T, S, S)
    if video:
        from ..media.video import encode_video

        frames = np.ascontiguousarray(px.transpose(1, 2, 3, 0))  # (T, S, S, 3)
        return encode_video(frames, "mp4" if px.shape[-1] % 2 == 0 else "gif")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(px.transpose(1, 2, 0))).save(buf, "PNG")
    return buf.getvalue()
