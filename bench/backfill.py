"""`clinstream backfill` on 2 cores: how fast history goes in, and what it does to live alerts.

Starts `clinstream up` as its own process on a fresh data directory (`bench/alerts.py`'s
`clinstream_up`). Then, on that one deployment:

1. **Live alone.** Lab panels at --live-rate msg/s for --seconds (`bench/alerts.py`'s
   `event_to_alert`): event → alert p50/p95/p99.
2. **Backfill alone.** The corpus' Synthea bundles (40 patients) as a FHIR Bulk Data export (one
   NDJSON file per type, written here from the bundles), sent by `clinstream backfill`'s client at
   no pace limit: units/s, resources/s, and how long after the last unit the index had every
   patient's record.
3. **Both at once.** The same export again under other patient ids, at --rate units/s, while
   the live panels run again: live p99 with a backfill going on, the backfill's rate, and how
   often the deployment told it to wait (429: a live record reached decision support later
   than `CLINSTREAM_CDS__LIVE_FIRST_MS`).

Usage: python bench/backfill.py [--rate 2] [--live-rate 25] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from bench.alerts import clinstream_up, event_to_alert  # noqa: E402
from connectors.backfill import read  # noqa: E402
from connectors.backfill_client import Target, send_plan  # noqa: E402

TOKEN_ENV = "CLINSTREAM_HTTP__API_TOKEN"  # noqa: S105 - the variable's name, not a secret


def bulk_export(bundles: list[Path], folder: Path, tag: str) -> tuple[Path, int, list[str]]:
    """One NDJSON file per type from Synthea bundles, ids prefixed with ``tag`` (so a second
    export is other patients); (folder, resources, patient ids)."""
    by_type: dict[str, list[dict[str, object]]] = defaultdict(list)
    patients = []
    for path in bundles:
        entries = json.loads(path.read_text())["entry"]
        named = {
            e["fullUrl"]: f"{e['resource']['resourceType']}/{tag}{e['resource']['id']}"[:200] for e in entries
        }
        for entry in entries:
            text = json.dumps(entry["resource"])
            for urn, ref in named.items():
                text = text.replace(f'"{urn}"', f'"{ref}"')
            resource = json.loads(text)
            resource["id"] = f"{tag}{resource['id']}"[:64]
            if resource["resourceType"] == "Patient":
                resource.pop("identifier", None)  # other patients: not linked to the first export's
                patients.append(str(resource["id"]))
            by_type[str(resource["resourceType"])].append(resource)
    folder.mkdir(parents=True)
    for kind, resources in by_type.items():
        (folder / f"{kind}.ndjson").write_text("".join(json.dumps(r) + "\n" for r in resources))
    return folder, sum(len(r) for r in by_type.values()), patients


async def indexed(base: str, token: str, patients: list[str], timeout_s: float = 600) -> float:
    """Seconds until every patient's timeline answers with entries."""
    start = time.perf_counter()
    left = set(patients)
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as http:
        while left and time.perf_counter() - start < timeout_s:
            for patient in sorted(left):
                found = await http.get(f"/patients/{patient}/timeline?limit=1")
                if found.status_code == 200 and found.json()["entries"]:
                    left.discard(patient)
            await asyncio.sleep(1)
    return time.perf_counter() - start if not left else float("nan")


async def backfill(
    folder: Path, base: str, token: str, rate: float, checkpoint: Path
) -> tuple[int, float, int]:
    """(units, seconds, how often the deployment said to wait: its live records were late)."""
    plan = read([folder])
    start = time.perf_counter()
    report = await send_plan(plan.units, Target(base, token), checkpoint, rate=rate)
    if report.stopped or report.refused:
        raise RuntimeError(f"backfill: {report.stopped or report.refused[:3]}")
    return len(plan.units), time.perf_counter() - start, report.throttled


async def main(args: argparse.Namespace) -> None:
    logging.disable(logging.WARNING)
    os.environ[TOKEN_ENV] = args.token  # `clinstream up` inherits it: the bench's calls authenticate
    synthea = sorted(p for p in (args.corpora / "fhir" / "smart-synthea-r4").glob("*.json") if "_" in p.name)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        first, resources, patients = bulk_export(synthea, work / "export-a", "a")
        second, _, patients_b = bulk_export(synthea, work / "export-b", "b")
        async with clinstream_up(work / "var") as up:
            base, token = f"http://127.0.0.1:{up.http_port}", args.token
            print(f"-- {len(synthea)} Synthea patients, {resources} resources per export", flush=True)
            print("live alone:", end=" ", flush=True)
            await event_to_alert(up, args.live_rate, round(args.live_rate * args.seconds))
            units, took, _ = await backfill(first, base, token, 0.0, work / "a.jsonl")
            after = await indexed(base, token, patients)
            print(
                f"backfill alone: {units} units in {took:.1f} s = {units / took:.1f} units/s, "
                f"{resources / took:.0f} resources/s; every patient searchable {after:.1f} s after the "
                "last unit",
                flush=True,
            )
            print(f"live with a backfill at {args.rate:.0f} units/s:", end=" ", flush=True)
            task = asyncio.create_task(backfill(second, base, token, args.rate, work / "b.jsonl"))
            await event_to_alert(up, args.live_rate, round(args.live_rate * args.seconds), tag="B")
            units, took, waited = await task
            print(
                f"  the backfill beside it: {units} units in {took:.1f} s ({units / took:.1f} units/s), "
                f"told to wait {waited} times (live records late)",
                flush=True,
            )
            await indexed(base, token, patients_b)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rate",
        type=float,
        default=2.0,
        help="backfill units/s beside live traffic (2: the whole live window)",
    )
    parser.add_argument("--live-rate", type=float, default=25.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--token", default="bench-backfill-token")
    parser.add_argument(
        "--corpora", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpora"
    )
    asyncio.run(main(parser.parse_args()))
