"""CDS Hooks service: discovery, JWT as the spec asks, cards from state, 412, feedback."""

import json
import time
import uuid
from datetime import timedelta

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from clinstream.http import build_app
from inference.cds.cards import OVERRIDE_REASONS, snoozed_by
from inference.cds.http import CdsHooksService
from inference.cds.jwks_client import CdsJwtVerifier
from inference.cds.rules import RuleSet, process
from inference.cds.state_store import SqliteStateStore
from kernel.audit_kafka import MemoryAuditLog
from kernel.events import ClinicianFeedback, patient_key
from tests.unit.inference.cds.fixtures import T0, hours, obs, record, vitals

SECRET = "cds-test-secret-at-least-32-bytes-long"
BASE = "http://cds.test"
SERVICE = f"{BASE}/cds-services/clinstream-alerts"
MERCY = {"http://mercy.example/mrn": "MERCY"}


def token(aud=SERVICE, *, iss="https://ehr.example", lifetime=60, jti=None, secret=SECRET, exp_offset=None):
    now = int(time.time())
    claims = {
        "iss": iss,
        "aud": aud,
        "iat": now,
        "exp": now + (exp_offset or lifetime),
        "jti": jti or uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def _state(patient="p1"):
    state = None
    for n, resources in enumerate([[obs("2823-3", 6.8, "mmol/L")], vitals(rr=30, hr=140, at=T0 + hours(1))]):
        at = T0 + hours(n)
        state = process(
            state, record(*resources, patient=patient, at=at, message_id=str(n)), RuleSet(), now=at
        ).state
    return state


@pytest.fixture
def env():
    store = SqliteStateStore(":memory:")
    published = []

    async def publish(event):
        published.append(event)

    def build(*, authorities=None, transport=None, issuers=()):
        http = httpx.AsyncClient(transport=transport or httpx.MockTransport(lambda r: httpx.Response(404)))
        service = CdsHooksService(
            store,
            CdsJwtVerifier(hs256_secret=SECRET, issuers=issuers),
            publish,
            http=http,
            authorities=authorities or {},
            cards_window=timedelta(hours=24),
            clock=lambda: T0 + hours(2),
        )
        app = build_app("api-token", service.routes(), own_auth=("/cds-services",), audit=MemoryAuditLog())
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)

    return store, published, build


def _hook(patient="p1", **extra):
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"patientId": patient, "userId": "Practitioner/1"},
        **extra,
    }


def _auth(tok):
    return {"Authorization": f"Bearer {tok}"}


async def _patient_view(client):
    """The cards of a signed `patient-view` call for patient p1."""
    response = await client.post("/cds-services/clinstream-alerts", json=_hook(), headers=_auth(token()))
    return response.json()["cards"]


async def test_discovery_is_public_and_lists_the_service(env):
    _, _, build = env
    async with build() as client:
        response = await client.get("/cds-services")
    assert response.status_code == 200
    services = response.json()["services"]
    assert [(s["id"], s["hook"]) for s in services] == [
        ("clinstream-alerts", "patient-view"),
        ("clinstream-order-select", "order-select"),
        ("clinstream-order-sign", "order-sign"),
        ("clinstream-discharge", "encounter-discharge"),
    ]
    assert {json.dumps(s["prefetch"]) for s in services} == {'{"patient": "Patient/{{context.patientId}}"}'}


async def test_cards_come_from_state_with_explanations(env):
    store, _, build = env
    store.save(_state())
    async with build() as client:
        response = await client.post("/cds-services/clinstream-alerts", json=_hook(), headers=_auth(token()))
    assert response.status_code == 200
    cards = response.json()["cards"]
    # Potassium 6.8; RR 30 + HR 140 (NEWS2 6, partial) and SIRS 2 of 4. Most severe first.
    assert [c["indicator"] for c in cards] == ["critical", "warning", "info"]
    potassium, news, _ = cards
    assert potassium["summary"].startswith("Critical high potassium: 6.8 mmol/L")
    assert news["summary"].startswith("NEWS2 6")
    for c in cards:
        assert len(c["summary"]) <= 140
        assert c["source"]["label"] == "clinstream decision support"
        assert [r["code"] for r in c["overrideReasons"]] == [code for code, _ in OVERRIDE_REASONS]
        assert "| input | value | time |" in c["detail"]
    assert store.card_owner(potassium["uuid"]) == ("p1", "critical-lab")


