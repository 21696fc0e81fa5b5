"""The preprocessing actor that decodes both sides of each pair, and its crash journal.

Shapes: ``chosen_px`` and ``rejected_px`` are uint8 ``(3, S, S)`` per row, ``(N, 3, S, S)``
per batch; for video ``(3, T, S, S)`` and ``(N, 3, T, S, S)``, with each clip's temporal
consistency in ``chosen_c``/``rejected_c`` (float64). Float conversion happens on the
training device.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

import numpy as np
import pyarrow as pa

from ..media.image import DecodeError
from ..media.spec import MediaSpec
from ..runtime.test_faults import fault_plan
from .contract import OK, QUARANTINED

PAIR_COLUMNS = ["chosen_px", "rejected_px", "target", "margin", "weight"]
CONSISTENCY_COLUMNS = ["chosen_c", "rejected_c"]  # video only
PROMPT_COLUMN = "prompt_ids"  # int32 (L,) token ids: prompt-conditioned scorers only


# A row whose decode kills the actor process (a decoder segfault, the OOM killer) is tried
# this many times, then quarantined; Ray restarts the actor and retries its batch meanwhile,
# a bounded number of times (Ray Data's default is forever, which stalls the run).
DECODE_DEATHS_BEFORE_QUARANTINE = 2
DECODER_MAX_RESTARTS = 16


class DecodeJournal:
    """The item an actor is decoding, in a node-local file, so that the actor Ray restarts
    after a crash knows which item killed its predecessor (Ray keeps the actor id across
    restarts; the restart normally lands on the same node).

    One ``pwrite`` of a fixed-size record per item into an open file (a few microseconds; the
    page cache survives the process, which is all a crash needs); the death counts are
    written only when a restart finds an item in the journal."""

    RECORD = 64

    def __init__(self, directory: str, actor_id: str):
        os.makedirs(directory, exist_ok=True)
        base = os.path.join(directory, actor_id)
        self.deaths_path = base + ".deaths.json"
        self.deaths: dict[str, int] = {}
        if os.path.exists(self.deaths_path):
            with open(self.deaths_path) as f:
                self.deaths = json.load(f)
        if os.path.exists(base + ".current"):
            with open(base + ".current", "rb") as f:
                current = f.read().rstrip(b"\0").decode()
            if current:  # the predecessor died while decoding this item
                self.deaths[current] = self.deaths.get(current, 0) + 1
                with open(self.deaths_path, "w") as f:
                    json.dump(self.deaths, f)
        self.fd = os.open(base + ".current", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    @staticmethod
    def key(item: str) -> str:
        return hashlib.sha1(item.encode()).hexdigest()

    def start(self, key: str) -> None:
        os.pwrite(self.fd, key.encode().ljust(self.RECORD, b"\0"), 0)

    def done(self) -> None:
        os.pwrite(self.fd, b"\0" * self.RECORD, 0)


class PairDecoder:
    """Preprocessing actor: decodes both images (or clips) of each usable pair.

    Rows whose media (or, for a prompt-conditioned scorer, prompt: ``MediaSpec.prompt_problem``)
    cannot be used become ``quarantined`` with the reason; the encoded
    bytes are dropped after decoding so the object store carries only uint8 pixels. A row
    whose decode killed the actor ``DECODE_DEATHS_BEFORE_QUARANTINE`` times is quarantined
    without decoding it again.
    """

    def __init__(self, spec: dict, pinning: dict | None = None,
                 report_dir: str | None = None, journal_dir: str | None = None,
                 augment: dict | None = None, output_columns: list[str] | None = None):
        # First thing: pin to this actor's cores and cap its threads (runtime/pinning/role.py).
        import ray

        from ..runtime.pinning import pin_role

        pin_role(pinning, "preprocess", None, report_dir, import_torch=False)
        self.spec = MediaSpec.from_dict(spec)
        self.output_columns = output_columns
        self.augment = None
        if augment:
            from ..media.augment import PairAugment

            self.augment = PairAugment(**augment)
        self.journal = None
        if journal_dir:
            actor_id = ray.get_runtime_context().get_actor_id() or str(os.getpid())
            self.journal = DecodeJournal(journal_dir, actor_id)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["pair_id"])
        spec = self.spec
        chosen = np.zeros((n, *spec.shape), dtype=np.uint8)
        rejected = np.zeros((n, *spec.shape), dtype=np.uint8)
        c_chosen = np.zeros(n, dtype=np.float64)
        c_rejected = np.zeros(n, dtype=np.float64)
        status = np.array(batch["status"], dtype=object)
        reason = np.array(batch["reason"], dtype=object)
        sizes = np.array([""] * n, dtype=object)
        split = list(batch["split"])
        for i in range(n):
            if status[i] != OK:
                continue
            # Prompt limits first: cheap, and the tokenizer below never sees a refused prompt.
            problem = spec.prompt_problem(batch["prompt"][i]) if spec.takes_prompt else None
            if problem:
                status[i], reason[i] = QUARANTINED, problem
                continue
            if self.journal is not None:
                item = self.journal.key(f"{batch['shard'][i]}#{int(batch['row'][i])}")
                deaths = self.journal.deaths.get(item, 0)
                if deaths >= DECODE_DEATHS_BEFORE_QUARANTINE:
                    status[i] = QUARANTINED
                    reason[i] = (f"the decoder process died {deaths} times on this pair "
                                 "(a decoder crash, or out of memory)")
                    continue
                self.journal.start(item)
                _crash_for_tests(batch["pair_id"][i])
            # Training rows only: one augmentation draw for both sides of the pair.
            draw = (self.augment.draw(str(batch["pair_id"][i]), spec.size)
                    if self.augment is not None and split[i] == "train" else None)
            with self.augment.sampling(draw) if draw else contextlib.nullcontext():
                try:
                    chosen[i], c_size, c = spec.decode(batch["chosen"][i])
                except DecodeError as e:
                    status[i], reason[i] = QUARANTINED, f"chosen: {e.reason}"
                    continue
                try:
                    rejected[i], r_size, r = spec.decode(batch["rejected"][i])
                except DecodeError as e:
                    status[i], reason[i] = QUARANTINED, f"rejected: {e.reason}"
                    continue
            sizes[i] = f"{c_size},{r_size}"
            if spec.video:
                c_chosen[i], c_rejected[i] = c, r
            if draw is not None:
                chosen[i] = self.augment.apply(draw, chosen[i])
                rejected[i] = self.augment.apply(draw, rejected[i])
        if self.journal is not None:
            self.journal.done()
        from ray.data.extensions import ArrowTensorArray

        # Explicit types: a batch whose prompts are all null must still write a string column.
        columns = {
            "pair_id": pa.array(list(batch["pair_id"]), pa.string()),
            "prompt": pa.array(list(batch["prompt"]), pa.string()),
            "shard": pa.array(list(batch["shard"]), pa.string()),
            "row": pa.array(np.asarray(batch["row"], dtype=np.int64)),
            "meta": pa.array(list(batch["meta"]), pa.string()),
            "content_hash": pa.array(list(batch["content_hash"]), pa.string()),
            "target": pa.array(np.asarray(batch["target"], dtype=np.float64)),
            "margin": pa.array(np.asarray(batch["margin"], dtype=np.float64)),
            "weight": pa.array(np.asarray(batch["weight"], dtype=np.float64)),
            "split": pa.array(list(split), pa.string()),
            "status": pa.array(list(status), pa.string()),
            "reason": pa.array(list(reason), pa.string()),
            "source_sizes": pa.array(list(sizes), pa.string()),
            "chosen_px": ArrowTensorArray.from_numpy(chosen),
            "rejected_px": ArrowTensorArray.from_numpy(rejected),
        }
        if spec.video:
            columns.update(chosen_c=pa.array(c_chosen), rejected_c=pa.array(c_rejected))
        if spec.takes_prompt:  # tokenised once, here; both sides share the pair's prompt
            columns[PROMPT_COLUMN] = ArrowTensorArray.from_numpy(spec.tokenize(list(batch["prompt"])))
        table = pa.table(columns)
        if self.output_columns is not None:  # streaming: usable pairs only, training columns
            table = table.filter(pa.array(status == OK)).select(self.output_columns)
        return table


def _crash_for_tests(pair_id: str) -> None:
    """Test-only (runtime/test_faults.py): end this process at the planned pair."""
    if fault_plan().get("decode_crash_pair_id") == pair_id:
        os._exit(139)
