"""Sample preference pairs from the photographs shipped inside the scikit-image wheel.

The preferred image is a clean crop of a photo; the rejected one is the same crop degraded
(blur, noise, heavy JPEG, down/up-sampling). Photos are split between train and eval, so eval
accuracy measures generalisation to photos the model never saw. Nothing is downloaded.

Each pair is encoded as JPEG, PNG or WebP, drawn at random, unless ``image_format`` names one.
The photos are 191-1411 px (most about 512), so a crop at a realistic size (``size=1024``)
is upsampled: it has a real 1024 px photo's pixel count but less fine detail, so its files
are smaller than a camera photo's at that size.
"""

from __future__ import annotations

import io
import os
from importlib import resources

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageFilter

TRAIN_PHOTOS = (
    "astronaut.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "ihc.png",
    "camera.png", "brick.png", "grass.png", "coins.png", "motorcycle_left.png", "page.png",
)
EVAL_PHOTOS = (
    "chelsea.png", "retina.jpg", "gravel.png", "moon.png", "cell.png", "motorcycle_right.png",
)
DEGRADATIONS = ("blur", "noise", "jpeg", "downsample")
FORMATS = ("JPEG", "PNG", "WEBP")


def _format(image_format: str | None) -> str | None:
    """``"jpeg"``/``"png"``/``"webp"`` (any case) -> the Pillow name; None stays None (mixed)."""
    if image_format is None:
        return None
    fmt = image_format.upper()
    if fmt not in FORMATS:
        raise ValueError(f"image_format must be one of jpeg, png, webp (or None: mixed), "
                         f"got {image_format!r}")
    return fmt


def load_photo(name: str) -> Image.Image:
    path = resources.files("skimage") / "data" / name
    with path.open("rb") as f:
        img = Image.open(f)
        img.load()
    return img


def _crop(img: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    side = int(min(w, h) * rng.uniform(0.35, 0.9))
    x = int(rng.integers(0, w - side + 1))
    y = int(rng.integers(0, h - side + 1))
    return img.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.LANCZOS)