async def test_an_unknown_patient_gets_no_cards(env):
    _, _, build = env
    async with build() as client:
        response = await client.post(
            "/cds-services/clinstream-alerts", json=_hook("nobody"), headers=_auth(token())
        )
    assert response.json() == {"cards": []}


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "not-a-jwt",
        token(aud=f"{BASE}/cds-services/other"),
        token(secret="another-secret-another-secret-another"),
        token(lifetime=600),  # the spec asks for at most 5 minutes
        token(exp_offset=-120),  # expired
        jwt.encode(
            {"iss": "x", "aud": SERVICE, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256"
        ),  # no jti
        "e30.e30.",  # "{}" header: no alg
        "W10.e30.sig",  # a header that is a JSON list
        "_-_-.e30.sig",  # not JSON
        "/w.e30.sig",  # not UTF-8
        jwt.encode(jwt.decode(token(), options={"verify_signature": False}), None, algorithm="none"),
    ],
)
async def test_calls_without_a_valid_jwt_get_401(env, bad):
    _, _, build = env
    headers = _auth(bad) if bad else {}
    async with build() as client:
        response = await client.post("/cds-services/clinstream-alerts", json=_hook(), headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_replayed_token_and_an_untrusted_issuer_are_refused(env):
    _, _, build = env
    once = token()
    async with build(issuers=("https://ehr.example",)) as client:
        first = await client.post("/cds-services/clinstream-alerts", json=_hook(), headers=_auth(once))
        replay = await client.post("/cds-services/clinstream-alerts", json=_hook(), headers=_auth(once))
        stranger = await client.post(
            "/cds-services/clinstream-alerts", json=_hook(), headers=_auth(token(iss="https://other.example"))
        )
    assert (first.status_code, replay.status_code, stranger.status_code) == (200, 401, 401)


@pytest.mark.parametrize("garbage", ["", ".", "€€€.e30.sig", "e30", "bnVsbA.e30.x", "%%%.e30.x"])
def test_unreadable_tokens_are_refused_not_raised(garbage):
    assert CdsJwtVerifier(hs256_secret=SECRET).verify(f"Bearer {garbage}", SERVICE) is None


def _ec_jwks(kid):
    key = ec.generate_private_key(ec.SECP256R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return key, {"keys": [{**public, "kid": kid, "alg": "ES256"}]}


def _es256(key, kid, aud=SERVICE):
    now = int(time.time())
    claims = {"iss": "ehr", "aud": aud, "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


async def test_keys_from_a_jwks_url_follow_a_rotation(env):
    from inference.cds.jwks_client import JwksSource

    store, _, _ = env
    store.save(_state())
    old_key, old_jwks = _ec_jwks("ehr-1")
    new_key, new_jwks = _ec_jwks("ehr-2")
    served = {"jwks": old_jwks, "status": 200}
    fetches = []

    def ehr(request):
        fetches.append(request.url.path)
        return httpx.Response(served["status"], json=served["jwks"])

    verifier = CdsJwtVerifier()
    clock = {"t": 0.0}
    async with httpx.AsyncClient(transport=httpx.MockTransport(ehr)) as http:
        source = JwksSource("https://ehr.test/jwks", verifier, http, clock=lambda: clock["t"])
        assert await source.refresh()
        service = CdsHooksService(
            store,
            verifier,
            lambda event: None,
            http=http,
            authorities={},
            cards_window=timedelta(hours=24),
            jwks=source,
            clock=lambda: T0 + hours(2),
        )
        app = build_app("api-token", service.routes(), own_auth=("/cds-services",), audit=MemoryAuditLog())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:

            async def call(tok):
                r = await client.post("/cds-services/clinstream-alerts", json=_hook(), headers=_auth(tok))
                return r.status_code

            assert await call(_es256(old_key, "ehr-1")) == 200
            served["jwks"] = new_jwks  # the EHR rotates its key
            clock["t"] = 120.0
            assert await call(_es256(new_key, "ehr-2")) == 200  # unknown kid: keys read again
            assert await call(_es256(old_key, "ehr-1")) == 401  # the old key is gone
            assert await call(_es256(old_key, "ehr-9")) == 401  # within a minute: no new read
            served["status"] = 500
            clock["t"] = 400.0
            assert not await source.refresh()  # a failed read keeps the keys we have
            assert await call(_es256(new_key, "ehr-2")) == 200
    assert len(fetches) == 3  # at start, on the rotation, the failed read: none for ehr-1 or ehr-9


def test_asymmetric_keys_from_a_jwks_file(tmp_path):
    key = ec.generate_private_key(ec.SECP384R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**public, "kid": "ehr-1", "alg": "ES384"}]}))
    verifier = CdsJwtVerifier(jwks_file=tmp_path / "jwks.json")
    now = int(time.time())
    claims = {"iss": "ehr", "aud": SERVICE, "iat": now, "exp": now + 60, "jti": "j1"}
    good = jwt.encode(claims, key, algorithm="ES384", headers={"kid": "ehr-1"})
    unknown_kid = jwt.encode({**claims, "jti": "j2"}, key, algorithm="ES384", headers={"kid": "ehr-2"})
    assert verifier.verify(f"Bearer {good}", SERVICE) == "ehr"
    assert verifier.verify(f"Bearer {unknown_kid}", SERVICE) is None
    assert not CdsJwtVerifier().configured


