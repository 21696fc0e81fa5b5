"""A published scorer checkpoint (PickScore's transformers CLIP directory, HPSv2's open_clip
``.pt``, or any checkpoint ``model.pretrained`` names) as a ``TrainedScorer`` without training,
with where it came from: the checkpoint's location and the SHA-256 of its files.

The scorer is built exactly as a run builds its initial weights (``model_options`` ->
``text_contract`` / ``MediaSpec`` -> ``initial_weights``, training/reference.py), so a
registered published version and a run that starts from the same checkpoint hold the same
construction options: the run's DPO reference or warm start is that version, tensor for tensor.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs

from ..config import RunConfig
from ..media.spec import MediaSpec
from ..runtime import storage
from ..training.models import RewardHead, clip_grid, model_options, text_contract
from ..training.reference import initial_scorer
from .scorer_files import TrainedScorer

EXAMPLE_PROMPT = "a photo of a cat"  # the logged input example's prompt (any text works)


@dataclass(frozen=True)
class PublishedScorer:
    scorer: TrainedScorer
    checkpoint: str
    """``model.pretrained`` as given (a file, a directory or a URI)."""
    sha256: str
    """One digest of the checkpoint: of the file itself, or for a directory of the sorted
    ``"<relative path> <file sha256>"`` lines of every file in it (``files``)."""
    files: dict[str, str] = field(default_factory=dict)
    """Relative path -> SHA-256 of each file read (a single file: its name); with
    ``arch:<name>``, the ``model.arch`` file (a ``clip`` checkpoint's open_clip config)."""


def _file_sha256(fs: pafs.FileSystem, path: str) -> str:
    h = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_digest(location: str) -> tuple[str, dict[str, str]]:
    """``(sha256, {relative path: sha256})`` of a checkpoint file or directory (local or URI).
    A directory's digest covers every file in it, so a changed tokenizer or config changes it
    as a changed weight file does."""
    fs, path = storage.filesystem(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        digest = _file_sha256(fs, path)
        return digest, {path.rsplit("/", 1)[-1]: digest}
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"model.pretrained: {location} does not exist; pass the "
                                "checkpoint file (.pt) or its Hugging Face model directory")
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = {i.path[len(path):].lstrip("/"): _file_sha256(fs, i.path)
             for i in sorted(infos, key=lambda i: i.path) if i.type == pafs.FileType.File}
    if not files:
        raise FileNotFoundError(f"model.pretrained: {location} is an empty directory")
    lines = "".join(f"{name} {digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest(), files


def published_scorer(cfg: RunConfig) -> PublishedScorer:
    """The scorer ``cfg.model`` names, with ``model.pretrained`` loaded (strictly, by the
    model's own loader) and nothing trained. ``cfg`` is a validated config."""
    m = cfg.model
    if not m.pretrained:
        raise ValueError("register-published needs model.pretrained=PATH: the published "
                         "checkpoint (a Hugging Face directory for hf-clip, the .pt for clip)")
    options = model_options(m.name, m.arch, RewardHead.from_config(m), pretrained=m.pretrained,
                            score_scale=m.score_scale, clip=clip_grid(cfg))
    spec = MediaSpec.from_config(cfg.modality, cfg.data, text_contract(m.name, options))
    scorer = initial_scorer(m.name, options, cfg.train.seed, spec, m.pretrained, m.weights)
    digest, files = checkpoint_digest(m.pretrained)
    if m.arch and storage.exists(m.arch):  # an open_clip model-config JSON: part of the source
        files = {**files, f"arch:{m.arch.rsplit('/', 1)[-1]}": checkpoint_digest(m.arch)[0]}
    source = f"published:{m.pretrained}"
    return PublishedScorer(TrainedScorer(scorer.model_name, scorer.state_dict, spec, 0.0,
                                         source, options),
                           m.pretrained, digest, files)


def example_input(spec: MediaSpec) -> bytes:
    """A real encoded item of the spec's size for the logged model's input example: a smooth
    colour gradient as PNG, or as an MP4 clip (GIF for odd sizes) of ``spec.frames`` frames."""
    s = spec.size
    ramp = np.linspace(0, 255, s, dtype=np.float64)
    frame = np.stack([np.tile(ramp, (s, 1)), np.tile(ramp[:, None], (1, s)),
                      np.full((s, s), 128.0)], axis=-1).astype(np.uint8)  # (S, S, 3)
    if spec.video:
        from ..media.video import encode_video

        frames = np.stack([np.roll(frame, t, axis=1) for t in range(spec.frames)])
        return encode_video(frames, "mp4" if s % 2 == 0 else "gif")
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, "PNG")
    return buf.getvalue()
