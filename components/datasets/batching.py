"""Rows per batch of the decode stage, sized by decode work and decoded bytes, not fixed rows.

Ray Data pays a fixed cost for every batch an actor decodes: the streaming executor submits
a task per bundle of input blocks, the actor turns each batch into numpy columns and its
result into an Arrow table with two tensor columns, and the block goes through the object
store to the next operator. With 32-row batches of 64 px images (~15 ms of decoding) that
cost was as large as the work: one actor reached 0.18-0.5 of a plain decode loop
(``benchmarks/decode_batch.py``). A batch must therefore carry enough decode *time* to
amortise it, and no more decoded *bytes* than the object store should hold per block.

    rows = clamp(TARGET_BATCH_S / est_pair_decode_s,
                 1, min(MAX_BATCH_ROWS, TARGET_BATCH_BYTES // decoded_pair_bytes))

``preprocess.batch_size``: ``0`` (``AUTO``) sizes batches this way; a positive value is an
explicit number of rows, used as given (also beyond the byte bound: the user asked for it).

Measurements (2-core VM shared with other jobs; ``benchmarks/decode_batch.py``, one actor,
steady pairs/s over a plain single-process loop; see its JSON for the medians):

* effective per-batch overhead at 32 rows, from ``1/steady - 1/plain`` per pair x rows:
  ~17 ms (64 px images, 969 vs 1,947 pairs/s, efficiency 0.50); the issue's 321 vs
  1,828 pairs/s is ~80 ms. It is not the actor's own per-batch code (``PairDecoder`` called
  in-process on 32-row batches costs ~1-2 ms more per batch than on 3,000-row ones): it is
  Ray's scheduling, transfer and contention for the 2 cores between batches.
* Efficiency, medians of 3 interleaved repeats (load average 12-17 on the 2 cores, so single
  runs range 0.5-1.2): 64 px images 32 rows 0.56, 256 rows 0.92, auto (1,267 rows) 0.90;
  8 x 32 x 32 clips 32 rows 0.54, 256 rows 0.94, auto (229 rows) 1.02.
  ``TARGET_BATCH_S = 0.5`` keeps a ~50 ms overhead under ~10% of a batch even on a loaded
  machine; batches much longer only delay the first output and make retries and the tail of
  a run (one actor finishing the last batch) coarser.
* Decode cost per pair (two items) on that machine, from the plain loop: 64 px image
  0.40-0.55 ms, 224 px image (from 320 px) 3.8 ms, 8 x 32 x 32 clip 2.2 ms,
  16 x 112 x 112 clip (from 24 x 128 x 128) 15 ms. A fixed cost per item (container
  open, codec set-up: ~0.05 ms per image, ~0.8 ms per clip) plus ~12 ns per decoded byte
  (resize, crop, copies) fits all four within ~20%: ``ITEM_FIXED_S`` and
  ``S_PER_DECODED_BYTE``. Faster machines decode faster, so batches then hold a bit less
  than 0.5 s: still far above the overhead.
* ``TARGET_BATCH_BYTES = 64 MiB`` of decoded uint8 per batch (both sides): half of Ray
  Data's ``target_max_block_size`` (128 MiB), so one batch is one block and never a spilled
  giant; it binds for large clips (16 x 224 x 224: 13 rows) and large images, not for the
  sample sizes (64 px images: ~30 MiB at the time target).
* ``MAX_BATCH_ROWS = 4096``: a bound on per-row Python objects (ids, prompts, reasons) of
  one batch when items are tiny and fast.

A batch larger than the read stage's blocks (``reading.READ_SLICE_ROWS`` rows) makes Ray
Data bundle several read blocks into one actor task, which is what removes the per-task
cost; the read blocks themselves can stay small (they bound the read tasks' memory).
"""

from __future__ import annotations

import math

from ..media.spec import MediaSpec

AUTO = 0
"""``preprocess.batch_size`` value meaning "size the decode batches automatically"."""

TARGET_BATCH_S = 0.5
"""Estimated decode seconds one batch should carry (amortises ~15-80 ms per batch)."""
TARGET_BATCH_BYTES = 64 * 2**20
"""Upper bound of decoded uint8 bytes (both sides of every pair) per batch."""
MAX_BATCH_ROWS = 4096
MIN_BATCH_ROWS = 1

ITEM_FIXED_S = {"image": 0.05e-3, "video": 0.8e-3}
"""Fixed decode cost of one item (open, parse header / container, codec set-up)."""
S_PER_DECODED_BYTE = 12e-9
"""Decode + resize + crop cost per decoded output byte (uint8 element)."""
S_PER_ENCODED_BYTE = 10e-9
"""Lower bound of decode cost per encoded source byte (~100 MB/s of compressed input): a
large source decoded to a small output costs more than its output size says."""


def item_bytes(spec: MediaSpec) -> int:
    """Decoded bytes of one item: uint8 ``(3, S, S)`` or ``(3, T, S, S)``."""
    return math.prod(spec.shape)


def per_pair_bytes(spec: MediaSpec) -> int:
    """Decoded bytes of one pair (chosen and rejected)."""
    return 2 * item_bytes(spec)


def estimated_pair_decode_s(spec: MediaSpec, sample_encoded_bytes: int | None = None) -> float:
    """Estimated seconds to decode one pair on one core (see the module docstring).

    ``sample_encoded_bytes``: typical encoded bytes of one *pair* (both sides), when known
    (e.g. from the shards' Parquet metadata); it can only raise the estimate."""
    est = 2 * ITEM_FIXED_S[spec.modality] + per_pair_bytes(spec) * S_PER_DECODED_BYTE
    if sample_encoded_bytes:
        est = max(est, sample_encoded_bytes * S_PER_ENCODED_BYTE)
    return est


def decode_batch_rows(
    spec: MediaSpec,
    preprocess_batch_size: int = AUTO,
    *,
    sample_encoded_bytes: int | None = None,
    target_batch_s: float = TARGET_BATCH_S,
    target_batch_bytes: int = TARGET_BATCH_BYTES,
    max_rows: int = MAX_BATCH_ROWS,
) -> int:
    """Rows per decode batch (``map_batches(batch_size=...)`` of the decode stage).

    ``preprocess_batch_size`` > 0: that many rows (an explicit override). ``0`` (``AUTO``):
    enough pairs for ``target_batch_s`` of estimated decoding, at most ``target_batch_bytes``
    of decoded pixels and ``max_rows`` rows, at least 1 row.
    """
    if preprocess_batch_size < 0:
        raise ValueError(f"preprocess.batch_size must be 0 (auto) or > 0, got {preprocess_batch_size}")
    if preprocess_batch_size > 0:
        return int(preprocess_batch_size)
    if not target_batch_s > 0 or target_batch_bytes < 1 or max_rows < 1:
        raise ValueError("target_batch_s, target_batch_bytes and max_rows must be positive")
    by_time = math.ceil(target_batch_s / estimated_pair_decode_s(spec, sample_encoded_bytes))
    by_bytes = target_batch_bytes // per_pair_bytes(spec)
    return max(MIN_BATCH_ROWS, min(by_time, by_bytes, max_rows))
