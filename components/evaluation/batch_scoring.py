"""Batch scoring for registry consumers: candidate images or clips -> scores (and ranks).

Ray Data reads candidate Parquet (a binary ``image`` column, or ``video`` for a video
scorer, plus any id/group columns),
decodes in the CPU preprocessing pool, scores in an actor pool that loads the model once per
actor (a GPU per actor when the cluster has GPUs) and writes Parquet with the input's
non-media columns, ``score`` and, with ``group_by``, ``rank`` within the group (1 = best).
Rows whose media cannot be used go to a quarantine Parquet with the reason. Decoding follows
the registered model's own ``MediaSpec``; a prompt-conditioned scorer reads each row's prompt
from ``prompt_column`` and tokenises it in the preprocessing actors, with its own tokenizer.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..datasets.contract import OK, QUARANTINED, DataError, Shard, row_group_units
from ..media.image import DecodeError
from ..media.spec import MediaSpec
from ..registry.scorer_files import TrainedScorer
from ..runtime.resources import CANDIDATE_SCORER_CPUS, READ_TASK_CPUS

OUTPUT_MARKER = "_visual_dpo_score"  # "_" prefix: Parquet readers skip it
QUARANTINE_MARKER = b"visual_dpo.written_by"  # key of the quarantine file's Parquet metadata
# Ranking shuffles (group, score, ids) rows by group: one partition per this many scored rows,
# at most Ray Data's default (200). A few thousand candidates then shuffle in one partition
# instead of 200 (7-8 s of scheduling on 2 cores for 72 rows).
ROWS_PER_RANK_PARTITION = 250_000


class OutputExists(ValueError):
    """The output path holds data that score did not write."""


def _read_candidates(batch: dict[str, np.ndarray], units: list) -> Iterator[pa.Table]:
    for i in batch["unit"]:
        shard, rg, offset = units[int(i)]
        with shard.filesystem.open_input_file(shard.path) as f:
            table = pq.ParquetFile(f).read_row_group(rg)
        n = table.num_rows
        table = table.append_column("_shard", pa.array([shard.uri] * n, pa.string()))
        yield table.append_column("_row", pa.array(np.arange(offset, offset + n), pa.int64()))


class CandidateDecoder:
    """Preprocessing actor: ``image``/``video`` bytes -> uint8 ``_px`` of the spec's shape and
    consistency ``_c`` (0 for images); bad rows flagged."""

    def __init__(self, spec: dict, prompt_column: str | None = None):
        self.spec = MediaSpec.from_dict(spec)
        self.prompt_column = prompt_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        from ray.data.extensions import ArrowTensorArray

        items = batch.column(self.spec.column).to_pylist()
        px = np.zeros((len(items), *self.spec.shape), np.uint8)
        consistency = np.zeros(len(items), np.float64)
        status, reason = [OK] * len(items), [""] * len(items)
        prompts = (batch.column(self.prompt_column).to_pylist() if self.spec.takes_prompt
                   else [None] * len(items))
        for i, data in enumerate(items):
            # A prompt over the limits is refused before any decode or tokenizer runs.
            problem = self.spec.prompt_problem(prompts[i]) if self.spec.takes_prompt else None
            if problem:
                status[i], reason[i] = QUARANTINED, problem
                continue
            try:
                px[i], _, c = self.spec.decode(data)
                consistency[i] = c or 0.0
            except DecodeError as e:
                status[i], reason[i] = QUARANTINED, e.reason
        out = batch.drop_columns([self.spec.column])
        out = out.append_column("_status", pa.array(status, pa.string()))
        out = out.append_column("_reason", pa.array(reason, pa.string()))
        out = out.append_column("_c", pa.array(consistency))
        if self.spec.takes_prompt:
            tokens = self.spec.tokenize(prompts)
            out = out.append_column("_tokens", ArrowTensorArray.from_numpy(tokens))
        return out.append_column("_px", ArrowTensorArray.from_numpy(px))


class CandidateScorer:
    """Scoring actor: builds the scorer once, adds ``score`` (NaN for bad rows)."""

    def __init__(self, scorer: TrainedScorer):
        import torch

        from ..training.models import build_scorer

        self.model = build_scorer(scorer.model_name, scorer.options)
        self.model.load_state_dict(scorer.state_dict)
        self.temporal_weight = scorer.temporal_weight
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from ..training.step import score_images

        px = batch.column("_px").combine_chunks().to_numpy()
        ok = np.array(batch.column("_status").to_pylist()) == OK
        score = np.full(len(px), np.nan)
        tokens = None
        if "_tokens" in batch.column_names:
            tokens = batch.column("_tokens").combine_chunks().to_numpy()
        if ok.any():
            with torch.no_grad():
                score[ok] = score_images(
                    self.model, torch.from_numpy(px[ok]), self.device,
                    tokens=None if tokens is None else torch.from_numpy(tokens[ok]),
                ).cpu().numpy()
        # The reward the model was trained with: s(x) + lambda * c(x) (lambda = 0 for images).
        score = score + self.temporal_weight * batch.column("_c").to_numpy()
        drop = ["_px", "_c"] + (["_tokens"] if tokens is not None else [])
        return batch.drop_columns(drop).append_column("score", pa.array(score, pa.float64()))


def _rank(group: pd.DataFrame, top_k: int | None) -> pd.DataFrame:
    group = group.sort_values("score", ascending=False, kind="stable")
    group["rank"] = np.arange(1, len(group) + 1)
    return group.head(top_k) if top_k else group


def check_candidates(shards: list[Shard], spec: MediaSpec, group_by: str | None,
                     prompt_column: str | None = None) -> int:
    """Read the shards' footers: the media column, ``group_by`` and, for a prompt-conditioned
    scorer, ``prompt_column`` exist. Returns the rows.

    Cheap (no data read), so it runs before Ray starts."""
    total = 0
    for shard in shards:
        with shard.filesystem.open_input_file(shard.path) as f:
            pf = pq.ParquetFile(f)
            names, total = pf.schema_arrow.names, total + pf.metadata.num_rows
        if spec.column not in names:
            raise DataError(f"{shard.uri}: no binary '{spec.column}' column to score with this "
                            f"{spec.modality} scorer; it has {names}")
        if group_by and group_by not in names:
            raise DataError(f"{shard.uri}: --group-by column {group_by!r} not found; it has {names}")
        if spec.takes_prompt and not prompt_column:
            raise DataError("this scorer is prompt-conditioned: pass --prompt-column NAME, the "
                            "column with each candidate's prompt")
        if spec.takes_prompt and prompt_column not in names:
            raise DataError(f"{shard.uri}: --prompt-column {prompt_column!r} not found; it has "
                            f"{names}")
    return total


@dataclass(frozen=True)
class ScoringOptions:
    """How ``score`` runs: the decode pool, the model actor's device, and the ranking."""

    decode_actors: int = 1
    cpus_per_actor: float = 1.0
    use_gpu: bool = False
    group_by: str | None = None
    """Rank within groups of this column (1 = best)."""
    top_k: int | None = None
    """With ``group_by``: keep the best K per group."""
    prompt_column: str | None = None
    """The column holding each candidate's prompt (prompt-conditioned scorers)."""
    batch_size: int = 64