async def test_linked_patients_need_the_patient_prefetch_or_a_fhir_server(env):
    store, _, build = env
    key = patient_key("MERCY", "100001")
    store.save(_state(patient=key))
    patient = {
        "resourceType": "Patient",
        "id": "ehr-7",
        "identifier": [{"system": "http://mercy.example/mrn", "value": "100001"}],
    }
    async with build(authorities=MERCY) as client:
        missing = await client.post(
            "/cds-services/clinstream-alerts", json=_hook("ehr-7"), headers=_auth(token())
        )
        prefetched = await client.post(
            "/cds-services/clinstream-alerts",
            json=_hook("ehr-7", prefetch={"patient": patient}),
            headers=_auth(token()),
        )
    assert missing.status_code == 412
    assert len(prefetched.json()["cards"]) == 3
    # a suggested order is for the patient as the CDS client knows it, not our key
    [suggestion] = prefetched.json()["cards"][0]["suggestions"]
    assert suggestion["actions"][0]["resource"]["subject"] == {"reference": "Patient/ehr-7"}

    seen = []

    def fhir(request):
        seen.append((str(request.url), request.headers.get("authorization")))
        return httpx.Response(200, json=patient)

    fetched_hook = _hook(
        "ehr-7",
        fhirServer="https://ehr.example/fhir",
        fhirAuthorization={"access_token": "at-1", "token_type": "Bearer"},
    )
    async with build(authorities=MERCY, transport=httpx.MockTransport(fhir)) as client:
        fetched = await client.post(
            "/cds-services/clinstream-alerts", json=fetched_hook, headers=_auth(token())
        )
    assert len(fetched.json()["cards"]) == 3
    assert seen == [("https://ehr.example/fhir/Patient/ehr-7", "Bearer at-1")]


async def test_feedback_is_published_for_cards_that_were_served(env):
    store, published, build = env
    store.save(_state())
    async with build() as client:
        cards = await _patient_view(client)
        item = {
            "card": cards[0]["uuid"],
            "outcome": "overridden",
            "overrideReason": {
                "reason": {"code": "snooze-4h", "system": "x"},
                "userComment": "repeat pending",
            },
            "outcomeTimestamp": (T0 + hours(2)).isoformat(),
        }
        ok = await client.post(
            "/cds-services/clinstream-alerts/feedback", json={"feedback": [item]}, headers=_auth(token())
        )
        unknown = await client.post(
            "/cds-services/clinstream-alerts/feedback",
            json={"feedback": [{**item, "card": "never-served"}]},
            headers=_auth(token()),
        )
        invalid = await client.post(
            "/cds-services/clinstream-alerts/feedback",
            json={"feedback": [{"card": "x"}]},
            headers=_auth(token()),
        )
        anonymous = await client.post("/cds-services/clinstream-alerts/feedback", json={"feedback": [item]})
    assert (ok.status_code, unknown.status_code, invalid.status_code, anonymous.status_code) == (
        200,
        404,
        400,
        401,
    )
    [event] = published
    assert (event.patient_id, event.rule_id, event.outcome, event.reason_code) == (
        "p1",
        "critical-lab",
        "overridden",
        "snooze-4h",
    )
    assert event.principal == "https://ehr.example"


