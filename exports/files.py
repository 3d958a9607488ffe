"""Writing an export to disk: JSON lines, Parquet and the dataset card, with their hashes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from exports.card import card, card_json, card_markdown
from exports.datasets import Row
from exports.deid import Mode


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_jsonl(path: Path, rows: Sequence[Row]) -> None:
    """One JSON object per line, keys sorted, UTF-8."""
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n")


def write_parquet(path: Path, rows: Sequence[Row]) -> None:
    """The same rows as one Parquet table (columns in sorted order, every value as in JSON)."""
    columns = sorted({k for row in rows for k in row})
    table = pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in rows]) if rows else pa.table({})
    pq.write_table(table, path, compression="zstd", write_statistics=False)


def write_export(
    out: Path,
    kind: str,
    rows: Sequence[Row],
    *,
    parquet: bool,
    filters: Mapping[str, Any],
    source: Mapping[str, Any],
    key_id: str | None,
    mode: Mode = "shifted",
) -> dict[str, Any]:
    """Write ``rows`` and the card under ``out``; the card (as a dict) is returned."""
    out.mkdir(parents=True, exist_ok=True)
    files = {f"{kind}.jsonl": write_jsonl}
    if parquet:
        files[f"{kind}.parquet"] = write_parquet
    hashes = {}
    for name, writer in files.items():
        writer(out / name, rows)
        hashes[name] = _sha256(out / name)
    body = card(kind, rows, hashes, filters=filters, source=source, key_id=key_id, mode=mode)
    (out / "dataset_card.json").write_text(card_json(body), encoding="utf-8")
    (out / "DATASET_CARD.md").write_text(card_markdown(body), encoding="utf-8")
    return body
