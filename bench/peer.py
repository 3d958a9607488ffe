"""clinstream's HL7 v2 → FHIR R4 normalizer side by side with a peer: the LinuxForHealth converter.

The peer is `io.github.linuxforhealth:hl7v2-fhir-converter` (Java, Apache-2.0; the version in
`bench/peer/pom.xml`), fetched from Maven Central with `mvn` into
`~/.cache/clinstream/peer-hl7v2-fhir-converter-<version>/lib` on the first run, and driven by
`bench/peer/PeerConvert.java` (compiled here with `javac`). Both convert the same messages: every
message of every HL7 v2 corpus file (batch files split), refused ones included, in one run.

1. **Speed, messages/s per core.** Each side runs pinned to one CPU: ours in this process
   (`stream.normalize.normalize_hl7`, parse + map + fhir.resources validation, median of 3
   passes), the peer in its JVM (one warm-up pass for the JIT, then the median of 3 passes,
   the converting thread's CPU time).
2. **Coverage.** The share of messages each converts: ours, those it does not refuse (the MLLP
   listener would answer AE/AR); the peer's, those for which it returns a bundle. Then the
   share with at least one resource, and the share that is attributable: with a Patient that
   carries an identifier, i.e. a record someone can put in a chart.
3. **Field agreement** on the messages both convert whose type both map. Compared, per message:
   the Patient's birth date, gender, family name and identifier values; each Observation's
   value, unit, status and effective time (matched by code, in order); and the sets of codes of
   Observations, Conditions, allergies, immunizations, medications, procedures and reports,
   and each Encounter's class and start. Times are compared as instants (a time without a
   zone in the message is read in the normalizer's zone, UTC here, on both sides).
   Disagreements are counted by category, with two examples each (corpus test data, no PHI).

Usage: python bench/peer.py [--corpora ../shared/corpora] [--passes 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.normalize import every_message  # noqa: E402
from kernel.errors import Hl7Error  # noqa: E402
from kernel.hl7v2.parser import parse_message  # noqa: E402
from stream.normalize import normalize_hl7  # noqa: E402
from stream.validation import clear_memos  # noqa: E402

CORPORA = REPO.parent / "shared" / "corpora"
PEER = REPO / "bench" / "peer"
UTC_ZONE = ZoneInfo("UTC")
Resource = dict[str, Any]


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"the peer needs {name} on the PATH")
    return found


def peer_version() -> str:
    text = (PEER / "pom.xml").read_text()
    return re.search(r"<artifactId>hl7v2-fhir-converter</artifactId><version>([^<]+)<", text).group(1)  # type: ignore[union-attr]


def peer_classpath() -> str:
    """The peer's jars (fetched once) and the compiled driver."""
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clinstream"
    folder = home / f"peer-hl7v2-fhir-converter-{peer_version()}"
    lib = folder / "lib"
    if not lib.is_dir():
        staging = Path(tempfile.mkdtemp(dir=home, prefix="peer-"))
        subprocess.run(
            [
                _tool("mvn"),
                "-q",
                "-B",
                "-f",
                str(PEER / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging / 'lib'}",
            ],
            check=True,
        )
        staging.rename(folder)
    classes = folder / "classes"
    if not (classes / "PeerConvert.class").is_file() or (
        (classes / "PeerConvert.class").stat().st_mtime < (PEER / "PeerConvert.java").stat().st_mtime
    ):
        classes.mkdir(exist_ok=True)
        subprocess.run(
            [_tool("javac"), "-d", str(classes), "-cp", f"{lib}/*", str(PEER / "PeerConvert.java")],
            check=True,
        )
    return f"{lib}/*:{classes}"


def message_type(text: str) -> str:
    try:
        msg = parse_message(text)
    except Hl7Error:
        return "unreadable"
    return f"{msg.message_code}^{msg.trigger_event}"


def reason(text: str) -> str:
    """Our refusal of ``text``, as its error class and the first words of its message."""
    try:
        normalize_hl7(text, tz=UTC_ZONE)
    except Hl7Error as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split()[:6])}"
    return "converted"


def ours(messages: list[str], passes: int) -> tuple[list[list[Resource] | None], float, Counter[str]]:
    """Our resources per message (None: refused), the median seconds of a pass on one CPU (each
    pass from empty validation memos, as a fresh process), and the refusals by error class."""
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    results: list[list[Resource] | None] = []
    refusals: Counter[str] = Counter()
    times = []
    for _ in range(passes):
        results = []
        refusals.clear()
        clear_memos()
        started = time.perf_counter()
        for text in messages:
            try:
                results.append(normalize_hl7(text, tz=UTC_ZONE).resources)
            except Hl7Error as exc:
                results.append(None)
                refusals[type(exc).__name__] += 1
        times.append(time.perf_counter() - started)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return results, statistics.median(times), refusals


