"""Fuzzing every ingress with Hypothesis: at least 100,000 generated inputs in all.

Each target must answer with our typed error, never another exception and never a 5xx:
- the HL7 v2 parser and normalizer (corpus messages mutated field by field, and raw bytes):
  a result or `Hl7Error`; corpus messages varied as real feeds vary them (timestamps, OBX value
  types, repeated OBRs): a result, with data-quality issues where due;
- MLLP framing (random byte streams cut at random points): frames or `FramingError`;
- FHIR ingress over HTTP (REST create/update, transaction Bundles, Subscription
  notifications, DICOM STOW), with corpus resources mutated, arbitrary JSON, arbitrary bytes
  and arbitrary content types: 2xx, or 4xx with an OperationOutcome;
- the CDS Hooks endpoint (signed calls with arbitrary bodies and garbage tokens): 2xx, or
  4xx with our JSON error.

The HTTP targets run the real Starlette application (auth middleware included) in-process,
driven through ASGI directly so that tens of thousands of requests fit in the test run.
`CLINSTREAM_FUZZ_SCALE` multiplies every quota (`make test` runs 0.1, `make fuzz` 1).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.feed_mutations import mutate
from clinstream.http import build_app
from connectors.errors import FramingError
from connectors.fhir_server import FhirIngress
from connectors.framing import START_BLOCK, frame, split_frames
from connectors.security import Authenticator
from inference.cds.http import CdsHooksService
from inference.cds.jwks_client import CdsJwtVerifier
from inference.cds.state_store import SqliteStateStore
from kernel.audit_kafka import MemoryAuditLog
from kernel.errors import Hl7Error
from kernel.events import TOPICS
from kernel.hl7v2.parser import decode_payload, parse_message, split_batch
from kernel.settings import HttpSettings
from stream.normalize import normalize_hl7
from tests.conftest import corpora_dir
from tests.unit.stream.fixtures import MESSAGES, mutated

pytestmark = pytest.mark.slow
SCALE = float(os.environ.get("CLINSTREAM_FUZZ_SCALE", "1"))
QUOTAS = {
    "hl7_mutated": 30_000,
    "hl7_variants": 10_000,
    "hl7_bytes": 15_000,
    "framing": 20_000,
    "fhir": 25_000,
    "cds": 10_000,
}
UTC = ZoneInfo("UTC")
TOKEN = "fuzz-api-token-" + "y" * 20
SECRET = "fuzz-cds-secret-at-least-32-bytes-long!"
BASE = "http://fuzz.test"
SERVICE = f"{BASE}/cds-services/clinstream-alerts"
RAN: dict[str, int] = dict.fromkeys(QUOTAS, 0)


def _examples(target: str) -> Any:
    return settings(
        max_examples=max(1, int(QUOTAS[target] * SCALE)),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def test_the_quotas_add_up_to_100k():
    assert sum(QUOTAS.values()) >= 100_000


# --- HL7 v2 parser ------------------------------------------------------------------------


@_examples("hl7_mutated")
@given(mutated())
def test_hl7_mutated_corpus_messages(text):
    RAN["hl7_mutated"] += 1
    try:
        normalize_hl7(text, tz=UTC)
    except Hl7Error:
        pass


@_examples("hl7_variants")
@given(st.sampled_from(MESSAGES), st.randoms(use_true_random=False))
def test_hl7_messages_varied_as_real_feeds_vary_them_still_convert(text, rng):
    """Timestamps in every DTM form, OBX value types, repeated OBRs, several at once: a message
    that converted converts again, possibly with data-quality issues."""
    RAN["hl7_variants"] += 1
    r = random.Random(rng.random())
    for _ in range(r.randint(1, 4)):
        text, _ = mutate(text, r)
    result = normalize_hl7(text, tz=UTC)
    assert result.resources[0]["resourceType"] == "Patient"


raw_hl7 = st.one_of(
    st.binary(max_size=400),
    st.sampled_from(MESSAGES).flatmap(
        lambda m: st.tuples(st.just(m.encode()), st.integers(0, len(m)), st.binary(max_size=40)).map(
            lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]
        )
    ),
    st.text(alphabet=st.sampled_from(list("MSHPIDOBX|^~\\&\r\n 0123456789")), max_size=300).map(
        lambda t: ("MSH|^~\\&|" + t).encode()
    ),
)


@_examples("hl7_bytes")
@given(raw_hl7)
def test_hl7_arbitrary_bytes(payload):
    RAN["hl7_bytes"] += 1
    for text in split_batch(decode_payload(payload)).messages:
        try:
            parse_message(text)
            normalize_hl7(text, tz=UTC)
        except Hl7Error:
            pass


# --- MLLP framing -------------------------------------------------------------------------

stream_parts = st.lists(
    st.one_of(
        st.binary(max_size=60),
        st.sampled_from(MESSAGES).map(lambda m: frame(m.encode()[:200])),
        st.sampled_from([START_BLOCK, b"\x1c", b"\x1c\r", b"\r\n", b"\x0b\x0b", b"\x1c\x1c\r"]),
    ),
    max_size=8,
)


@_examples("framing")
@given(stream_parts, st.lists(st.integers(0, 2000), max_size=4), st.integers(16, 4096))
def test_mllp_framing_of_arbitrary_streams(parts, cuts, max_size):
    """Bytes arriving in arbitrary pieces: every frame comes out whole or `FramingError`."""
    RAN["framing"] += 1
    data = b"".join(parts)
    points = sorted({min(c, len(data)) for c in cuts} | {len(data)})
    buffer, frames, at = b"", [], 0
    try:
        for point in points:
            buffer += data[at:point]
            at = point
            got, buffer = split_frames(buffer, max_size=max_size)
            frames.extend(got)
    except FramingError:
        return
    for payload in frames:
        assert b"\x1c\r" not in payload


# --- HTTP targets, driven through ASGI ----------------------------------------------------

LOOP = asyncio.new_event_loop()


class _Sink:
    async def send(self, topic, value, *, key, headers):
        return None


def _fhir_app():
    http = HttpSettings(max_body_bytes=200_000)
    return build_app(
        Authenticator(TOKEN, http), FhirIngress(_Sink(), TOPICS, http).routes(), audit=MemoryAuditLog()
    )


def _cds_app():
    store = SqliteStateStore(":memory:")

    async def publish(_event):
        return None

    service = CdsHooksService(
        store,
        CdsJwtVerifier(hs256_secret=SECRET),
        publish,
        http=httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(404))),
        authorities={},
        cards_window=timedelta(hours=24),
    )
    return build_app(TOKEN, service.routes(), own_auth=("/cds-services",), audit=MemoryAuditLog())


FHIR_APP, CDS_APP = _fhir_app(), _cds_app()


def asgi(app, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, bytes]:
    """One request through the ASGI app, without a server or a client library."""
    sent = False
    status, chunks = 0, []

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    raw_path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": raw_path,
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"fuzz.test"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("fuzz.test", 80),
    }
    LOOP.run_until_complete(app(scope, receive, send))
    return status, b"".join(chunks)


def _fhir_seeds() -> list[dict[str, Any]]:
    out = []
    root = corpora_dir() / "fhir"
    paths = sorted(p for p in root.rglob("*.json") if p.stat().st_size < 60_000)
    for path in random.Random(7).sample(paths, min(150, len(paths))):
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("resourceType"), str):
            out.append(data)
    return out


FHIR_SEEDS = _fhir_seeds()
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=15,
)


@st.composite
def mutated_resource(draw: st.DrawFn) -> Any:
    """A corpus resource with keys replaced, dropped or retyped at any depth."""
    data = json.loads(json.dumps(draw(st.sampled_from(FHIR_SEEDS))))
    for _ in range(draw(st.integers(1, 4))):
        node = data
        for _ in range(draw(st.integers(0, 3))):
            children = [
                v for v in (node.values() if isinstance(node, dict) else node) if isinstance(v, dict | list)
            ]
            if not children:
                break
            node = draw(st.sampled_from(children))
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            if draw(st.booleans()):
                node[key] = draw(json_values)
            else:
                del node[key]
        elif isinstance(node, list) and node:
            node[draw(st.integers(0, len(node) - 1))] = draw(json_values)
    return data


fhir_body = st.one_of(
    mutated_resource().map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    mutated_resource().map(lambda d: json.dumps(d).encode()[: len(json.dumps(d)) // 2]),
)
fhir_target = st.sampled_from(
    [
        ("POST", "/fhir"),
        ("POST", "/fhir/Observation"),
        ("POST", "/fhir/Patient"),
        ("POST", "/fhir/NoSuchType"),
        ("PUT", "/fhir/Observation/o1"),
        ("PUT", "/fhir/Patient/%00bad"),
        ("POST", "/fhir/subscription-notification"),
        ("POST", "/dicom/studies"),
        ("POST", "/dicom/studies?issuer=MERCY"),
    ]
)
content_type = st.sampled_from(
    [
        b"application/fhir+json",
        b"application/json",
        b"application/dicom",
        b"multipart/related; type=application/dicom; boundary=x",
        b"multipart/related; boundary=",
        b"text/plain",
        b"",
    ]
)


@_examples("fhir")
@given(fhir_target, content_type, fhir_body)
def test_fhir_ingress_answers_every_input(target, ctype, body):
    RAN["fhir"] += 1
    method, path = target
    headers = [(b"authorization", f"Bearer {TOKEN}".encode())]
    if ctype:
        headers.append((b"content-type", ctype))
    status, raw = asgi(FHIR_APP, method, path, headers, body)
    assert 200 <= status < 500, (status, raw[:300])
    if status >= 400:
        outcome = json.loads(raw)
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"]


def _token(aud: str = SERVICE) -> str:
    now = int(time.time())
    claims = {"iss": "https://ehr.example", "aud": aud, "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, SECRET, algorithm="HS256")


hook_body = st.one_of(
    st.fixed_dictionaries(
        {
            "hook": st.sampled_from(["patient-view", "order-select", "order-sign", "x"]) | json_values,
            "hookInstance": st.uuids().map(str) | json_values,
            "context": st.fixed_dictionaries(
                {"patientId": st.text(max_size=30) | json_values, "userId": st.just("Practitioner/1")},
                optional={"draftOrders": json_values, "selections": json_values},
            )
            | json_values,
        },
        optional={
            "prefetch": json_values,
            "fhirServer": st.text(max_size=40),
            "fhirAuthorization": json_values,
        },
    ).map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=120),
)
cds_auth = st.one_of(
    st.builds(lambda: f"Bearer {_token()}"),
    st.builds(lambda: f"Bearer {_token(aud='https://elsewhere')}"),
    st.text(max_size=60),
    st.just("Bearer " + "e" * 40 + "." + "x" * 20 + ".sig"),
)


@_examples("cds")
@given(
    st.sampled_from(
        ["/cds-services/clinstream-alerts", "/cds-services/clinstream-alerts/feedback", "/cds-services/nope"]
    ),
    cds_auth,
    hook_body,
)
def test_cds_hooks_answers_every_input(path, auth, body):
    RAN["cds"] += 1
    headers = [(b"content-type", b"application/json")]
    if auth:
        headers.append((b"authorization", auth.encode("utf-8", "replace")))
    status, raw = asgi(CDS_APP, "POST", path, headers, body)
    assert 200 <= status < 500, (status, raw[:300])
    if status >= 400:
        assert json.loads(raw)["status"] == status


def test_every_target_ran_its_quota():
    """Runs last in this file (pytest keeps file order): each target met its share."""
    if any(n == 0 for n in RAN.values()):
        pytest.skip("run with the whole file")
    short = {k: n for k, n in RAN.items() if n < int(QUOTAS[k] * SCALE)}
    assert short == {}, short


def teardown_module():
    LOOP.close()
