"""The dataset card written beside every export (pure): what is in it and how it was made.

No wall-clock time goes into the card: the same snapshot and key give the same card, byte
for byte, so its hashes identify the dataset.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from exports import deid
from exports.datasets import Row, date_range

CARD_VERSION = 2
_DATE_NOTES: dict[deid.Mode, str] = {
    "shifted": "dates are shifted per patient",
    "safe-harbor": "years only",
}


def card(
    kind: str,
    rows: Sequence[Row],
    files: Mapping[str, str],
    *,
    filters: Mapping[str, Any],
    source: Mapping[str, Any],
    key_id: str | None,
    mode: deid.Mode = "shifted",
) -> dict[str, Any]:
    """The card of one export: counts, date range, filters, method, hashes and source offsets.

    ``files`` maps each data file's name to its SHA-256; ``key_id`` names the
    de-identification key (a hash of it, never the key; None for Safe Harbor, which has none);
    ``mode`` the de-identification mode that made it."""
    first, last = date_range(rows)
    tasks = Counter(str(r["task"]) for r in rows if "task" in r)
    patients = {str(r["patient"]) for r in rows if "patient" in r} or {str(r["id"]) for r in rows}
    body = {
        "card_version": CARD_VERSION,
        "dataset": kind,
        "rows": len(rows),
        "patients": len(patients) if rows else 0,
        "tasks": dict(sorted(tasks.items())),
        "date_range": {"first": first, "last": last, "note": _DATE_NOTES[mode]},
        "filters": dict(filters),
        "deidentification": {
            "mode": mode,
            "method": deid.METHODS[mode],
            "version": deid.VERSION,
            "key_id": key_id,
        },
        "source": dict(source),
        "files": dict(sorted(files.items())),
    }
    body["content_sha256"] = hashlib.sha256(
        "".join(f"{name}:{digest}\n" for name, digest in sorted(files.items())).encode()
    ).hexdigest()
    return body


def card_json(body: Mapping[str, Any]) -> str:
    """The card as canonical JSON (sorted keys, one trailing newline)."""
    return json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def card_markdown(body: Mapping[str, Any]) -> str:
    """The card for people: the same facts as a short Markdown page."""
    dates, how = body["date_range"], body["deidentification"]
    lines = [
        f"# clinstream dataset: {body['dataset']}",
        "",
        f"- rows: {body['rows']} from {body['patients']} patients",
        f"- dates ({dates['note']}): {dates['first']} to {dates['last']}",
        f"- de-identification, mode {how['mode']}: {how['method']} "
        f"(version {how['version']}, key {how['key_id'] or 'none'})",
        f"- filters: {json.dumps(body['filters'], sort_keys=True)}",
        f"- content SHA-256: `{body['content_sha256']}`",
    ]
    if body["tasks"]:
        lines.append("- tasks: " + ", ".join(f"{k} {v}" for k, v in body["tasks"].items()))
    lines += ["", "| file | SHA-256 |", "| --- | --- |"]
    lines += [f"| {name} | `{digest}` |" for name, digest in body["files"].items()]
    lines += ["", "Source (topic: end offset per partition when read):", ""]
    lines += [f"- {topic}: {json.dumps(ends, sort_keys=True)}" for topic, ends in body["source"].items()]
    return "\n".join(lines) + "\n"


def key_id(key: bytes) -> str:
    """A short public name of a key: which key made a dataset, without revealing it."""
    return hashlib.sha256(b"clinstream-deid-key-id\x1f" + key).hexdigest()[:12]