def peer(messages: list[str], passes: int) -> tuple[list[list[Resource] | None], float, Counter[str]]:
    """The peer's resources per message (None: no bundle), the median CPU seconds of a pass and
    its errors by exception class."""
    classpath = peer_classpath()
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "messages.txt", Path(tmp) / "out.txt"
        source.write_text("\x1c".join(messages), encoding="utf-8")
        run = subprocess.run(
            [
                _tool("taskset"),
                "-c",
                str(min(os.sched_getaffinity(0))),
                _tool("java"),
                "-Xmx1g",
                "-cp",
                classpath,
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=off",
                "PeerConvert",
                str(source),
                str(out),
                str(passes),
                "UTC",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        cpu = [float(line.split()[2]) for line in run.stdout.splitlines() if line.startswith("pass ")]
        results: list[list[Resource] | None] = []
        errors: Counter[str] = Counter()
        for line in out.read_text(encoding="utf-8").splitlines():
            status, _, body = line.partition("\t")
            if status == "OK":
                bundle = json.loads(body)
                results.append([e["resource"] for e in bundle.get("entry", []) if "resource" in e])
            else:
                results.append(None)
                errors[body] += 1
    return results, statistics.median(cpu), errors


# -- field agreement --------------------------------------------------------------------------


def instant(value: Any) -> str | None:
    """A FHIR date/dateTime as a comparable string: an instant in UTC when it has a time."""
    if not isinstance(value, str) or not value:
        return None
    if len(value) <= 10:
        return value
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat()


def codes(concept: Any) -> frozenset[str]:
    if not isinstance(concept, dict):
        return frozenset()
    return frozenset(
        str(c["code"]) for c in concept.get("coding", []) if isinstance(c, dict) and c.get("code")
    )


def number(value: Any) -> str | None:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return None


def of_type(resources: Iterable[Resource], *kinds: str) -> list[Resource]:
    return [r for r in resources if r.get("resourceType") in kinds]


def patient_fields(resources: list[Resource]) -> dict[str, Any]:
    patients = of_type(resources, "Patient")
    if not patients:
        return {}
    p = patients[0]
    names = p.get("name") or [{}]
    return {
        "Patient.birthDate": (p.get("birthDate") or "")[:10] or None,
        "Patient.gender": p.get("gender"),
        "Patient.name.family": (names[0].get("family") or "").upper() or None,
        "Patient.identifier": frozenset(
            str(i.get("value")) for i in p.get("identifier", []) if i.get("value")
        ),
    }


def code_sets(resources: list[Resource]) -> dict[str, Any]:
    def union(kinds: tuple[str, ...], key: str) -> frozenset[str]:
        return frozenset().union(*(codes(r.get(key)) for r in of_type(resources, *kinds)))

    return {
        "Observation.code": union(("Observation",), "code"),
        "Condition.code": union(("Condition",), "code"),
        "AllergyIntolerance.code": union(("AllergyIntolerance",), "code"),
        "Immunization.vaccineCode": union(("Immunization",), "vaccineCode"),
        "Medication*.code": union(
            ("MedicationRequest", "MedicationAdministration", "MedicationStatement"),
            "medicationCodeableConcept",
        )
        | union(("Medication",), "code"),
        "Procedure.code": union(("Procedure",), "code"),
        "DiagnosticReport.code": union(("DiagnosticReport",), "code"),
    }


def observation_fields(resources: list[Resource]) -> dict[tuple[str, int], dict[str, Any]]:
    out: dict[tuple[str, int], dict[str, Any]] = {}
    seen: Counter[str] = Counter()
    for r in of_type(resources, "Observation"):
        key = min(codes(r.get("code")), default="")
        n = seen[key]
        seen[key] += 1
        quantity = r.get("valueQuantity") or {}
        out[(key, n)] = {
            "Observation.value": number(quantity.get("value")) if quantity else r.get("valueString"),
            "Observation.unit": quantity.get("unit") or quantity.get("code") if quantity else None,
            "Observation.status": r.get("status"),
            "Observation.effective": instant(r.get("effectiveDateTime")),
        }
    return out


def encounter_fields(resources: list[Resource]) -> dict[str, Any]:
    encounters = of_type(resources, "Encounter")
    if not encounters:
        return {}
    e = encounters[0]
    klass = e.get("class") or {}
    return {
        "Encounter.class": klass.get("code") if isinstance(klass, dict) else None,
        "Encounter.period.start": instant((e.get("period") or {}).get("start")),
    }


def compare(a: list[Resource], b: list[Resource], tally: Callable[[str, Any, Any], None]) -> None:
    """Count each field both sides give a value for."""
    for left, right in (
        (patient_fields(a), patient_fields(b)),
        (code_sets(a), code_sets(b)),
        (encounter_fields(a), encounter_fields(b)),
    ):
        for field, value in left.items():
            other = right.get(field)
            if value and other:
                tally(field, value, other)
    ours_obs, peer_obs = observation_fields(a), observation_fields(b)
    for key in ours_obs.keys() & peer_obs.keys():
        for field, value in ours_obs[key].items():
            other = peer_obs[key][field]
            if value is not None and other is not None:
                tally(field, value, other)


def show(value: Any) -> str:
    return str(sorted(value) if isinstance(value, frozenset) else value)[:60]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora", type=Path, default=CORPORA)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("java") is None or shutil.which("javac") is None:
        raise SystemExit("the peer needs a JDK (java and javac)")
    messages = every_message(args.corpora)
    types = [message_type(m) for m in messages]
    mine, my_s, refusals = ours(messages, args.passes)
    theirs, their_s, errors = peer(messages, args.passes)
    n = len(messages)
    print(
        f"{n} corpus messages ({len(set(types))} message types); one CPU each; median of {args.passes} passes"
    )
    print(f"{'':34} {'messages/s/core':>15} {'converted':>10} {'non-empty':>10} {'attributable':>13}")
    for name, results, seconds in (
        ("clinstream (Python)", mine, my_s),
        (f"LinuxForHealth {peer_version()} (Java)", theirs, their_s),
    ):
        done = sum(1 for r in results if r is not None)
        filled = sum(1 for r in results if r)
        attributed = sum(1 for r in results if r and patient_fields(r).get("Patient.identifier"))
        print(
            f"{name:34} {n / seconds:15,.0f} {done:4} {done / n:5.1%} {filled:4} {filled / n:5.1%}"
            f" {attributed:6} {attributed / n:6.1%}"
        )
    print(f"speed ratio clinstream / peer: {their_s / my_s:.2f}x")
    both_types = {t for t, a, b in zip(types, mine, theirs, strict=True) if a is not None and b is not None}
    only_ours = Counter(t for t, a, b in zip(types, mine, theirs, strict=True) if a is not None and b is None)
    only_peer = Counter(t for t, a, b in zip(types, mine, theirs, strict=True) if a is None and b is not None)
    print(f"converted by ours only, by type: {dict(only_ours.most_common())}")
    print(f"converted by the peer only, by type: {dict(only_peer.most_common())}")
    print(f"our refusals by error: {dict(refusals.most_common())}")
    print(f"peer failures by exception: {dict(errors.most_common())}")
    why = Counter(
        (t, reason(m))
        for t, m, a, b in zip(types, messages, mine, theirs, strict=True)
        if a is None and b is not None
    )
    print(f"why ours refused what the peer converted: {dict(why.most_common())}")
    agree: Counter[str] = Counter()
    total: Counter[str] = Counter()
    examples: dict[str, list[tuple[str, str]]] = defaultdict(list)

    def tally(field: str, value: Any, other: Any) -> None:
        total[field] += 1
        if value == other:
            agree[field] += 1
        elif len(examples[field]) < 2:
            examples[field].append((show(value), show(other)))

    compared = 0
    for kind, a, b in zip(types, mine, theirs, strict=True):
        if a is not None and b is not None and kind in both_types:
            compared += 1
            compare(a, b, tally)
    print(f"\nfield agreement on {compared} messages both converted ({len(both_types)} types):")
    print(f"  {'field':26} {'agree':>7} {'of':>6} {'share':>7}  examples (ours | peer)")
    for field in sorted(total, key=lambda f: agree[f] / total[f]):
        shown = "; ".join(f"{x} | {y}" for x, y in examples[field])
        print(f"  {field:26} {agree[field]:7} {total[field]:6} {agree[field] / total[field]:7.1%}  {shown}")
    everything = sum(total.values())
    print(
        f"  {'all fields':26} {sum(agree.values()):7} {everything:6} {sum(agree.values()) / everything:7.1%}"
    )


if __name__ == "__main__":
    main()