def degrade(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    size = img.size
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(1.2, 2.5))))
    if kind == "noise":
        arr = np.asarray(img.convert("RGB") if img.mode == "P" else img, dtype=np.float32)
        arr = arr + rng.normal(0.0, rng.uniform(15, 35), arr.shape)
        return Image.fromarray(arr.clip(0, 255).astype(np.uint8), mode=img.mode if img.mode != "P" else "RGB")
    if kind == "jpeg":
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=int(rng.integers(3, 9)))
        out = Image.open(io.BytesIO(buf.getvalue()))
        out.load()
        return out.convert(img.mode) if img.mode in ("L", "RGB") else out
    if kind == "downsample":
        f = int(rng.integers(3, 5))
        small = img.resize((max(1, size[0] // f), max(1, size[1] // f)), Image.Resampling.BILINEAR)
        return small.resize(size, Image.Resampling.NEAREST)
    raise ValueError(f"unknown degradation {kind!r}")


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB" if img.mode not in ("L", "RGB") else img.mode).save(buf, "JPEG", quality=92)
    elif fmt == "WEBP":
        img.save(buf, "WEBP", quality=95)
    else:
        img.save(buf, "PNG")
    return buf.getvalue()


def _pairs(photos: tuple[str, ...], n: int, size: int, seed: int, prefix: str,
           image_format: str | None = None) -> list[dict]:
    rng = np.random.default_rng(seed)
    loaded = {p: load_photo(p) for p in photos}
    rows = []
    for i in range(n):
        name = photos[i % len(photos)]
        photo = loaded[name]
        if photo.mode not in ("L", "RGB"):
            photo = photo.convert("RGB")
        clean = _crop(photo, size, rng)
        kind = DEGRADATIONS[int(rng.integers(len(DEGRADATIONS)))]
        bad = degrade(clean, kind, rng)
        fmt = FORMATS[int(rng.integers(len(FORMATS)))]  # drawn either way: same crops
        fmt = image_format or fmt
        rows.append(
            {
                "pair_id": f"{prefix}-{i:06d}",
                "prompt": f"a photo: {name.rsplit('.', 1)[0].replace('_', ' ')}",
                "chosen": encode(clean, fmt),
                "rejected": encode(bad, fmt),
                "photo": name,
                "degradation": kind,
                "_clean": clean,
            }
        )
    return rows


def _canonical_table(rows: list[dict]) -> pa.Table:
    return pa.table(
        {
            "pair_id": pa.array([r["pair_id"] for r in rows], pa.string()),
            "prompt": pa.array([r["prompt"] for r in rows], pa.string()),
            "chosen": pa.array([r["chosen"] for r in rows], pa.binary()),
            "rejected": pa.array([r["rejected"] for r in rows], pa.binary()),
            "photo": pa.array([r["photo"] for r in rows], pa.string()),
            "degradation": pa.array([r["degradation"] for r in rows], pa.string()),
        }
    )


def _pickapic_table(rows: list[dict], tie_fraction: float, seed: int) -> pa.Table:
    """Pick-a-Pic v2 columns. A share of rows become ties: two clean crops labelled 0.5/0.5."""
    rng = np.random.default_rng(seed + 1)
    cols: dict[str, list] = {k: [] for k in (
        "caption", "jpg_0", "jpg_1", "label_0", "label_1", "ranking_id", "model_0", "model_1",
        "has_label", "are_different",
    )}
    for r in rows:
        if rng.random() < tie_fraction:
            a, b, l0, l1 = r["chosen"], encode(r["_clean"].transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"), 0.5, 0.5
        elif rng.random() < 0.5:
            a, b, l0, l1 = r["chosen"], r["rejected"], 1.0, 0.0
        else:
            a, b, l0, l1 = r["rejected"], r["chosen"], 0.0, 1.0
        cols["caption"].append(r["prompt"])
        cols["jpg_0"].append(a)
        cols["jpg_1"].append(b)
        cols["label_0"].append(l0)
        cols["label_1"].append(l1)
        cols["ranking_id"].append(int(r["pair_id"].rsplit("-", 1)[1]) + (0 if r["pair_id"].startswith("train") else 10**6))
        cols["model_0"].append("clean" if l0 >= l1 else r["degradation"])
        cols["model_1"].append("clean" if l1 >= l0 else r["degradation"])
        cols["has_label"].append(True)
        cols["are_different"].append(True)
    return pa.table(
        {
            "caption": pa.array(cols["caption"], pa.string()),
            "jpg_0": pa.array(cols["jpg_0"], pa.binary()),
            "jpg_1": pa.array(cols["jpg_1"], pa.binary()),
            "label_0": pa.array(cols["label_0"], pa.float64()),
            "label_1": pa.array(cols["label_1"], pa.float64()),
            "ranking_id": pa.array(cols["ranking_id"], pa.int64()),
            "model_0": pa.array(cols["model_0"], pa.string()),
            "model_1": pa.array(cols["model_1"], pa.string()),
            "has_label": pa.array(cols["has_label"], pa.bool_()),
            "are_different": pa.array(cols["are_different"], pa.bool_()),
        }
    )


def write_image_pairs(
    out_dir: str,
    pairs: int = 600,
    size: int = 64,
    layout: str = "canonical",
    shards: int = 2,
    eval_share: float = 0.25,
    tie_fraction: float = 0.1,
    seed: int = 0,
    image_format: str | None = None,
) -> dict[str, list[str]]:
    """Write ``out_dir/train/*.parquet`` and ``out_dir/eval/*.parquet``; returns the paths.

    ``size``: side of the square images in px (1024 for realistic decode costs);
    ``image_format``: "jpeg", "png" or "webp" for every image, None for a random one per pair.
    """
    fmt = _format(image_format)
    if pairs < 8:
        raise ValueError("--pairs must be at least 8 (some for train, some for eval)")
    n_eval = max(4, int(pairs * eval_share))
    n_train = pairs - n_eval
    written: dict[str, list[str]] = {}
    for split, photos, n, n_shards in (
        ("train", TRAIN_PHOTOS, n_train, shards),
        ("eval", EVAL_PHOTOS, n_eval, 1),
    ):
        rows = _pairs(photos, n, size, seed + (0 if split == "train" else 1000), split, fmt)
        table = (
            _canonical_table(rows)
            if layout == "canonical"
            else _pickapic_table(rows, tie_fraction, seed)
        )
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        paths = []
        per = -(-table.num_rows // n_shards)
        for k in range(n_shards):
            part = table.slice(k * per, per)
            if part.num_rows == 0:
                continue
            p = os.path.join(out_dir, split, f"{split}-{k:05d}.parquet")
            pq.write_table(part, p, row_group_size=128)
            paths.append(p)
        written[split] = paths
    return written


# --- Prompt-dependent pairs ---------------------------------------------------------------
#
# In the sets above the preferred side is always the better-looking one, whatever the caption
# says. Here the caption decides: it names one of ``PROMPTED_PHOTOS``; the chosen image is a
# crop of that photo and the rejected one a crop of another photo, both given the same
# degradation (kind *and* strength) and the same encoding, so neither side looks better.
# Every photo is chosen exactly as often as it is rejected (see ``prompted_schedule``), so a
# scorer that ignores the caption is at chance by construction, while one that reads it can
# be right on every pair. Train and eval use the same photos (the task is to match caption
# and content, not to recognise unseen photos) with different crops, degradations and
# template draws.

PROMPTED_PHOTOS: dict[str, str] = {
    "astronaut.png": "an astronaut",
    "coffee.png": "a cup of coffee",
    "chelsea.png": "a cat",
    "rocket.jpg": "a rocket",
    "camera.png": "a man with a camera",
    "coins.png": "some coins",
}
PROMPT_TEMPLATES = ("a photo of {x}", "{x}", "an image showing {x}", "a picture of {x}")
# Applied identically to both sides; "none" leaves both clean.
PROMPTED_DEGRADATIONS = ("none",) + DEGRADATIONS


def prompted_schedule(n: int, k: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``n`` ordered (chosen, rejected) photo indices, ``chosen != rejected``, in random order.

    Built from blocks of ``k`` pairs ``(s[i], s[(i + d) % k])`` for a random permutation ``s``
    and shift ``d`` in ``1..k-1`` (the shifts cycle, each cycle in a new random order): in a
    block every photo is chosen once and rejected once. So when ``k`` divides ``n`` each photo
    is chosen exactly ``n / k`` times and rejected as often; otherwise the counts differ by at
    most one.
    """
    if k < 2:
        raise ValueError(f"need at least 2 photos, got {k}")
    out: list[tuple[int, int]] = []
    shifts: list[int] = []
    while len(out) < n:
        if not shifts:
            shifts = [int(d) for d in rng.permutation(np.arange(1, k))]
        d = shifts.pop()
        s = rng.permutation(k)
        block = [(int(s[i]), int(s[(i + d) % k])) for i in range(k)]
        out.extend(block[: n - len(out)])
    order = rng.permutation(len(out))
    return [out[j] for j in order]


def prompted_caption(photo: str, rng: np.random.Generator, templates=PROMPT_TEMPLATES) -> str:
    return templates[int(rng.integers(len(templates)))].format(x=PROMPTED_PHOTOS[photo])


def prompted_split_sizes(pairs: int, eval_share: float, k: int) -> tuple[int, int]:
    """``(n_train, n_eval)``: ``round(pairs * eval_share)`` eval pairs, the rest train. Raises
    ``ValueError`` unless train gives each of the ``k`` photos both roles and eval is non-empty."""
    if not 0.0 < eval_share < 1.0:
        raise ValueError(f"eval_share must be in (0, 1), got {eval_share}")
    n_eval = int(round(pairs * eval_share))
    n_train = pairs - n_eval
    if n_eval < 1 or n_train < k:
        raise ValueError(
            f"pairs={pairs} with eval_share={eval_share} gives {n_train} train / {n_eval} eval "
            f"pairs; need >= {k} train (each of the {k} photos chosen and rejected at least "
            f"once) and >= 1 eval"
        )
    return n_train, n_eval


def _crop_prompted(img: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    # Larger crops than ``_crop`` so that each side still shows what its photo is of.
    w, h = img.size
    side = int(min(w, h) * rng.uniform(0.5, 0.95))
    x = int(rng.integers(0, w - side + 1))
    y = int(rng.integers(0, h - side + 1))
    return img.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.LANCZOS)


def _prompted_image_rows(n: int, size: int, seed: int, split: str,
                         image_format: str | None = None) -> list[dict]:
    rng = np.random.default_rng(seed)
    names = list(PROMPTED_PHOTOS)
    loaded = {p: load_photo(p).convert("RGB") for p in names}
    rows = []
    for i, (a, b) in enumerate(prompted_schedule(n, len(names), rng)):
        good, bad = names[a], names[b]
        kind = PROMPTED_DEGRADATIONS[int(rng.integers(len(PROMPTED_DEGRADATIONS)))]
        fmt = FORMATS[int(rng.integers(len(FORMATS)))]  # drawn either way: same crops
        fmt = image_format or fmt
        deg_seed = int(rng.integers(2**63))  # same strength (and noise) on both sides
        sides = []
        for name in (good, bad):
            img = _crop_prompted(loaded[name], size, rng)
            if kind != "none":
                img = degrade(img, kind, np.random.default_rng(deg_seed))
            sides.append(encode(img, fmt))
        rows.append(
            {
                "pair_id": f"prompted-{split}-{i:06d}",
                "prompt": prompted_caption(good, rng),
                "chosen": sides[0],
                "rejected": sides[1],
                "photo_chosen": good,
                "photo_rejected": bad,
                "degradation": kind,
                "format": fmt,
            }
        )
    return rows


def _write_shards(
    table: pa.Table, folder: str, stem: str, n_shards: int, row_group_size: int
) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    n_shards = max(1, n_shards)
    per = -(-table.num_rows // n_shards)
    for k in range(n_shards):
        part = table.slice(k * per, per)
        if part.num_rows == 0:
            continue
        p = os.path.join(folder, f"{stem}-{k:05d}.parquet")
        pq.write_table(part, p, row_group_size=row_group_size)
        paths.append(p)
    return paths


def _string_or_binary_table(
    rows: list[dict], binary: tuple[str, ...] = ("chosen", "rejected")
) -> pa.Table:
    return pa.table(
        {
            k: pa.array([r[k] for r in rows], pa.binary() if k in binary else pa.string())
            for k in rows[0]
        }
    )


def write_prompted_image_pairs(
    out_dir: str,
    pairs: int = 600,
    size: int = 64,
    shards: int = 2,
    eval_share: float = 0.25,
    seed: int = 0,
    image_format: str | None = None,
) -> dict[str, list[str]]:
    """Write prompt-dependent pairs to ``out_dir/train/train-XXXXX.parquet`` (``shards`` files)
    and ``out_dir/eval/eval-00000.parquet``; returns the paths per split.

    Canonical layout (``pair_id``, ``prompt``, ``chosen``, ``rejected``) plus the metadata
    columns ``photo_chosen``, ``photo_rejected``, ``degradation`` (shared by both sides) and
    ``format``. ``round(pairs * eval_share)`` pairs go to eval. With the defaults (450 train,
    150 eval, 6 photos) every photo is chosen exactly as often as it is rejected in each split.
    Deterministic given ``seed``. ``image_format`` as for ``write_image_pairs``.
    """
    fmt = _format(image_format)
    n_train, n_eval = prompted_split_sizes(pairs, eval_share, len(PROMPTED_PHOTOS))
    written: dict[str, list[str]] = {}
    for split, n, n_shards, split_seed in (
        ("train", n_train, shards, seed),
        ("eval", n_eval, 1, seed + 1000),
    ):
        rows = _prompted_image_rows(n, size, split_seed, split, fmt)
        written[split] = _write_shards(
            _string_or_binary_table(rows), os.path.join(out_dir, split), split, n_shards, 128
        )
    return written
