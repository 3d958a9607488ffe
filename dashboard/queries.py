"""What the ops dashboard shows, computed from what it reads: pure functions, no I/O.

The dashboard reads three things, never a stage's internals: the stages' Prometheus
metrics (`/metrics`), Kafka (consumer group offsets, the dead-letter, alert and feedback
topics) and the query API. Everything here turns those readings into the tables and
series the pages draw: rates and latency percentiles between two metric samples (the
way Prometheus' ``rate`` and ``histogram_quantile`` compute them), consumer lag,
dead-letter filters, identifiers masked for roles that may not see them, alert outcomes
and draft citations.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kernel.events import Alert, ClinicianFeedback, DeadLetter

Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]
QUANTILES = (0.5, 0.95, 0.99)
LAG_METRIC = "clinstream_consumer_lag"  # our own series: the sampler adds Kafka lag to each sample

# The stages as the Overview lists them, in pipeline order. MLLP's figures come from its ACK
# metrics; the consumers' from `kernel.kafka`'s stage metrics.
STAGE_ORDER = (
    "mllp",
    "fhir-ingress",
    "normalizer",
    "indexer",
    "cds",
    "notes",
    "outbound-mllp",
    "outbound-fhir",
)


@dataclass(frozen=True)
class Snapshot:
    """Every metric sample read at one moment (Unix time), summed over the scraped processes."""

    at: float
    values: Mapping[SeriesKey, float]

    def get(self, name: str, **labels: str) -> float:
        """The value of one series (0 when absent)."""
        return self.values.get((name, tuple(sorted(labels.items()))), 0.0)

    def matching(self, name: str) -> Iterable[tuple[dict[str, str], float]]:
        """Every series of the metric ``name``, with its labels."""
        for (metric, labels), value in self.values.items():
            if metric == name:
                yield dict(labels), value


def parse_metrics(texts: Iterable[str], at: float) -> Snapshot:
    """A snapshot of the Prometheus text expositions ``texts`` (one per stage process).

    Series with the same name and labels in two processes (two normalizer replicas) add up.
    """
    values: dict[SeriesKey, float] = defaultdict(float)
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                values[(sample.name, tuple(sorted(sample.labels.items())))] += float(sample.value)
    return Snapshot(at, dict(values))


def with_samples(snapshot: Snapshot, extra: Mapping[SeriesKey, float]) -> Snapshot:
    """``snapshot`` with more series (e.g. consumer lag read from Kafka at the same moment)."""
    return Snapshot(snapshot.at, {**snapshot.values, **extra})


def _increase(before: float, after: float) -> float:
    """A counter's increase; a drop means the process restarted and counted from zero."""
    return after - before if after >= before else after


def rate(prev: Snapshot | None, cur: Snapshot, name: str, by: str) -> dict[str, float]:
    """Per-second increase of counter ``name`` between two snapshots, summed by label ``by``.

    With no earlier snapshot there is no rate: every value is 0.
    """
    out: dict[str, float] = defaultdict(float)
    for labels, value in cur.matching(name):
        key = labels.get(by, "")
        if prev is None or cur.at <= prev.at:
            out[key] += 0.0
            continue
        before = prev.values.get((name, tuple(sorted(labels.items()))), 0.0)
        out[key] += _increase(before, value) / (cur.at - prev.at)
    return dict(out)


def totals(cur: Snapshot, name: str, by: str) -> dict[str, float]:
    """Counter ``name`` since its process started, summed by label ``by``."""
    out: dict[str, float] = defaultdict(float)
    for labels, value in cur.matching(name):
        out[labels.get(by, "")] += value
    return dict(out)


def _buckets(snapshot: Snapshot | None, name: str, by: str) -> dict[str, dict[float, float]]:
    out: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    if snapshot is None:
        return out
    for labels, value in snapshot.matching(f"{name}_bucket"):
        le = labels.get("le", "+Inf")
        out[labels.get(by, "")][math.inf if le == "+Inf" else float(le)] += value
    return out


