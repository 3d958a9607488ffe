"""The ops dashboard: Streamlit pages over `dashboard.queries` (thin; no logic of its own).

`main` draws one page for a logged-in user. The entry script (`clinstream/dashboard_main.py`,
run by `streamlit run`) builds the live backend from settings; tests pass an in-memory
one. Pages: Overview, Dead letters, Index, Models, Alerts, Drafts, Audit (admins: who accessed
a patient's data). Showing a dead letter's identifiers and replaying one are written to the audit
log first, under the dashboard user's name; if the audit log cannot take it, nothing is shown.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import streamlit as st

from dashboard import queries as q
from dashboard.auth import Login, User, from_proxy_headers, verify
from dashboard.errors import SourceUnavailableError
from dashboard.live_source import Backend, Sampler
from kernel.errors import ReplayError
from kernel.events import Topics
from kernel.replay import as_replay, corrected

SEVERITY_MARK = {"critical": ":red[●]", "warning": ":orange[●]", "info": ":blue[●]"}
PAGES = ("Overview", "Dead letters", "Index", "Models", "Alerts", "Drafts", "Terminology", "Audit")
T = TypeVar("T")


@dataclass(frozen=True)
class Config:
    """How this dashboard runs."""

    logins: Mapping[str, Login]
    topics: Topics
    user_header: str | None = None
    role_header: str | None = None
    refresh_s: float = 0.0  # Overview auto-refresh period; 0: only on interaction
    cache_s: float = 5.0  # how long a Kafka or API reading is reused across reruns


def _cached(key: str, ttl: float, read: Callable[[], T]) -> T:
    """A reading reused for ``ttl`` seconds by this browser session."""
    now = time.monotonic()
    hit = st.session_state.get(f"cache:{key}")
    if hit is not None and now - hit[0] < ttl:
        value: T = hit[1]
        return value
    value = read()
    st.session_state[f"cache:{key}"] = (now, value)
    return value


def _login(config: Config) -> User | None:
    user: User | None = st.session_state.get("user")
    if user is not None:
        return user
    proxied = from_proxy_headers(dict(st.context.headers), config.user_header, config.role_header)
    if proxied is not None:
        st.session_state["user"] = proxied
        return proxied
    st.title("clinstream operations")
    with st.form("login"):
        name = st.text_input("User")
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Log in")
    if submitted:
        found = verify(config.logins, name, password)
        if found is None:
            st.error("Unknown user or wrong password.")
            return None
        st.session_state["user"] = found
        st.rerun()
    return None


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _windows(sampler: Sampler) -> tuple[q.Snapshot | None, q.Snapshot | None, q.Snapshot | None]:
    """(start of the rate window, newest sample, start of the latency window)."""
    history = sampler.history()
    if not history:
        return None, None, None
    return (
        q.window_start(history, q.RATE_WINDOW_S),
        history[-1],
        q.window_start(history, q.LATENCY_WINDOW_S),
    )


def overview(backend: Backend, sampler: Sampler, config: Config) -> None:
    """Messages per second, latency and failures per stage, lag, ACK mix, the last hour."""
    st.header("Overview")
    if sampler.last_error:
        st.warning(f"Last sample failed: {sampler.last_error}")
    prev, cur, lat_from = _windows(sampler)
    if cur is None:
        st.info("No metrics yet: is the API reachable?")
        return
    rows = q.stage_rows(prev, cur, lat_from)
    lag = _cached("lag", config.cache_s, backend.lag)
    by_group = q.lag_by_group(lag)
    dead_total = sum(q.totals(cur, "clinstream_dead_letters_total", "stage").values())
    ingest = next((r.per_s for r in rows if r.stage == "mllp"), 0.0)
    worst = max((r.p95_s for r in rows if r.p95_s is not None), default=None)
    cols = st.columns(4)
    cols[0].metric("Ingest (MLLP)", f"{ingest:.1f} msg/s")
    cols[1].metric("Consumer lag", f"{sum(by_group.values())} records")
    cols[2].metric("Worst stage p95", _seconds(worst))
    cols[3].metric("Dead letters", f"{dead_total:.0f}")
    done = {r.stage: r.total for r in rows}
    raised = sum(q.totals(cur, "clinstream_alerts_raised_total", "rule_id").values())
    drafted = sum(q.totals(cur, "clinstream_drafts_written_total", "kind").values())
    cols = st.columns(4)
    cols[0].metric("Received (MLLP)", f"{done.get('mllp', 0):.0f}")
    cols[1].metric("Normalized", f"{done.get('normalizer', 0):.0f}")
    cols[2].metric("Alerts raised", f"{raised:.0f}")
    cols[3].metric("Drafts written", f"{drafted:.0f}")
    st.subheader("Stages")
    st.dataframe(
        [
            {
                "stage": r.stage,
                "msg/s": round(r.per_s, 2),
                "total": int(r.total),
                "p50": _seconds(r.p50_s),
                "p95": _seconds(r.p95_s),
                "p99": _seconds(r.p99_s),
                "dead letters/s": round(r.dead_letters_per_s, 3),
                "retries/s": round(r.retries_per_s, 3),
            }
            for r in rows
        ],
        hide_index=True,
    )
    st.caption(
        "Latency: MLLP, receipt → ACK sent (broker confirmed); other stages, the event's age when the "
        f"stage finished it. Rates over the last {cur.at - prev.at:.0f} s."
        if prev
        else "Rates need two samples."
    )
    left, right = st.columns(2)
    with left:
        st.subheader("Consumer lag")
        st.dataframe(
            [
                {
                    "group": r.group,
                    "topic": r.topic,
                    "partition": r.partition,
                    "committed": r.committed,
                    "end": r.end,
                    "lag": r.lag,
                }
                for r in lag
            ],
            hide_index=True,
        )
    with right:
        st.subheader("ACK codes by sender")
        st.dataframe(
            [asdict(r) | {"per_s": round(r.per_s, 2)} for r in q.ack_mix(prev, cur)], hide_index=True
        )
    st.subheader("Data-quality issues by sender")
    issues = q.quality_issues(prev, cur)
    if issues:
        st.dataframe([asdict(r) | {"per_s": round(r.per_s, 3)} for r in issues], hide_index=True)
        st.caption(
            "Messages that converted despite these problems; each record on ehr.fhir.v1 lists its own "
            "issues (code and location, never the value)."
        )
    else:
        st.write("None: every message converted whole.")
    history = sampler.history()
    st.subheader(
        f"Last {len(history) * (history[-1].at - history[0].at) / max(1, len(history) - 1) / 60:.0f} min"
    )
    charts = st.columns(2)
    for n, (title, value) in enumerate(
        (
            ("Messages/s by stage", "throughput"),
            ("p95 latency (s) by stage", "p95"),
            ("Lag by consumer group", "lag"),
            ("Dead letters/s by stage", "dead_letters"),
        )
    ):
        with charts[n % 2]:
            st.caption(title)
            points = q.timeline(history, value)
            if points:
                st.line_chart(points, x="time", y="value", color="series", height=220)
            else:
                st.write("(waiting for samples)")


def dead_letters(backend: Backend, user: User, config: Config) -> None:
    """Browse, open (masked), correct and replay dead letters; see what became of replays."""
    st.header("Dead letters")
    letters = _cached("dead", config.cache_s, backend.dead_letters)
    by_id = {d.id: d for d in letters}
    rows = [q.letter_row(d) for d in letters]
    with st.expander("Filters", expanded=True):
        a, b, c = st.columns(3)
        reason = a.text_input("Reason contains")
        senders = b.multiselect("Sender", sorted({r.sender for r in rows}))
        types = c.multiselect("Message type", sorted({r.message_type for r in rows}))
        d, e, f = st.columns(3)
        stages = d.multiselect("Stage", sorted({r.stage for r in rows}))
        window = e.selectbox("Failed within", ("any time", "15 min", "1 h", "24 h", "7 days"))
        until_text = f.text_input("Failed before (ISO 8601, optional)")
    since = None
    if window != "any time":
        amount = {
            "15 min": timedelta(minutes=15),
            "1 h": timedelta(hours=1),
            "24 h": timedelta(days=1),
            "7 days": timedelta(days=7),
        }[window]
        since = datetime.now(UTC) - amount
    until = None
    if until_text.strip():
        try:
            until = datetime.fromisoformat(until_text.strip())
            until = until if until.tzinfo else until.replace(tzinfo=UTC)
        except ValueError:
            st.error("'Failed before' is not an ISO 8601 time.")
    chosen = q.filter_letters(
        rows, q.LetterFilter(reason, frozenset(senders), frozenset(types), frozenset(stages), since, until)
    )
    st.write(f"{len(chosen)} of {len(rows)} dead letters")
    counts = q.reason_counts(chosen)
    if counts:
        st.dataframe([{"stage": s, "error": e, "count": n} for s, e, n in counts], hide_index=True)
    st.dataframe(
        [
            {
                "id": r.id,
                "failed at": r.failed_at,
                "stage": r.stage,
                "sender": r.sender,
                "type": r.message_type,
                "error": r.error_type,
                "location": r.location,
                "control id": r.control_id,
                "reason": r.reason,
                "replayable": r.replayable,
            }
            for r in chosen
        ],
        hide_index=True,
    )
    if user.may("replay"):
        _replay_controls(backend, chosen, by_id, user)
    if chosen:
        _open_letter(backend, chosen, by_id, user, config)
    _receipts(backend, letters)


def _replay_controls(backend: Backend, chosen: list[q.LetterRow], by_id: dict[str, Any], user: User) -> None:
    st.subheader("Replay")
    replayable = [r.id for r in chosen if r.replayable]
    picked = st.multiselect("Dead letters to replay", replayable)
    left, right = st.columns(2)
    todo: list[str] = []
    if left.button("Replay selected", disabled=not picked):
        todo = picked
    if right.button(f"Replay all {len(replayable)} shown", disabled=not replayable):
        todo = replayable
    if todo:
        _do_replay(backend, [as_replay(by_id[i]) for i in todo], user)
    if len(chosen) > len(replayable):
        st.caption(
            "Refused at the edge (the sender got AE/AR and resends): open one to correct and replay it."
        )


def _do_replay(backend: Backend, replays: list[Any], user: User) -> None:
    try:
        for replay in replays:
            key = replay.key.decode(errors="replace") if replay.key else None
            backend.audit(user.name, "replay", key, [f"dead-letter/{replay.letter_id}"])
        receipts = backend.replay(replays)
    except SourceUnavailableError as exc:
        st.error(f"Replay failed: {exc}")
        return
    st.session_state.setdefault("receipts", []).extend(receipts)
    st.session_state.pop("cache:dead", None)
    st.success(f"Replayed {len(receipts)}; outcomes below.")


def _open_letter(
    backend: Backend, chosen: list[q.LetterRow], by_id: dict[str, Any], user: User, config: Config
) -> None:
    st.subheader("Open a dead letter")
    letter_id = st.selectbox("Dead letter", [r.id for r in chosen])
    letter = by_id[letter_id]
    row = q.letter_row(letter)
    st.write(f"**{row.error_type}** at `{row.location or '-'}` ({row.stage}): {row.reason}")
    reveal = st.checkbox("Show identifiers", value=False, disabled=user.masked, key=f"reveal:{letter_id}")
    if (
        reveal
        and not user.masked
        and not _audited(backend, user, "unmask dead letter", _key(letter), letter_id)
    ):
        reveal = False
    st.caption(
        f"failed {row.failed_at:%Y-%m-%d %H:%M:%S %Z} · sender {row.sender or '-'}"
        f" · type {row.message_type or '-'} · control id {row.control_id or '-'}"
        f" · source {letter.source_topic or 'edge (not replayable as is)'}"
        f" · payload sha256 {letter.payload_sha256[:16]}…"
        f" · patient key {q.mask_id(_key(letter), masked=not reveal or user.masked) or '-'}"
    )
    st.code(q.readable_payload(letter.payload, masked=not reveal or user.masked), language=None)
    if not user.may("edit"):
        return
    original = letter.payload.decode("utf-8", errors="replace").replace("\r", "\n").strip()
    if not original.startswith("MSH"):
        st.caption("Only HL7 v2 messages can be corrected here.")
        return
    text = st.text_area(
        "Corrected message (HL7 v2, one segment per line)", original, height=220, key=f"edit:{letter_id}"
    )
    if st.button("Replay corrected message"):
        payload = text.replace("\r\n", "\n").strip().replace("\n", "\r").encode() + b"\r"
        try:
            replay = corrected(letter, payload, config.topics, editor=user.name, now=datetime.now(UTC))
        except ReplayError as exc:
            st.error(str(exc))
            return
        _do_replay(backend, [replay], user)


def _audited(backend: Backend, user: User, action: str, patient: str, letter_id: str) -> bool:
    """Write the AuditEvent of showing a dead letter's identifiers (once per session and letter);
    False, with the reason shown, when the audit log cannot take it."""
    done = st.session_state.setdefault("audited", set())
    if (action, letter_id) in done:
        return True
    try:
        backend.audit(user.name, action, patient or None, [f"dead-letter/{letter_id}"])
    except SourceUnavailableError as exc:
        st.error(f"Identifiers not shown: the audit log is unavailable ({exc})")
        return False
    done.add((action, letter_id))
    return True


def audit(backend: Backend, user: User) -> None:
    """Who accessed one patient's data: the audit log's events, oldest first (admins)."""
    st.header("Audit")
    if not user.may("audit"):
        st.info("The audit log is for administrators.")
        return
    patient = st.text_input("Patient (id, key or authority|MRN)")
    days = st.number_input("Last days", min_value=1, max_value=3650, value=30)
    if not patient or not st.button("Show accesses"):
        return
    since = datetime.now(UTC) - timedelta(days=int(days))
    events = backend.audit_events(patient.strip(), since)
    st.caption(f"{len(events)} accesses since {since:%Y-%m-%d}")
    if events:
        st.dataframe(
            [{**e, "resources": ", ".join(e.get("resources") or [])} for e in events],
            hide_index=True,
        )


def _key(letter: Any) -> str:
    return letter.key.decode(errors="replace") if letter.key else ""


def _receipts(backend: Backend, letters: list[Any]) -> None:
    receipts = st.session_state.get("receipts", [])
    if not receipts:
        return
    st.subheader("Replays this session")
    try:
        committed = backend.committed_low()
    except SourceUnavailableError as exc:
        st.warning(f"Outcomes unavailable: {exc}")
        committed = {}
    st.dataframe(
        [
            {
                "dead letter": r.letter_id,
                "corrected": r.edited,
                "to": f"{r.topic}[{r.partition}]@{r.offset}",
                "at": r.at,
                "outcome": q.replay_outcome(r, committed, letters),
            }
            for r in receipts
        ],
        hide_index=True,
    )
    if st.button("Refresh outcomes"):
        st.session_state.pop("cache:dead", None)
        st.rerun()


def index(backend: Backend, sampler: Sampler, user: User, config: Config) -> None:
    """Collections and row counts, freshness, and a patient-scoped search playground."""
    st.header("Index")
    stats = _cached("index", config.cache_s, backend.index_stats)
    st.dataframe(stats, hide_index=True)
    prev, cur, lat_from = _windows(sampler)
    if cur is not None:
        row = next((r for r in q.stage_rows(prev, cur, lat_from) if r.stage == "indexer"), None)
        last = cur.get("clinstream_index_last_batch_timestamp")
        cols = st.columns(3)
        cols[0].metric("Event → searchable p50", _seconds(row.p50_s if row else None))
        cols[1].metric("Event → searchable p95", _seconds(row.p95_s if row else None))
        cols[2].metric("Last indexed batch", f"{cur.at - last:.0f} s ago" if last else "none yet")
    st.subheader("Search one patient's record")
    if user.masked:
        st.info("The search playground shows patient records: your role does not allow identifiers.")
        return
    with st.form("search"):
        patient = st.text_input("Patient (FHIR id or authority|identifier)")
        question = st.text_input("Question")
        a, b, c = st.columns(3)
        types = a.multiselect(
            "Resource types",
            (
                "Observation",
                "Condition",
                "MedicationRequest",
                "DiagnosticReport",
                "DocumentReference",
                "Encounter",
                "AllergyIntolerance",
                "Procedure",
                "Immunization",
            ),
        )
        days = b.number_input("Last N days (0: all)", min_value=0, value=0)
        mode = c.selectbox("Mode", ("hybrid", "dense", "bm25"))
        go = st.form_submit_button("Search")
    if go and patient.strip() and question.strip():
        body: dict[str, Any] = {
            "patient_id": patient.strip(),
            "question": question.strip(),
            "k": 10,
            "types": list(types),
            "mode": mode,
        }
        if days:
            body["since"] = (datetime.now(UTC) - timedelta(days=int(days))).isoformat()
        try:
            hits = backend.search(body)
        except SourceUnavailableError as exc:
            st.error(str(exc))
            return
        st.write(f"{len(hits)} passages")
        for n, hit in enumerate(hits, 1):
            st.markdown(f"**[{n}]** {hit.get('text', '')}")
            st.caption(
                f"cites {hit.get('resource_id', '')} · {hit.get('date') or 'no date'} · "
                f"score {float(hit.get('score', 0.0)):.3f}"
            )


def models(sampler: Sampler) -> None:
    """Loaded ONNX sessions, the provider each runs on, call latency and throughput."""
    st.header("Models")
    prev, cur, _ = _windows(sampler)
    if cur is None:
        st.info("No metrics yet.")
        return
    rows = q.model_rows(prev, cur)
    st.dataframe(
        [
            {
                "model": r.model,
                "files": r.files,
                "execution provider": r.providers,
                "sessions": r.sessions,
                "calls/s": round(r.calls_per_s, 2),
                "rows/s": round(r.rows_per_s, 2),
                "p50": _seconds(r.p50_s),
                "p95": _seconds(r.p95_s),
            }
            for r in rows
        ],
        hide_index=True,
    )
    if any("CUDA" in r.providers for r in rows):
        st.success("CUDA execution provider in use.")
    st.caption(
        "A call is a batch of texts (embeddings), one generated token (drafts) or a batch of rows "
        f"(risk models); rates and latency over the last {q.RATE_WINDOW_S:.0f} s."
    )


def alerts(backend: Backend, user: User, config: Config) -> None:
    """The live alert stream, counts per rule and severity, accept/override rates."""
    st.header("Alerts")
    raised = _cached("alerts", config.cache_s, lambda: backend.alerts(500))
    answers = _cached("feedback", config.cache_s, lambda: backend.feedback(2000))
    severities = q.severity_counts(raised)
    cols = st.columns(max(1, len(severities)))
    for col, (severity, n) in zip(cols, sorted(severities.items()), strict=False):
        col.metric(severity, n)
    stats = q.alert_stats(raised, answers)
    st.subheader("Rules, noisiest first")
    st.dataframe(
        [
            {
                "rule": s.rule_id,
                "alerts": s.raised,
                **{k: v for k, v in sorted(s.by_severity.items())},
                "accepted": s.accepted,
                "overridden": s.overridden,
                "accept rate": None if s.accept_rate is None else f"{s.accept_rate:.0%}",
                "override rate": None if s.override_rate is None else f"{s.override_rate:.0%}",
            }
            for s in stats
        ],
        hide_index=True,
    )
    st.subheader("Assistance: suggestions served and clinicians' answers to their cards")
    snapshot = _cached("snapshot", config.cache_s, backend.snapshot)
    suggestions = q.suggestion_stats(snapshot, answers)
    if suggestions:
        st.dataframe(
            [
                {
                    "rule": s.rule_id,
                    "kind": s.kind,
                    "served": int(s.served),
                    "accepted": s.accepted,
                    "overridden": s.overridden,
                    "accept rate": None if s.accept_rate is None else f"{s.accept_rate:.0%}",
                }
                for s in suggestions
            ],
            hide_index=True,
        )
    else:
        st.caption("No diagnosis or treatment suggestion served yet.")
    st.subheader("Latest alerts")
    latest = sorted({a.id: a for a in raised}.values(), key=lambda a: a.raised_at, reverse=True)[:50]
    for a in latest[:5]:
        st.markdown(
            f"{SEVERITY_MARK.get(a.severity, '')} **{a.severity}** {a.summary}"
            f" · {a.rule_id} v{a.rule_version} · {a.raised_at:%Y-%m-%d %H:%M}"
            f" · patient {q.mask_id(a.patient_id, masked=user.masked)}"
        )
    st.dataframe(
        [
            {
                "raised": a.raised_at,
                "severity": a.severity,
                "rule": f"{a.rule_id} v{a.rule_version}",
                "summary": a.summary,
                "patient": q.mask_id(a.patient_id, masked=user.masked),
            }
            for a in latest
        ],
        hide_index=True,
    )


def drafts(backend: Backend, user: User, config: Config) -> None:
    """The review queue; a draft with its citations; accept, edit or reject."""
    st.header("Drafts")
    status = st.selectbox("Status", ("preliminary", "final", "entered-in-error", "all"))
    found = _cached(
        f"drafts:{status}", config.cache_s, lambda: backend.drafts(None if status == "all" else status)
    )
    st.dataframe(
        [
            {
                "created": d.get("created"),
                "type": d.get("type"),
                "status": d.get("status"),
                "sentences": d.get("guard", {}).get("sentences_checked"),
                "removed by guard": d.get("guard", {}).get("removed"),
                "model": d.get("model"),
                "patient": q.mask_id(d.get("patient_id"), masked=user.masked),
                "id": d.get("id"),
            }
            for d in found
        ],
        hide_index=True,
    )
    if not found:
        return
    if user.masked:
        st.info("Reading a draft needs a role that may see identifiers (clinician, admin).")
        return
    draft_id = st.selectbox("Open draft", [d["id"] for d in found])
    draft = next(d for d in found if d["id"] == draft_id)
    text = q.draft_markdown(draft)
    st.markdown(q.highlight_citations(text.partition("\n## Sources\n")[0]))
    sources = q.draft_sources(text)
    if sources:
        st.caption("Sources")
        st.dataframe([{"#": n, "source": s} for n, s in sources.items()], hide_index=True)
    if not user.may("review") or draft.get("status") != "preliminary":
        return
    st.subheader("Review")
    with st.form(f"review:{draft_id}"):
        decision = st.radio("Decision", ("accept", "edit", "reject"), horizontal=True)
        final = st.text_area("Final text (for edit)", text, height=260)
        reason = st.text_input("Reason (optional)")
        send = st.form_submit_button("Submit review")
    if send:
        body: dict[str, Any] = {"decision": decision, "reviewer": user.name}
        if decision == "edit":
            body["text"] = final
        if reason.strip():
            body["reason"] = reason.strip()
        try:
            reviewed = backend.review(draft_id, body)
        except SourceUnavailableError as exc:
            st.error(str(exc))
            return
        for key in [k for k in st.session_state if str(k).startswith("cache:drafts")]:
            del st.session_state[key]
        st.success(f"Draft {reviewed.get('status')}: published as clinician feedback.")


def terminology(backend: Backend, user: User, config: Config) -> None:
    """Local codes decision support does not know, what they probably are, and confirming one."""
    st.header("Terminology")
    codes = _cached("unmapped", config.cache_s, backend.unmapped_codes)
    st.caption(
        "Observation codes no rule reads (no LOINC coding, not mapped), per sending system, most "
        "seen first. A suggestion is for a person to confirm."
    )
    st.dataframe(
        [
            {
                "sender": c["sender"],
                "code": c["code"],
                "display": c.get("display"),
                "seen": c["count"],
                "units": ", ".join(f"{u or '-'} ×{n}" for u, n in c.get("units", {}).items()),
                "range": f"{c['low']}–{c['high']} {c.get('unit_of_range', '')}" if c.get("low") else "",
                "suggestion": _suggestion_label(c["suggestions"][0]) if c["suggestions"] else "",
            }
            for c in codes
        ],
        hide_index=True,
    )
    mappings = _cached("mappings", config.cache_s, backend.code_mappings)
    st.subheader("Confirmed mappings")
    st.dataframe(
        [
            {
                "sender": m["sender"],
                "code": m["code"],
                "loinc": m["current"]["loinc"],
                "analyte": m["current"]["analyte"] or "(no rule reads it)",
                "version": m["current"]["version"],
                "by": m["current"].get("on_behalf_of") or m["current"]["by"],
                "at": m["current"]["at"],
                "re-run": (m.get("rerun") or {}).get("state", ""),
            }
            for m in mappings
        ],
        hide_index=True,
    )
    if not codes or not user.may("map"):
        return
    st.subheader("Confirm a mapping")
    labels = {f"{c['sender']} · {c['code']} {c.get('display') or ''}".strip(): c for c in codes}
    chosen = labels[st.selectbox("Code", list(labels))]
    offered = {_suggestion_label(s): s["loinc"] for s in chosen["suggestions"]}
    with st.form(f"map:{chosen['sender']}:{chosen['system']}:{chosen['code']}"):
        picked = st.radio("Suggested", [*offered, "other"], horizontal=False)
        typed = st.text_input("LOINC (for other)")
        rerun = st.checkbox("Re-run decision support over this code's history", value=True)
        send = st.form_submit_button("Confirm")
    if send:
        loinc = typed.strip() if picked == "other" else offered[picked]
        body = {
            "sender": chosen["sender"],
            "system": chosen["system"],
            "code": chosen["code"],
            "display": chosen.get("display") or "",
            "loinc": loinc,
            "rerun": rerun,
            "on_behalf_of": user.name,
        }
        try:
            done = backend.confirm_mapping(body)
        except SourceUnavailableError as exc:
            st.error(str(exc))
            return
        for key in ("cache:unmapped", "cache:mappings"):
            st.session_state.pop(key, None)
        st.success(f"Mapped to LOINC {loinc}, version {done['mapping']['current']['version']}.")


def _suggestion_label(suggestion: dict[str, Any]) -> str:
    rule = suggestion["analyte"] or "no rule reads it"
    return f"{suggestion['loinc']} {suggestion['label']} ({rule}; score {suggestion['score']})"


def main(backend: Backend, sampler: Sampler, config: Config) -> None:
    """Draw the dashboard for this browser session."""
    st.set_page_config(page_title="clinstream ops", layout="wide")
    user = _login(config)
    if user is None:
        return
    with st.sidebar:
        st.write(f"**{user.name}** ({user.role}{', identifiers masked' if user.masked else ''})")
        page = st.radio("Page", PAGES)
        if st.button("Log out"):
            st.session_state.clear()
            st.rerun()
    try:
        if page == "Overview":
            if config.refresh_s:
                st.fragment(run_every=config.refresh_s)(overview)(backend, sampler, config)
            else:
                overview(backend, sampler, config)
        elif page == "Dead letters":
            dead_letters(backend, user, config)
        elif page == "Index":
            index(backend, sampler, user, config)
        elif page == "Models":
            models(sampler)
        elif page == "Alerts":
            alerts(backend, user, config)
        elif page == "Audit":
            audit(backend, user)
        elif page == "Terminology":
            terminology(backend, user, config)
        else:
            drafts(backend, user, config)
    except SourceUnavailableError as exc:
        st.error(f"Reading failed: {exc}")
