"""Rows per decode batch (components/datasets/batching.py): pure arithmetic, no Ray."""

import pytest

from components.datasets.batching import (
    AUTO,
    MAX_BATCH_ROWS,
    TARGET_BATCH_BYTES,
    decode_batch_rows,
    estimated_pair_decode_s,
    per_pair_bytes,
)
from components.media.spec import MediaSpec


def image(size: int) -> MediaSpec:
    return MediaSpec("image", size, 10**9)


def video(size: int, frames: int) -> MediaSpec:
    return MediaSpec("video", size, 10**9, frames=frames)


def test_decoded_bytes_of_a_pair():
    assert per_pair_bytes(image(64)) == 2 * 3 * 64 * 64
    assert per_pair_bytes(video(32, 8)) == 2 * 3 * 8 * 32 * 32


def test_tiny_images_get_far_more_than_32_rows():
    # The issue: 32 rows of 64 px images is mostly per-batch overhead.
    assert decode_batch_rows(image(64), AUTO) >= 512


def test_rows_never_grow_with_item_size():
    rows = [decode_batch_rows(image(s)) for s in (16, 32, 64, 128, 224, 512, 1024, 4096)]
    assert rows == sorted(rows, reverse=True)
    clips = [decode_batch_rows(video(s, t)) for t in (4, 8, 16, 32) for s in (32, 112, 224)]
    sizes = [per_pair_bytes(video(s, t)) for t in (4, 8, 16, 32) for s in (32, 112, 224)]
    by_size = [r for _, r in sorted(zip(sizes, clips, strict=True))]
    assert by_size == sorted(by_size, reverse=True)


@pytest.mark.parametrize("spec", [image(64), image(224), image(2048), video(32, 8),
                                  video(112, 16), video(224, 16), video(512, 64)])
def test_decoded_bytes_per_batch_are_bounded(spec):
    rows = decode_batch_rows(spec)
    assert 1 <= rows <= MAX_BATCH_ROWS
    # At most the byte target, unless a single pair is larger than it (then one row).
    assert rows * per_pair_bytes(spec) <= TARGET_BATCH_BYTES or rows == 1
    assert decode_batch_rows(spec, target_batch_bytes=8 * 2**20) * per_pair_bytes(spec) <= max(
        8 * 2**20, per_pair_bytes(spec))


def test_a_pair_larger_than_the_byte_target_is_one_row():
    assert decode_batch_rows(video(1024, 64)) == 1


def test_explicit_batch_size_is_used_as_given():
    assert decode_batch_rows(image(64), 32) == 32
    assert decode_batch_rows(video(224, 16), 500) == 500  # beyond the byte bound: asked for
    with pytest.raises(ValueError):
        decode_batch_rows(image(64), -1)


def test_video_gets_fewer_rows_than_tiny_images():
    assert decode_batch_rows(video(32, 8)) < decode_batch_rows(image(64))
    assert decode_batch_rows(video(112, 16)) < decode_batch_rows(image(224))


def test_time_target_and_encoded_size():
    spec = image(64)
    assert decode_batch_rows(spec, target_batch_s=0.05) < decode_batch_rows(spec)
    # A large source decoded to 64 px costs more per pair: fewer rows carry the same time.
    assert estimated_pair_decode_s(spec, 4_000_000) > estimated_pair_decode_s(spec)
    assert decode_batch_rows(spec, sample_encoded_bytes=4_000_000) < decode_batch_rows(spec)
    assert decode_batch_rows(spec, sample_encoded_bytes=10) == decode_batch_rows(spec)