async def test_feedback_that_the_broker_does_not_confirm_gets_503(env):
    store, _, _ = env
    store.save(_state())

    async def failing(_):
        raise ConnectionError("broker down")

    service = CdsHooksService(
        store,
        CdsJwtVerifier(hs256_secret=SECRET),
        failing,
        http=httpx.AsyncClient(),
        authorities={},
        cards_window=timedelta(hours=24),
        clock=lambda: T0 + hours(2),
    )
    store.remember_cards("p1", [("card-1", "news2")])
    app = build_app("api-token", service.routes(), own_auth=("/cds-services",), audit=MemoryAuditLog())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
        item = {"card": "card-1", "outcome": "accepted", "outcomeTimestamp": T0.isoformat()}
        response = await client.post(
            "/cds-services/clinstream-alerts/feedback", json={"feedback": [item]}, headers=_auth(token())
        )
    assert response.status_code == 503


def test_a_snooze_override_hides_the_card_until_it_ends():
    state = _state()
    memo = state.alerts["critical-lab/potassium/high"]
    feedback = ClinicianFeedback(
        id="f1",
        patient_id="p1",
        target="alert",
        target_id=memo.id,
        rule_id="critical-lab",
        outcome="overridden",
        reason_code="snooze-4h",
        at=T0 + hours(2),
        channel="cds-hooks",
        principal="ehr",
    )
    snoozed = snoozed_by(state, feedback)
    assert snoozed.snoozes == {"critical-lab/potassium/high": T0 + hours(6)}
    assert snoozed_by(state, feedback.model_copy(update={"outcome": "accepted"})) is None


async def test_the_patient_read_cannot_leave_the_patient_path(env):
    _, _, build = env
    seen = []

    def fhir(request):
        seen.append(request.url.raw_path)
        return httpx.Response(404)

    hook = _hook("../Observation?code=x", fhirServer="https://ehr.example/fhir")
    async with build(authorities=MERCY, transport=httpx.MockTransport(fhir)) as client:
        response = await client.post("/cds-services/clinstream-alerts", json=hook, headers=_auth(token()))
    assert response.status_code == 412
    assert seen == [b"/fhir/Patient/..%2FObservation%3Fcode%3Dx"]


def _order(text, oid):
    return {
        "resourceType": "MedicationRequest",
        "id": oid,
        "status": "draft",
        "intent": "proposal",
        "medicationCodeableConcept": {"text": text},
        "subject": {"reference": "Patient/p1"},
    }


def _order_hook(hook, *orders, selections=None):
    context = {
        "patientId": "p1",
        "userId": "Practitioner/1",
        "draftOrders": {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": o} for o in orders],
        },
    }
    if selections is not None:
        context["selections"] = selections
    return {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}


def _medicated_state():
    from tests.unit.inference.cds.fixtures import allergy, med

    at = T0
    resources = [med("Warfarin 5 MG Oral Tablet", "m1"), allergy("Allergy to penicillin", "a1")]
    return process(None, record(*resources, at=at), RuleSet(), now=at).state


async def test_order_sign_checks_every_draft_and_suggests_removing_it(env):
    store, published, build = env
    store.save(_medicated_state())
    url = f"{BASE}/cds-services/clinstream-order-sign"
    body = _order_hook(
        "order-sign", _order("Ibuprofen 400 MG Oral Tablet", "d1"), _order("Amoxicillin 500 MG", "d2")
    )
    async with build() as client:
        response = await client.post(
            "/cds-services/clinstream-order-sign", json=body, headers=_auth(token(url))
        )
        assert response.status_code == 200
        cards = response.json()["cards"]
        assert sorted((c["source"]["topic"]["code"], c["indicator"]) for c in cards) == [
            ("drug-allergy", "critical"),
            ("drug-interaction", "critical"),
        ]
        for c in cards:
            [suggestion] = c["suggestions"]
            [action] = suggestion["actions"]
            assert action["type"] == "delete"
            assert action["resourceId"][0] in ("MedicationRequest/d1", "MedicationRequest/d2")
            assert c["selectionBehavior"] == "any"
            assert len(c["summary"]) <= 140
        # A card shown on an order hook takes feedback like any other.
        feedback = {
            "feedback": [
                {"card": cards[0]["uuid"], "outcome": "accepted", "outcomeTimestamp": T0.isoformat()}
            ]
        }
        answer = await client.post(
            "/cds-services/clinstream-order-sign/feedback", json=feedback, headers=_auth(token(url))
        )
    assert answer.status_code == 200
    assert [e.rule_id for e in published] == [cards[0]["source"]["topic"]["code"]]
    assert store.load("p1").medications.keys() == {"MedicationRequest/m1"}  # drafts are not kept


