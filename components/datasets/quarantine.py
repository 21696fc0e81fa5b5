"""How every row ended: counts per split (read = used + quarantined + excluded) and the
quarantine file of the rows that could not be used, with their reasons."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from ..runtime import storage
from .contract import QUARANTINED, DataError

if TYPE_CHECKING:
    from .prepare import PreparedData


@dataclass
class RowCounts:
    """rows read = used + quarantined + excluded, per dataset."""

    read: int = 0
    used: int = 0
    quarantined: int = 0
    excluded: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "used": self.used,
            "quarantined": self.quarantined,
            "excluded": self.excluded,
            "reasons": dict(self.reasons),
        }


def write_quarantine(prepared: list[PreparedData], path: str) -> int:
    """All quarantined rows of the given datasets -> one Parquet file; returns the count."""
    cols = ["pair_id", "prompt", "shard", "row", "split", "reason", "meta"]
    tables = []
    for p in prepared:
        d = storage.dataset(p.path)
        tables.append(d.to_table(columns=cols, filter=pc.field("status") == QUARANTINED))
    table = pa.concat_tables(tables) if tables else pa.table({c: [] for c in cols})
    storage.write_table(table, path)
    return table.num_rows


def check_quarantine(counts: dict[str, RowCounts], max_fraction: float) -> None:
    for split, c in counts.items():
        if c.read and c.quarantined / c.read > max_fraction:
            raise DataError(
                f"{split} data: {c.quarantined} of {c.read} rows quarantined "
                f"({c.quarantined / c.read:.1%}), over data.max_quarantine_fraction="
                f"{max_fraction}. Reasons: {json.dumps(c.reasons)}. See quarantine.parquet "
                "for the rows; fix the data or raise the limit."
            )