def score_candidates(shards: list[Shard], output: str, quarantine_path: str,
                     scorer: TrainedScorer, total_rows: int,
                     opts: ScoringOptions) -> dict[str, int]:
    """Score ``shards`` (``total_rows`` rows, as ``check_candidates`` counted them before Ray
    started); one model actor, on a GPU when ``opts.use_gpu``."""
    import ray
    from ray.data import ActorPoolStrategy
    from ray.data.expressions import col

    spec = scorer.spec
    decode_actors, cpus_per_actor, use_gpu = opts.decode_actors, opts.cpus_per_actor, opts.use_gpu
    group_by, top_k, batch_size = opts.group_by, opts.top_k, opts.batch_size
    prompt_column = opts.prompt_column
    units = row_group_units(shards)
    total = total_rows
    ds = ray.data.from_items([{"unit": i} for i in range(len(units))])
    ds = ds.map_batches(_read_candidates, batch_size=1, batch_format="numpy",
                        fn_kwargs={"units": units}, num_cpus=READ_TASK_CPUS)
    ds = ds.map_batches(CandidateDecoder,
                        fn_constructor_kwargs={"spec": spec.to_dict(), "prompt_column": prompt_column},
                        batch_size=batch_size, batch_format="pyarrow",
                        compute=ActorPoolStrategy(min_size=1, max_size=decode_actors),
                        num_cpus=cpus_per_actor)
    ds = ds.map_batches(CandidateScorer, fn_constructor_kwargs={"scorer": scorer},
                        batch_size=batch_size,
                        batch_format="pyarrow", compute=ActorPoolStrategy(size=1),
                        num_cpus=0 if use_gpu else CANDIDATE_SCORER_CPUS,
                        num_gpus=1 if use_gpu else 0)
    scored = ds.materialize()  # pixels are dropped by now: ids, score and status only

    bad = scored.filter(expr=col("_status") == QUARANTINED).to_pandas()
    bad = bad.rename(columns={"_shard": "shard", "_row": "row", "_reason": "reason"})
    # An empty filter result may come back without columns: keep the quarantine file's shape.
    bad = bad.drop(columns=["_status", "score"], errors="ignore")
    for column in ("shard", "row", "reason"):
        if column not in bad:
            bad[column] = pd.Series(dtype="int64" if column == "row" else "object")
    write_quarantine(pa.Table.from_pandas(bad, preserve_index=False), quarantine_path)
    good = scored.filter(expr=col("_status") == OK).drop_columns(["_status", "_reason", "_shard", "_row"])
    n_scored = good.count()
    if n_scored + len(bad) != total:  # nothing is lost: every row read is scored or quarantined
        raise RuntimeError(f"scoring read {total} rows but scored {n_scored} and quarantined "
                           f"{len(bad)}: rows were lost")
    if group_by:
        grouped = good.groupby(group_by, num_partitions=rank_partitions(n_scored))
        good = grouped.map_groups(_rank, fn_kwargs={"top_k": top_k}, batch_format="pandas")
    shutil.rmtree(output, ignore_errors=True)
    os.makedirs(output)
    with open(os.path.join(output, OUTPUT_MARKER), "w") as f:
        f.write("written by visual-dpo score; a later score may replace this directory\n")
    good.write_parquet(output)
    written = pq.ParquetDataset(output).read(columns=["score"]).num_rows
    return {"read": total, "scored": n_scored, "quarantined": len(bad), "written": written}