async def test_order_select_checks_the_selection_against_the_other_drafts(env):
    _, _, build = env
    url = f"{BASE}/cds-services/clinstream-order-select"
    drafts = (
        _order("Methotrexate 2.5 MG", "d1"),
        _order("Naproxen 250 MG", "d2"),
        _order("Lisinopril 10 MG", "d3"),
    )
    async with build() as client:
        select_nsaid = _order_hook("order-select", *drafts, selections=["MedicationRequest/d2"])
        cards = (await client.post(url, json=select_nsaid, headers=_auth(token(url)))).json()["cards"]
        select_lisinopril = _order_hook(
            "order-select", drafts[0], drafts[2], selections=["MedicationRequest/d3"]
        )
        quiet = (await client.post(url, json=select_lisinopril, headers=_auth(token(url)))).json()["cards"]
    # Naproxen with the methotrexate drafted beside it (danger) and with lisinopril (NSAID + ACE inhibitor).
    assert sorted((c["summary"].split(":")[0], c["indicator"]) for c in cards) == [
        ("Interaction lisinopril + naproxen", "warning"),
        ("Interaction methotrexate + naproxen", "critical"),
    ]
    for c in cards:  # only the selected draft is suggested for removal
        assert [a["resourceId"] for s in c["suggestions"] for a in s["actions"]] == [["MedicationRequest/d2"]]
    assert quiet == []


@pytest.mark.parametrize(
    "context",
    [
        {"patientId": "p1", "userId": "u"},  # no draftOrders
        {"patientId": "p1", "draftOrders": {"resourceType": "Patient"}},
        {
            "patientId": "p1",
            "draftOrders": {
                "resourceType": "Bundle",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "MedicationRequest",
                            "id": "x",
                            "medicationCodeableConcept": "aspirin",
                        }
                    }
                ],
            },
        },
        {"patientId": "p1", "draftOrders": {"resourceType": "Bundle", "entry": []}, "selections": "d1"},
    ],
)
async def test_unreadable_draft_orders_get_400(env, context):
    _, _, build = env
    url = f"{BASE}/cds-services/clinstream-order-select"
    body = {"hook": "order-select", "hookInstance": "h", "context": context}
    async with build() as client:
        response = await client.post(url, json=body, headers=_auth(token(url)))
    assert response.status_code == 400
    assert "draftOrders" in response.json()["detail"] or "selections" in response.json()["detail"]


async def test_a_service_answers_only_its_own_hook(env):
    _, _, build = env
    url = f"{BASE}/cds-services/clinstream-order-sign"
    async with build() as client:
        response = await client.post(url, json=_hook(), headers=_auth(token(url)))
    assert response.status_code == 400


async def test_encounter_discharge_shows_the_stays_alerts_and_reviews_the_medication_list(env):
    from tests.unit.inference.cds.fixtures import egfr, med

    store, _, build = env
    stay = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "in-progress",
        "class": {"code": "IMP"},
        "period": {"start": T0.isoformat()},
    }
    feed = [
        [stay, obs("2823-3", 6.8, "mmol/L", at=T0, oid="k1")],  # critical potassium
        [med("Warfarin 5 MG", "m1"), med("Ibuprofen 400 MG", "m2"), med("Metformin 500 MG", "m3")],
        [egfr(25, "e1", at=T0 + hours(1))],
    ]
    state = None
    for n, resources in enumerate(feed):
        at = T0 + hours(n) if n < 2 else T0 + hours(1)
        state = process(state, record(*resources, at=at, message_id=str(n)), RuleSet(), now=at).state
    # Say the renal alerts were snoozed away: the review at discharge still lists them.
    kept = {k: a for k, a in state.alerts.items() if not k.startswith("renal")}
    store.save(state.model_copy(update={"alerts": kept}))
    url = f"{BASE}/cds-services/clinstream-discharge"
    context = {"patientId": "p1", "userId": "Practitioner/1", "encounterId": "e1"}
    body = {"hook": "encounter-discharge", "hookInstance": "h", "context": context}
    async with build() as client:
        response = await client.post(url, json=body, headers=_auth(token(url)))
    assert response.status_code == 200
    cards = [(c["source"]["topic"]["code"], c["summary"].split(":")[0]) for c in response.json()["cards"]]
    assert cards == [
        ("drug-interaction", "Interaction ibuprofen + warfarin"),  # the stay's alerts, newest first
        ("critical-lab", "Critical high potassium"),
        ("renal-dosing", "Ibuprofen with eGFR 25 mL/min/{1.73_m2}"),  # the review: not shown during the stay
        ("renal-dosing", "Metformin with eGFR 25 mL/min/{1.73_m2}"),
    ]