def bucket_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile of a cumulative histogram (upper bound → count), interpolated
    linearly inside the bucket it falls in, as Prometheus' ``histogram_quantile``. None
    without observations; the highest finite bound when it falls in the +Inf bucket."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def quantiles(
    prev: Snapshot | None, cur: Snapshot, name: str, by: str, qs: Sequence[float] = QUANTILES
) -> dict[str, dict[float, float | None]]:
    """Latency quantiles of histogram ``name`` by label ``by``, over the observations made
    between the two snapshots (all since start when ``prev`` is None)."""
    now, before = _buckets(cur, name, by), _buckets(prev, name, by)
    out: dict[str, dict[float, float | None]] = {}
    for key, buckets in now.items():
        window = {b: _increase(before.get(key, {}).get(b, 0.0), c) for b, c in buckets.items()}
        out[key] = {q: bucket_quantile(q, window) for q in qs}
    return out


@dataclass(frozen=True)
class StageRow:
    """One stage on the Overview: throughput, latency, failures."""

    stage: str
    per_s: float
    total: float
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    dead_letters_per_s: float
    retries_per_s: float


def _stage_rank(stage: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage)


RATE_WINDOW_S = 60.0
LATENCY_WINDOW_S = 300.0
# Dead letters written at the edge carry the connector's name as their stage.
STAGE_ALIASES = {"connectors.mllp": "mllp", "connectors.fhir": "fhir-ingress"}


def window_start(history: Sequence[Snapshot], seconds: float) -> Snapshot | None:
    """The sample a window of ``seconds`` ending at the newest sample starts from: the newest
    one at least that old, else the oldest kept (None with fewer than two samples)."""
    if len(history) < 2:
        return None
    newest = history[-1].at
    for snap in reversed(history[:-1]):
        if newest - snap.at >= seconds:
            return snap
    return history[0]