def rank_partitions(rows: int) -> int:
    """Hash-shuffle partitions for ranking ``rows`` scored candidates by group."""
    from ray.data import DataContext

    most = DataContext.get_current().default_hash_shuffle_parallelism or 200
    return max(1, min(most, -(-rows // ROWS_PER_RANK_PARTITION)))


def write_quarantine(table: pa.Table, path: str) -> None:
    """The quarantined candidates, marked in the file's metadata as score's own, so that a
    later score may replace them (``check_quarantine``). A symbolic link there is replaced,
    never written through."""
    if os.path.islink(path):
        os.remove(path)
    metadata = {**(table.schema.metadata or {}), QUARANTINE_MARKER: b"visual-dpo score"}
    pq.write_table(table.replace_schema_metadata(metadata), path)


def check_quarantine(path: str, overwrite: bool) -> None:
    """Refuse to replace the quarantine file ``path`` when ``score`` did not write it, unless
    told to (``overwrite``, as for the output directory beside it)."""
    if not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.path.islink(path):
        raise OutputExists(f"{path} is a directory where --output's quarantine file goes; "
                           "remove it or choose another --output")
    if overwrite:
        return
    try:
        if not os.path.islink(path) and (pq.read_schema(path).metadata or {}).get(
                QUARANTINE_MARKER) == b"visual-dpo score":
            return
    except (pa.ArrowException, OSError):  # not Parquet, unreadable: not ours either
        pass
    raise OutputExists(
        f"{path} exists and was not written by visual-dpo score; it would be replaced by "
        "--output's quarantine file. Remove it, choose another --output, or pass --overwrite "
        "to replace it.")


def check_output(output: str, overwrite: bool) -> None:
    """Refuse to replace a directory (or file) that ``score`` did not write, unless told to."""
    if not os.path.exists(output):
        return
    if os.path.isdir(output) and (overwrite or not os.listdir(output)
                                  or os.path.exists(os.path.join(output, OUTPUT_MARKER))):
        return
    raise OutputExists(
        f"--output {output} exists and was not written by visual-dpo score; it would be "
        "deleted. Choose another --output, empty it, or pass --overwrite to replace it.")