async def test_a_draft_without_an_id_is_checked_but_never_named_in_a_delete_action(env):
    store, _, build = env
    store.save(_medicated_state())
    url = f"{BASE}/cds-services/clinstream-order-sign"
    nameless = {k: v for k, v in _order("Ibuprofen 400 MG Oral Tablet", "x").items() if k != "id"}
    async with build() as client:
        response = await client.post(url, json=_order_hook("order-sign", nameless), headers=_auth(token(url)))
    [card] = response.json()["cards"]
    assert card["source"]["topic"]["code"] == "drug-interaction"
    assert card["suggestions"] == []
    assert "selectionBehavior" not in card


def _aki_state(patient="p1"):
    state = None
    for n, value in enumerate([0.9, 1.5]):  # a rise of 0.6 mg/dL within 48 h: KDIGO stage 1
        at = T0 + hours(n)
        rec = record(
            obs("2160-0", value, "mg/dL", at=at, oid=f"cr{n}"), patient=patient, at=at, message_id=f"c{n}"
        )
        state = process(state, rec, RuleSet(), now=at).state
    return state


async def test_a_critical_value_card_suggests_a_draft_repeat_order_and_hears_it_was_accepted(env):
    from kernel.fhir_models import model_class

    service_request = model_class("ServiceRequest")  # R4 (fhir.resources' R4B package)
    store, published, build = env
    store.save(_state())
    async with build() as client:
        cards = await _patient_view(client)
        again = await _patient_view(client)
        potassium, news, sirs = cards
        assert "suggestions" not in news
        assert "suggestions" not in sirs
        [suggestion] = potassium["suggestions"]
        assert potassium["selectionBehavior"] == "at-most-one"
        assert suggestion["label"] == "Order a repeat potassium"
        assert suggestion["isRecommended"] is False
        assert suggestion == again[0]["suggestions"][0]  # stable ids: the same card, the same suggestion
        [action] = suggestion["actions"]
        assert action["type"] == "create"
        request = service_request.model_validate(action["resource"])  # valid FHIR R4
        assert (request.status, request.intent, request.priority) == ("draft", "proposal", "urgent")
        assert [(c.system, c.code) for c in request.code.coding] == [("http://loinc.org", "2823-3")]
        assert request.subject.reference == "Patient/p1"
        [potassium_result] = potassium["extension"]["clinstream-evidence"]
        assert [r.reference for r in request.reasonReference] == [potassium_result]
        feedback = {
            "card": potassium["uuid"],
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": suggestion["uuid"]}],
            "outcomeTimestamp": (T0 + hours(2)).isoformat(),
        }
        ok = await client.post(
            "/cds-services/clinstream-alerts/feedback", json={"feedback": [feedback]}, headers=_auth(token())
        )
    assert ok.status_code == 200
    [event] = published
    assert (event.outcome, event.accepted_suggestions) == ("accepted", (suggestion["uuid"],))


async def test_an_aki_card_suggests_a_routine_repeat_creatinine(env):
    store, _, build = env
    store.save(_aki_state())
    async with build() as client:
        cards = await _patient_view(client)
    [aki] = [c for c in cards if c["source"]["topic"]["code"] == "aki-kdigo"]
    resource = aki["suggestions"][0]["actions"][0]["resource"]
    assert resource["code"]["coding"][0]["code"] == "2160-0"
    assert resource["priority"] == "routine"  # stage 1 is a warning
    assert resource["reasonReference"] == [{"reference": "Observation/cr1"}]