def _aliased(values: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for stage, v in values.items():
        out[STAGE_ALIASES.get(stage, stage)] += v
    return dict(out)


def stage_rows(prev: Snapshot | None, cur: Snapshot, latency_from: Snapshot | None = None) -> list[StageRow]:
    """Messages per second and failure rates since ``prev``, p50/p95/p99 latency since
    ``latency_from`` (default ``prev``), of every stage.

    MLLP's latency is receipt → ACK sent (broker confirmed); a consumer stage's is the
    event's age when the stage finished it (received at the edge → side effect confirmed),
    so a stage falling behind shows as a rising p95 before its lag alarms anyone.
    """
    since = latency_from if latency_from is not None else prev
    per_s = rate(prev, cur, "clinstream_stage_records_total", "stage")
    total = totals(cur, "clinstream_stage_records_total", "stage")
    lat = quantiles(since, cur, "clinstream_stage_latency_seconds", "stage")
    mllp_rates = rate(prev, cur, "clinstream_mllp_messages_total", "ack_code")
    mllp_total = totals(cur, "clinstream_mllp_messages_total", "ack_code")
    if mllp_total:
        per_s["mllp"] = sum(mllp_rates.values())
        total["mllp"] = sum(mllp_total.values())
        lat["mllp"] = quantiles(since, cur, "clinstream_mllp_ack_seconds", "_all").get("", {})
    dead = _aliased(rate(prev, cur, "clinstream_dead_letters_total", "stage"))
    retries = rate(prev, cur, "clinstream_consumer_retries_total", "stage")
    rows = []
    for stage in sorted(set(total) | set(dead) | set(retries), key=_stage_rank):
        q = lat.get(stage, {})
        rows.append(
            StageRow(
                stage,
                per_s.get(stage, 0.0),
                total.get(stage, 0.0),
                q.get(0.5),
                q.get(0.95),
                q.get(0.99),
                dead.get(stage, 0.0),
                retries.get(stage, 0.0),
            )
        )
    return rows


@dataclass(frozen=True)
class AckRow:
    """ACK codes one sender received over MLLP."""

    sender: str
    code: str
    total: float
    per_s: float


def ack_mix(prev: Snapshot | None, cur: Snapshot) -> list[AckRow]:
    """Every (sender, ACK code) pair since start, busiest sender first."""
    rows = [
        AckRow(labels.get("sender", ""), labels.get("ack_code", ""), total, per_s)
        for labels, total, per_s in _by_sender(prev, cur, "clinstream_mllp_messages_total")
    ]
    busiest = Counter[str]()
    for r in rows:
        busiest[r.sender] += int(r.total)
    return sorted(rows, key=lambda r: (-busiest[r.sender], r.sender, r.code))


@dataclass(frozen=True)
class QualityRow:
    """Data-quality issues of one code from one sender, in messages that converted anyway."""

    sender: str
    code: str
    severity: str
    total: float
    per_s: float


def quality_issues(prev: Snapshot | None, cur: Snapshot) -> list[QualityRow]:
    """Every (sender, issue code) pair since start, most frequent first: what a feed gets wrong."""
    rows = [
        QualityRow(labels.get("sender", ""), labels.get("code", ""), labels.get("severity", ""), total, per_s)
        for labels, total, per_s in _by_sender(prev, cur, "clinstream_data_quality_issues_total")
    ]
    return sorted(rows, key=lambda r: (-r.total, r.sender, r.code))


def _by_sender(prev: Snapshot | None, cur: Snapshot, name: str) -> list[tuple[dict[str, str], float, float]]:
    """(labels, total since start, per second over the window) of every series of a counter."""
    out = []
    for labels, value in cur.matching(name):
        before = prev.values.get((name, tuple(sorted(labels.items()))), 0.0) if prev else 0.0
        span = cur.at - prev.at if prev and cur.at > prev.at else 0.0
        out.append((labels, value, _increase(before, value) / span if span else 0.0))
    return out


@dataclass(frozen=True)
class LagRow:
    """One consumer group's position in one partition."""

    group: str
    topic: str
    partition: int
    committed: int | None
    end: int

    @property
    def lag(self) -> int:
        """Records written and not yet committed by the group (all of them before a first commit)."""
        return self.end - (self.committed or 0)


def lag_rows(
    committed: Mapping[tuple[str, str, int], int | None], ends: Mapping[tuple[str, int], int]
) -> list[LagRow]:
    """Lag of each (group, topic, partition) the group has a position in, or a topic it reads."""
    rows = [
        LagRow(group, topic, partition, offset, ends.get((topic, partition), 0))
        for (group, topic, partition), offset in committed.items()
    ]
    return sorted(rows, key=lambda r: (r.group, r.topic, r.partition))


def lag_by_group(rows: Iterable[LagRow]) -> dict[str, int]:
    """Total lag of each consumer group."""
    out: dict[str, int] = defaultdict(int)
    for r in rows:
        out[r.group] += max(0, r.lag)
    return dict(out)


def lag_samples(rows: Iterable[LagRow]) -> dict[SeriesKey, float]:
    """Lag as series to store with a metrics snapshot, so its history can be charted."""
    return {(LAG_METRIC, (("group", g),)): float(v) for g, v in lag_by_group(rows).items()}


def timeline(history: Sequence[Snapshot], value: str, *, by: str = "stage") -> list[dict[str, Any]]:
    """Long-form rows (time, series, value) for a chart of the last samples.

    ``value``: ``"throughput"`` (stage messages per second), ``"p95"`` (stage latency, s),
    ``"lag"`` (records per consumer group) or ``"dead_letters"`` (per second, by stage).
    """
    rows: list[dict[str, Any]] = []
    for prev, cur in itertools.pairwise(history):
        when = datetime.fromtimestamp(cur.at).astimezone()
        if value == "throughput":
            points = {r.stage: r.per_s for r in stage_rows(prev, cur)}
        elif value == "p95":
            points = {r.stage: r.p95_s for r in stage_rows(prev, cur) if r.p95_s is not None}
        elif value == "lag":
            points = {labels.get("group", ""): v for labels, v in cur.matching(LAG_METRIC)}
        elif value == "dead_letters":
            points = rate(prev, cur, "clinstream_dead_letters_total", by)
        else:
            raise ValueError(f"unknown series {value!r}")
        rows.extend({"time": when, "series": k, "value": v} for k, v in sorted(points.items()))
    return rows


# --- dead letters ---------------------------------------------------------------------------

MASK = "***"
# HL7 v2 fields that identify a patient (by segment: field numbers), masked unless the role
# may see identifiers: ids, names, birth date, address, phones, accounts, SSN, licences.
HL7_IDENTIFYING: Mapping[str, frozenset[int]] = {
    "PID": frozenset({2, 3, 4, 5, 6, 7, 9, 11, 12, 13, 14, 18, 19, 20, 21, 23, 26, 29}),
    "PD1": frozenset({3, 4}),
    "NK1": frozenset(range(2, 40)),
    "GT1": frozenset(range(2, 60)),
    "IN1": frozenset({16, 18, 19, 36, 49}),
    "IN2": frozenset({1, 2, 6, 8, 61, 63}),
    "PV1": frozenset({19, 50}),
    "MRG": frozenset(range(1, 8)),
    "NTE": frozenset({3}),  # free text may name anyone
    "OBX": frozenset({5}),  # values include free-text reports
    "TXA": frozenset({9, 10, 11, 22, 23}),
}
JSON_IDENTIFYING = frozenset(
    {"name", "telecom", "address", "birthDate", "identifier", "text", "contact", "photo", "data", "value"}
)


def mask_hl7(text: str) -> str:
    """The message with identifying fields replaced by ``***``, structure and MSH kept (so the
    location a dead letter names can still be found)."""
    lines = re.split(r"\r\n|\r|\n", text)
    out = []
    for line in lines:
        segment = line[:3]
        masked = HL7_IDENTIFYING.get(segment)
        if not masked or len(line) < 4:
            out.append(line)
            continue
        sep = line[3]
        fields = line.split(sep)
        fields = [MASK if i in masked and f else f for i, f in enumerate(fields)]
        out.append(sep.join(fields))
    return "\r".join(out)


def _mask_json(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: (MASK if k in JSON_IDENTIFYING else _mask_json(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask_json(v) for v in node]
    return node


def readable_payload(payload: bytes, *, masked: bool) -> str:
    """A dead letter's bytes for display: HL7 with segments on lines, FHIR JSON indented,
    identifiers masked when ``masked``; other bytes as a size only, when masked."""
    text = payload.decode("utf-8", errors="replace")
    stripped = text.lstrip("\x0b").strip()
    if stripped.startswith("MSH"):
        shown = mask_hl7(stripped) if masked else stripped
        return shown.replace("\r", "\n")
    try:
        data = json.loads(stripped)
    except ValueError:
        return f"({len(payload)} bytes, not HL7 v2 or JSON: hidden)" if masked else text
    return json.dumps(_mask_json(data) if masked else data, indent=2, ensure_ascii=False)


def mask_id(value: str | None, *, masked: bool) -> str:
    """A patient key or id, shown only to roles that may see identifiers."""
    if not value:
        return ""
    return MASK if masked else value


def hl7_sender_and_type(payload: bytes) -> tuple[str, str]:
    """(MSH-3^MSH-4, MSH-9 as TYPE^EVENT) of an HL7 v2 payload; ("", "") when it is not one."""
    text = payload.decode("utf-8", errors="replace").lstrip("\x0b")
    if not text.startswith("MSH") or len(text) < 8:
        return "", ""
    sep, comp = text[3], text[4]
    msh = re.split(r"\r|\n", text, maxsplit=1)[0].split(sep)

    def hd(i: int) -> str:
        return msh[i].split(comp)[0] if len(msh) > i else ""

    sender = "^".join(p for p in (hd(2), hd(3)) if p)
    kind = "^".join(msh[8].split(comp)[:2]) if len(msh) > 8 else ""
    return sender, kind


@dataclass(frozen=True)
class LetterRow:
    """A dead letter as the Dead letters page lists it (no content)."""

    id: str
    failed_at: datetime
    stage: str
    sender: str
    message_type: str
    error_type: str
    reason: str
    location: str
    control_id: str
    replayable: bool


def letter_row(letter: DeadLetter) -> LetterRow:
    """The listing row of a dead letter: sender and type from its envelope, else its MSH."""
    sender, kind = hl7_sender_and_type(letter.payload)
    if letter.envelope is not None:
        sender = letter.envelope.source_system or sender
        kind = letter.envelope.message_type or kind
    return LetterRow(
        letter.id,
        letter.failed_at,
        letter.stage,
        sender,
        kind,
        letter.error_type,
        letter.reason,
        letter.location,
        letter.control_id or "",
        letter.source_topic is not None,  # refused at the edge: the sender resends
    )


@dataclass(frozen=True)
class LetterFilter:
    """The Dead letters page's filters; empty ones match everything."""

    reason: str = ""
    senders: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    stages: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, row: LetterRow) -> bool:
        """Whether the row passes every filter."""
        if self.reason and self.reason.lower() not in f"{row.error_type} {row.reason}".lower():
            return False
        if self.senders and row.sender not in self.senders:
            return False
        if self.types and row.message_type not in self.types:
            return False
        if self.stages and row.stage not in self.stages:
            return False
        if self.since and row.failed_at < self.since:
            return False
        return not (self.until and row.failed_at > self.until)


def filter_letters(rows: Iterable[LetterRow], chosen: LetterFilter) -> list[LetterRow]:
    """The rows that pass, newest first, each dead letter once."""
    seen: set[str] = set()
    out = []
    for r in sorted(rows, key=lambda r: r.failed_at, reverse=True):
        if r.id not in seen and chosen.matches(r):
            seen.add(r.id)
            out.append(r)
    return out


def reason_counts(rows: Iterable[LetterRow]) -> list[tuple[str, str, int]]:
    """(stage, error type, count), commonest first: what is failing, at a glance."""
    counts = Counter((r.stage, r.error_type) for r in rows)
    return [(s, e, n) for (s, e), n in counts.most_common()]


@dataclass(frozen=True)
class ReplayReceipt:
    """Where a replayed dead letter was written."""

    letter_id: str
    topic: str
    partition: int
    offset: int
    edited: bool
    at: datetime


def replay_outcome(
    receipt: ReplayReceipt,
    committed: Mapping[tuple[str, int], int],
    letters: Iterable[DeadLetter],
) -> str:
    """What became of a replay: failed again (a new dead letter for the replayed record), done
    (every group reading the topic has committed past it) or pending.

    ``committed``: the lowest committed offset on (topic, partition) over the groups reading it.
    """
    for letter in letters:
        if (
            letter.source_topic == receipt.topic
            and letter.partition == receipt.partition
            and letter.offset == receipt.offset
        ):
            return f"failed again: {letter.error_type} {letter.location or ''}: {letter.reason}".strip()
    position = committed.get((receipt.topic, receipt.partition))
    if position is not None and position > receipt.offset:
        return "processed"
    return "pending"


# --- alerts and drafts ----------------------------------------------------------------------


@dataclass
class RuleStats:
    """Alerts of one rule and what clinicians did with them."""

    rule_id: str
    raised: int = 0
    by_severity: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    overridden: int = 0

    @property
    def answered(self) -> int:
        """Alerts with a clinician's answer."""
        return self.accepted + self.overridden

    @property
    def accept_rate(self) -> float | None:
        """Share of answered alerts accepted (None before any answer)."""
        return self.accepted / self.answered if self.answered else None

    @property
    def override_rate(self) -> float | None:
        """Share of answered alerts overridden (None before any answer)."""
        return self.overridden / self.answered if self.answered else None


def alert_stats(alerts: Iterable[Alert], feedback: Iterable[ClinicianFeedback]) -> list[RuleStats]:
    """Per rule: alerts raised (each id once), by severity, accepted and overridden (each
    alert's latest answer counts), noisiest rule first (most alerts, then most overridden)."""
    unique = {a.id: a for a in alerts}
    stats: dict[str, RuleStats] = {}
    for alert in unique.values():
        s = stats.setdefault(alert.rule_id, RuleStats(alert.rule_id))
        s.raised += 1
        s.by_severity[alert.severity] += 1
    latest: dict[str, ClinicianFeedback] = {}
    for f in feedback:
        if f.target == "alert" and (f.target_id not in latest or f.at >= latest[f.target_id].at):
            latest[f.target_id] = f
    for alert_id, f in latest.items():
        answered = unique.get(alert_id)
        rule = answered.rule_id if answered else f.rule_id
        if rule is None:
            continue
        s = stats.setdefault(rule, RuleStats(rule))
        if f.outcome == "accepted":
            s.accepted += 1
        elif f.outcome == "overridden":
            s.overridden += 1
    return sorted(stats.values(), key=lambda s: (-s.raised, -s.overridden, s.rule_id))


@dataclass(frozen=True)
class SuggestionRow:
    """One assistance rule: suggestions served since start, and clinicians' answers to its cards."""

    rule_id: str
    kind: str  # diagnosis or treatment
    served: float
    accepted: int
    overridden: int

    @property
    def accept_rate(self) -> float | None:
        """Share of answered cards accepted (None before any answer)."""
        answered = self.accepted + self.overridden
        return self.accepted / answered if answered else None


def suggestion_stats(cur: Snapshot, feedback: Iterable[ClinicianFeedback]) -> list[SuggestionRow]:
    """Per assistance rule (``dx-*``, ``tx-*``): suggestions served (the counter since start) and
    the latest answer to each of its cards, most served first."""
    served: dict[tuple[str, str], float] = {}
    for labels, value in cur.matching("clinstream_assist_suggestions_total"):
        key = (labels.get("rule_id", ""), labels.get("kind", ""))
        served[key] = served.get(key, 0.0) + value
    latest: dict[str, ClinicianFeedback] = {}
    for f in feedback:
        if (f.rule_id or "").startswith(("dx-", "tx-")) and (
            f.target_id not in latest or f.at >= latest[f.target_id].at
        ):
            latest[f.target_id] = f
    answers: dict[str, Counter[str]] = {}
    for f in latest.values():
        answers.setdefault(str(f.rule_id), Counter())[f.outcome] += 1
    kinds = {rule: kind for rule, kind in served}
    rules = set(kinds) | set(answers)
    rows = [
        SuggestionRow(
            rule,
            kinds.get(rule, "diagnosis" if rule.startswith("dx-") else "treatment"),
            served.get((rule, kinds.get(rule, "")), 0.0),
            answers.get(rule, Counter())["accepted"],
            answers.get(rule, Counter())["overridden"],
        )
        for rule in rules
    ]
    return sorted(rows, key=lambda r: (-r.served, r.rule_id))


def severity_counts(alerts: Iterable[Alert]) -> dict[str, int]:
    """Alerts (each id once) per severity."""
    return dict(Counter(a.severity for a in {a.id: a for a in alerts}.values()))


_MARKER = re.compile(r"\[(\d{1,3})\]")


def highlight_citations(markdown: str) -> str:
    """A draft's Markdown with its numbered source markers highlighted for Streamlit
    (``[2]`` → ``:blue-background[[2]]``), so each cited sentence shows its sources."""
    return _MARKER.sub(lambda m: f":blue-background[[{m.group(1)}]]", markdown)


def draft_sources(markdown: str) -> dict[int, str]:
    """The numbered source list at the end of a draft: number → ``Type/id: text``."""
    _, _, tail = markdown.partition("\n## Sources\n")
    out = {}
    for line in tail.splitlines():
        m = re.match(r"\[(\d+)\] (.+)", line)
        if m:
            out[int(m.group(1))] = m.group(2)
    return out


def draft_markdown(draft: Mapping[str, Any]) -> str:
    """The note text of a draft as the API returns it (the DocumentReference's attachment)."""
    for content in draft.get("documentReference", {}).get("content", []):
        data = content.get("attachment", {}).get("data")
        if data:
            return base64.b64decode(data).decode("utf-8", errors="replace")
    return ""


@dataclass(frozen=True)
class ModelRow:
    """One ONNX model on the Models page."""

    model: str
    files: str
    providers: str
    sessions: int
    calls_per_s: float
    rows_per_s: float
    p50_s: float | None
    p95_s: float | None


def model_rows(prev: Snapshot | None, cur: Snapshot) -> list[ModelRow]:
    """Open sessions (with the execution provider each really runs on), call latency and
    throughput of every model."""
    sessions: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    for labels, value in cur.matching("clinstream_model_sessions"):
        if value > 0:
            sessions[labels.get("model", "")].append(
                (labels.get("file", ""), labels.get("provider", ""), value)
            )
    calls = rate(prev, cur, "clinstream_model_run_seconds_count", "model")
    rows = rate(prev, cur, "clinstream_model_rows_total", "model")
    lat = quantiles(prev, cur, "clinstream_model_run_seconds", "model")
    out = []
    for model in sorted(set(sessions) | set(lat)):
        opened = sessions.get(model, [])
        q = lat.get(model, {})
        out.append(
            ModelRow(
                model,
                ", ".join(sorted({f for f, _, _ in opened})),
                ", ".join(sorted({p for _, p, _ in opened})),
                int(sum(v for _, _, v in opened)),
                calls.get(model, 0.0),
                rows.get(model, 0.0),
                q.get(0.5),
                q.get(0.95),
            )
        )
    return out
