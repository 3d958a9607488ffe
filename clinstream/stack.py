"""Starting and stopping the whole deployment in one process (`clinstream up`, demo, tests).

Order matters: broker and topics first, then the model and Milvus (slow to open), then
the consumers, then the listeners that accept traffic. Shutdown runs in reverse, and
every step is undone even when a later one fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import secrets
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from pydantic import BaseModel, SecretStr
from pymilvus import MilvusClient
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from agents.api_client import ApiBackend
from agents.http import agent_routes
from agents.tools import openapi as tools_openapi
from clinstream.at_rest import Verdict, state_volume
from clinstream.audit import audit_routes
from clinstream.audit import openapi_paths as audit_openapi
from clinstream.errors import ConfigurationError
from clinstream.http import build_app, make_server, own_client_verify
from clinstream.models import embedding_dir, generator_dir
from clinstream.runtime import DashboardProcess, EmbeddedBroker, embedded_broker, ensure_topics
from clinstream.settings import Settings
from connectors.app import register_outbound_fhir, register_outbound_mllp
from connectors.fhir_client import FhirWriter
from connectors.fhir_server import FhirIngress
from connectors.fhir_server import openapi_paths as fhir_openapi
from connectors.kafka_sink import RecordSink, make_sink
from connectors.mllp_client import OutboundMllp
from connectors.mllp_server import MllpServer
from connectors.security import Authenticator
from dashboard.auth import hash_password
from indexer.app import Flusher, register_indexer
from indexer.errors import VectorStoreError
from indexer.flush import FlushPolicy
from indexer.http import CollectionStats, query_routes
from indexer.http import openapi_paths as query_openapi
from indexer.knowledge_files import load_starter
from indexer.milvus_store import KnowledgeStore, MilvusStore, connect, index_for, recorded_precision
from indexer.ort_session import Embedder
from indexer.query import ContextualQuery
from indexer.vector_cache import CachingEmbedder
from inference.assist import diagnoses as dx_rules
from inference.assist import treatments as tx_rules
from inference.assist.answers import ChatModel
from inference.assist.app import AssistHooks, AssistService, assist_routes, register_assist
from inference.assist.app import openapi_paths as assist_openapi
from inference.assist.cards import HOOKS as ASSIST_HOOKS
from inference.assist.openai_client import OpenAIChat
from inference.cds import medsafety, note_signals
from inference.cds.app import register_cds
from inference.cds.http import CDS_HOOKS_PATH, CdsHooksService
from inference.cds.http import openapi_paths as hooks_openapi
from inference.cds.jwks_client import CdsJwtVerifier, JwksSource
from inference.cds.risk_session import OnnxRiskModel
from inference.cds.rules import ruleset_from
from inference.cds.state_store import SharedCards, SqliteStateStore
from inference.cds.terminology import CodeMapping
from inference.cds.terminology_http import Terminology
from inference.cds.terminology_http import openapi_paths as terminology_openapi
from inference.cds.terminology_kafka import rerun
from inference.cds.terminology_store import TerminologyStore
from inference.notes.app import NotesService, notes_routes, register_notes
from inference.notes.app import openapi_paths as notes_openapi
from inference.notes.draft_store import NotesStore, draft_key
from kernel.audit_kafka import KafkaAuditLog
from kernel.cds_hooks import HookService
from kernel.changelog_kafka import ChangelogTailer, RestoreOnAssign, partitions_of
from kernel.changelog_store import ChangelogTable, Entry
from kernel.chart_store import ChartStore
from kernel.errors import ModelNotBuiltError
from kernel.events import TOPICS, ClinicianFeedback, Topics, topic_config
from kernel.generator_session import LazyGenerator
from kernel.grounding import Evidence
from kernel.kafka import (
    BatchCommitter,
    Outgoing,
    StageConsumer,
    Written,
    guard_payload_logs,
    publish_in_order,
    stage_consumer,
)
from kernel.priority import LivePressure, background_executor
from kernel.settings import kafka_security, librdkafka_security, producer_config, transactional
from kernel.writeback import writeback_from
from stream.app import register_fhir_normalizer, register_normalizer

log = logging.getLogger(__name__)


@dataclass
class Stack:
    """Handles on a running deployment."""

    settings: Settings
    topics: Topics
    bootstrap: str
    embedded_broker: EmbeddedBroker | None
    mllp: MllpServer
    http_port: int
    api_token: str
    store: MilvusStore
    embedder: Embedder
    query: ContextualQuery
    dashboard_url: str | None = None
    dashboard_login: tuple[str, str] | None = None
    """The generated ``admin`` login (embedded mode without configured logins)."""
    app: Starlette | None = None
    """The HTTP application (its routes: every endpoint this deployment serves)."""
    mllp_backfill: MllpServer | None = None
    """The MLLP listener for history (`CLINSTREAM_MLLP__BACKFILL_PORT`), when configured."""

    @property
    def mllp_port(self) -> int:
        """Bound MLLP port."""
        return self.mllp.port

    @property
    def mllp_backfill_port(self) -> int | None:
        """Bound port of the backfill MLLP listener, when there is one."""
        return self.mllp_backfill.port if self.mllp_backfill is not None else None


def faststream_security(connection: Mapping[str, Any]) -> BaseSecurity | None:
    """FastStream's form of `kernel.settings.kafka_security` (TLS context, SASL login)."""
    protocol = connection.get("security_protocol", "PLAINTEXT")
    if protocol == "PLAINTEXT":
        return None
    context = connection.get("ssl_context")
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    login = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
    return login[connection["sasl_mechanism"]](
        connection["sasl_plain_username"],
        connection["sasl_plain_password"],
        ssl_context=context,
        use_ssl=protocol == "SASL_SSL",
    )


def stage_broker(stage: str, producer: dict[str, Any]) -> KafkaBroker:
    """A FastStream Kafka broker for one stage, producing with our delivery settings."""
    return KafkaBroker(
        producer["bootstrap_servers"],
        security=faststream_security(producer),
        acks=producer["acks"],
        enable_idempotence=producer["enable_idempotence"],
        request_timeout_ms=producer["request_timeout_ms"],
        max_request_size=producer["max_request_size"],
        client_id=f"clinstream-{stage}",
        logger=logging.getLogger(f"clinstream.kafka.{stage}"),
        log_level=logging.DEBUG,  # per-message lines only at DEBUG
    )


def milvus_client(settings: Settings) -> MilvusClient:
    """The configured Milvus server, else the Milvus Lite file under ``var_dir``."""
    token = settings.milvus.token.get_secret_value() if settings.milvus.token else None
    return connect(
        settings.milvus.uri,
        lite_path=settings.milvus_lite_path,
        token=token,
        tls_ca_file=settings.milvus.tls_ca_file,
        tls_server_name=settings.milvus.tls_server_name,
    )


def open_embedder(settings: Settings, client: MilvusClient | None = None) -> Embedder:
    """The ONNX embedding session the settings describe (model variant, threads, batching). With
    ``client``, a variant left to ``auto`` is the one the record (else the knowledge) collection
    was built with."""
    recorded = None
    if settings.models.embedding_precision == "auto" and client is not None:
        recorded = recorded_precision(client, settings.milvus.collection) or recorded_precision(
            client, settings.milvus.knowledge_collection
        )
    return Embedder(
        embedding_dir(settings.models.dir),
        providers=settings.models.providers,
        threads=settings.models.intra_op_threads,
        batch_size=settings.models.embedding_batch_size,
        batch_tokens=settings.models.embedding_batch_tokens,
        precision=settings.models.embedding_precision,
        recorded=recorded,
    )


def milvus_stores(
    settings: Settings, client: MilvusClient, embedder: Embedder
) -> tuple[MilvusStore, KnowledgeStore]:
    """The record and knowledge-base collections for ``embedder``'s vectors (not yet created
    or loaded)."""
    index_type = index_for(settings.milvus.uri, settings.milvus.index_type)
    common = {"index_type": index_type, "embedding": embedder.identity}
    return (
        MilvusStore(client, settings.milvus.collection, embedder.dimension, **common),
        KnowledgeStore(client, settings.milvus.knowledge_collection, embedder.dimension, **common),
    )


async def _flush_when_due(flusher: Flusher, every_s: float = 1.0) -> None:
    """Seal by age when the feed is quiet (a batch seals by rows and age as it is written)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(flusher.flush_if_due)
        except VectorStoreError:
            log.warning("Milvus flush failed; retrying in %.0f s", every_s)


def report_state_volume(settings: Settings) -> Verdict:
    """Say at start-up whether the state folder (PHI) sits on an encrypted volume."""
    said, volume = state_volume(settings.var_dir, declared=settings.state_on_encrypted_volume)
    where = str(settings.var_dir)
    if volume is not None:
        where += f" ({volume.fs_type} on {volume.mount_point})"
    if said == "encrypted":
        how = "declared" if settings.state_on_encrypted_volume else "dm-crypt"
        log.info("state at rest: %s is on an encrypted volume (%s)", where, how)
    elif said == "not encrypted":
        log.warning(
            "state at rest: %s is NOT on an encrypted volume; it holds patient data: put "
            "CLINSTREAM_VAR_DIR on one (LUKS/dm-crypt, encrypted cloud disks)", where
        )  # fmt: skip
    else:
        log.warning(
            "state at rest: cannot tell whether %s is on an encrypted volume; it holds patient data: "
            "put it on one and set CLINSTREAM_STATE_ON_ENCRYPTED_VOLUME=true", where
        )  # fmt: skip
    return said


def _warn_undelivered(settings: Settings) -> None:
    """Write-back switched on without an outbound target waits on its topic: say so at start."""
    if settings.cds.writeback_fhir and settings.outbound.fhir_base_url is None:
        log.warning("alert FHIR write-back is on but CLINSTREAM_OUTBOUND__FHIR_BASE_URL is unset here")
    if settings.cds.writeback_hl7 and settings.outbound.mllp_host is None:
        log.warning("alert HL7 write-back is on but CLINSTREAM_OUTBOUND__MLLP_HOST is unset here")


def _cds_hooks(
    settings: Settings,
    topics: Topics,
    store: SqliteStateStore,
    broker: KafkaBroker,
    http: httpx.AsyncClient,
    extra: Sequence[HookService] = (),
    cards: SharedCards | None = None,
) -> tuple[CdsHooksService, JwksSource | None]:
    """The CDS Hooks service over decision support's state; feedback goes out through its broker.

    With a JWKS URL, also its source of keys (the caller keeps it fresh)."""
    cds = settings.cds
    verifier = CdsJwtVerifier(
        hs256_secret=cds.jwt_secret.get_secret_value() if cds.jwt_secret else None,
        jwks_file=cds.jwks_file,
        issuers=cds.jwt_issuers,
    )
    jwks = JwksSource(cds.jwks_url, verifier, http) if cds.jwks_url else None
    if not verifier.configured and jwks is None:
        log.warning(
            "CDS Hooks: no JWT key configured (CLINSTREAM_CDS__JWKS_URL, __JWKS_FILE or __JWT_SECRET): "
            "calls get 401"
        )

    async def publish(feedback: ClinicianFeedback) -> None:
        await broker.publish(
            feedback.model_dump_json().encode(), topic=topics.feedback, key=feedback.patient_id.encode()
        )

    return CdsHooksService(
        store,
        verifier,
        publish,
        http=http,
        authorities=settings.normalizer.patient_authorities,
        cards_window=timedelta(hours=cds.cards_window_h),
        public_base_url=cds.public_base_url,
        jwks=jwks,
        extra=extra,
        cards=cards,
    ), jwks


async def _start_dashboard(
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    topics: Topics,
    bootstrap: str,
    http_port: int,
    token: str,
    *,
    tansu: bool,
) -> tuple[DashboardProcess, tuple[str, str] | None]:
    """The dashboard process, told where the API and Kafka are (``tansu``: the embedded Tansu, which
    has no idempotent producers); a generated admin login when none is configured (embedded mode
    only: `running_stack` refuses that otherwise)."""
    dash = settings.dashboard
    api_host = "127.0.0.1" if settings.http.host in ("0.0.0.0", "::") else settings.http.host  # noqa: S104
    users = [u.get_secret_value() for u in dash.users]
    login = None
    if not users and dash.trusted_user_header is None:
        login = ("admin", secrets.token_urlsafe(12))
        users = [f"admin:admin:{hash_password(login[1])}"]
    # The child reads its settings from the environment: hand it this process's dashboard
    # section as one JSON value (its own CLINSTREAM_DASHBOARD__* variables are dropped).
    section = dash.model_dump(mode="json") | {
        "users": users,
        "api_url": dash.api_url or f"{settings.http.scheme}://{api_host}:{http_port}",
    }
    env = {
        "CLINSTREAM_DASHBOARD": json.dumps(section),
        "CLINSTREAM_HTTP__API_TOKEN": token,
        "CLINSTREAM_KAFKA__BOOTSTRAP": bootstrap,
    }
    if tansu:
        env["CLINSTREAM_KAFKA__ENABLE_IDEMPOTENCE"] = "false"  # Tansu rejects InitProducerId
    env |= _child_env("KAFKA", settings.kafka, KAFKA_SECURITY_FIELDS)
    env |= _child_env("HTTP", settings.http, ("tls_cert", "tls_ca_file"))
    process = DashboardProcess(
        host=dash.host,
        port=dash.port,
        env=env,
        args=["--topics", json.dumps(asdict(topics))],
        log_path=settings.var_dir / "dashboard.log",
    )
    process.start()
    stack.callback(process.stop)
    await process.wait_ready()
    return process, login


KAFKA_SECURITY_FIELDS = (
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "ssl_ca_file",
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_key_password",
    "ssl_check_hostname",
)


def _child_env(section: str, values: BaseModel, names: Sequence[str]) -> dict[str, str]:
    """``CLINSTREAM_<SECTION>__<NAME>`` for the fields a child process must share (secrets
    included: the environment is how the child gets its settings)."""
    out = {}
    for name in names:
        value = getattr(values, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        out[f"CLINSTREAM_{section}__{name.upper()}"] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    return out


def _notes_service(w: Wiring, embedder: Embedder, store: MilvusStore) -> NotesService:
    """The notes stage: its store, its low-priority drafting thread, the generator (opened on
    first use, in that thread) and the contextual query it retrieves passages with."""
    settings = w.settings
    notes_settings = settings.notes
    notes_store = NotesStore(settings.notes_store_path)
    w.stack.callback(notes_store.close)
    executor = background_executor(notes_settings.cpu_nice, "clinstream-notes")
    w.stack.callback(executor.shutdown)
    generator = w.generator() if notes_settings.generator else None
    query = ContextualQuery(embedder, store)

    def search(
        patient_id: str, question: str, since: datetime | None, until: datetime | None
    ) -> list[Evidence]:
        hits = query.search(
            patient_id,
            question,
            k=4,
            types=("DocumentReference", "DiagnosticReport"),
            since=since,
            until=until,
        )
        return [Evidence(h.resource_id, h.text) for h in hits]  # resource_id is Type/id

    return NotesService(
        notes_store,
        generator,
        executor,
        mode=notes_settings.guard,
        max_new_tokens=notes_settings.max_new_tokens,
        search=search,
        writeback=writeback_from(notes_settings),
        on_events=frozenset(notes_settings.triggers),
    )


async def _assist_service(w: Wiring) -> AssistService:
    """The assistance stage: its chart store, the generator of answers (the built-in ONNX model
    or an OpenAI-compatible server, in a low-priority thread) and retrieval from the record and
    the knowledge base."""
    settings = w.settings
    assist = settings.assist
    store = ChartStore(settings.assist_store_path)
    w.stack.callback(store.close)
    executor = background_executor(settings.notes.cpu_nice, "clinstream-assist")
    w.stack.callback(executor.shutdown)
    model: ChatModel | None = None
    if assist.generator == "openai" and assist.openai_base_url:  # `_check` refused it unset
        key = assist.openai_api_key.get_secret_value() if assist.openai_api_key else None
        chat = OpenAIChat(
            assist.openai_base_url, assist.openai_model, api_key=key, timeout_s=assist.ask_timeout_s
        )
        w.stack.callback(chat.close)
        model = chat
    else:
        try:
            model = w.generator()
        except ModelNotBuiltError:
            log.warning("assist: no generator model built (`make models`): /assist/ask answers 503")
    record_store, knowledge = await w.stores()
    query = ContextualQuery(await w.embedder(), record_store, knowledge)

    def retrieve(patient_id: str, question: str) -> tuple[list[Evidence], list[Evidence]]:
        hits = query.search(patient_id, question, k=4)
        passages = query.knowledge(question, k=2)
        return (
            [Evidence(h.resource_id, h.text) for h in hits],
            [Evidence(f"kb:{p.source}#{p.section}", p.text) for p in passages],
        )

    return AssistService(
        store,
        executor,
        model=model,
        retrieve=retrieve,
        disabled=frozenset(assist.disabled_rules),
        ask_timeout_s=assist.ask_timeout_s,
        max_new_tokens=assist.ask_max_new_tokens,
        writeback=assist.writeback_conditions,
    )


STAGES = ("connectors", "normalizer", "indexer", "inference", "outbound")
"""The stages `clinstream run` starts one of; `clinstream up` runs them all in one process."""


@dataclass
class Wiring:
    """What the stages of one process share: settings, Kafka, the HTTP routes they contribute,
    and the heavy parts (embedding session, Milvus, the ingress producer) opened once, on the
    first stage that needs them."""

    settings: Settings
    topics: Topics
    bootstrap: str
    group_prefix: str
    api_token: str
    stack: contextlib.AsyncExitStack
    tansu: bool = False
    """The broker is the embedded Tansu: no idempotent or transactional producers."""
    brokers: dict[str, KafkaBroker] = field(default_factory=dict)
    routes: list[BaseRoute] = field(default_factory=list)
    openapi: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The routes' OpenAPI operations by path (published at /openapi.json)."""
    own_auth: list[str] = field(default_factory=list)
    loopbacks: list[httpx.AsyncClient] = field(default_factory=list)
    """Clients of this process's own HTTP API (their address is known once it listens)."""
    mllp: MllpServer | None = None
    mllp_backfill: MllpServer | None = None
    pressure: LivePressure = field(default_factory=LivePressure)
    """How late live records reach decision support here; the edges hold history back on it."""
    query: ContextualQuery | None = None
    app: Starlette | None = None
    """The HTTP application, once `_serve` built it."""
    _embedder: Embedder | None = None
    _client: MilvusClient | None = None
    _stores: tuple[MilvusStore, KnowledgeStore] | None = None
    _sink: RecordSink | None = None
    _audit: KafkaAuditLog | None = None
    _generator: LazyGenerator | None = None

    @functools.cached_property
    def producer(self) -> dict[str, Any]:
        """Producer settings of every stage (acks=all; idempotence where the broker has it),
        made once (their TLS context loads the CA file)."""
        return producer_config(self.settings.kafka, self.bootstrap, tansu=self.tansu)

    @functools.cached_property
    def security(self) -> dict[str, Any]:
        """What every consumer and admin client adds to reach the broker (TLS, SASL)."""
        return kafka_security(self.settings.kafka)

    def broker(self, stage: str) -> KafkaBroker:
        """The stage's FastStream broker (one per stage, started together by `_serve`)."""
        if stage not in self.brokers:
            self.brokers[stage] = stage_broker(stage, self.producer)
        return self.brokers[stage]

    @property
    def transactional(self) -> bool:
        """Whether stateful stages commit their batches as Kafka transactions (exactly-once)."""
        return transactional(self.settings.kafka, tansu=self.tansu)

    @property
    def instance_id(self) -> str:
        """This process's stable name among a stage's instances (`CLINSTREAM_KAFKA__INSTANCE_ID`,
        else the host name and a digest of the var dir): its transactional ids."""
        configured = self.settings.kafka.instance_id
        if configured:
            return configured
        digest = hashlib.sha256(str(self.settings.var_dir.resolve()).encode()).hexdigest()[:8]
        return f"{socket.gethostname()}-{digest}"

    async def committer(self, broker: KafkaBroker, group: str) -> BatchCommitter:
        """How the stateful stage of consumer group ``group`` finishes its batches (started)."""
        committer = BatchCommitter(
            broker,
            group_id=self.group(group),
            producer=self.producer,
            transactional_id=f"{self.group(group)}-{self.instance_id}" if self.transactional else None,
            transaction_timeout_ms=self.settings.kafka.transaction_timeout_ms,
        )
        await committer.start()
        self.stack.push_async_callback(committer.stop)
        return committer

    async def copartitioned(self, *topics: str) -> None:
        """Refuse a stateful stage whose input and changelog topics differ in partition count: a
        patient's records and state would sit in different partition numbers, and two instances
        could own the same patient."""
        counts = {topic: len(await partitions_of(self.bootstrap, topic, self.security)) for topic in topics}
        if len(set(counts.values())) > 1:
            raise ConfigurationError(f"these topics must have the same partition count: {counts}")

    async def changelog(
        self,
        topic: str,
        table: ChangelogTable,
        on_change: Callable[[list[str]], None] | None = None,
        key_of: Callable[[Any], str | None] | None = None,
    ) -> ChangelogTailer:
        """A started reader keeping ``table`` current with changelog ``topic``."""
        tailer = ChangelogTailer(
            self.bootstrap,
            topic,
            table,
            read_committed=self.transactional,
            on_change=on_change,
            client_id=f"clinstream-changelog-{topic}",
            key_of=key_of,
            security=self.security,
        )
        await tailer.start()
        self.stack.push_async_callback(tailer.stop)
        return tailer

    def consuming(self, name: str) -> dict[str, Any]:
        """A stage subscriber's consumer group ``name`` and options (manual commit, session timeout)."""
        consumer: StageConsumer = stage_consumer(self.settings.kafka)
        return {"group_id": self.group(name), "consumer": consumer}

    def group(self, name: str) -> str:
        """The consumer group id ``name`` (tests prefix theirs)."""
        return f"{self.group_prefix}{name}"

    async def embedder(self) -> Embedder:
        """The embedding session for queries (normal priority), opened once, in the precision of
        the record collection (`open_embedder`)."""
        if self._embedder is None:
            self._embedder = await asyncio.to_thread(open_embedder, self.settings, await self.milvus())
        return self._embedder

    async def milvus(self) -> MilvusClient:
        """The Milvus client of this process, connected once."""
        if self._client is None:
            client = await asyncio.to_thread(milvus_client, self.settings)
            self.stack.callback(client.close)
            self._client = client
        return self._client

    def generator(self) -> LazyGenerator:
        """The built-in generator, one per process (notes and answers share it: ~0.6 GB once)."""
        if self._generator is None:
            model_dir = self.settings.notes.generator_dir or generator_dir(self.settings.models.dir)
            self._generator = LazyGenerator(
                model_dir,
                providers=self.settings.models.providers,
                threads=self.settings.models.intra_op_threads,
            )
        return self._generator

    async def stores(self) -> tuple[MilvusStore, KnowledgeStore]:
        """The record and knowledge collections, created and loaded, the starter knowledge in."""
        if self._stores is None:
            embedder = await self.embedder()
            store, knowledge = milvus_stores(self.settings, await self.milvus(), embedder)
            await asyncio.to_thread(store.ensure_collection)
            await asyncio.to_thread(knowledge.ensure_collection)
            await asyncio.to_thread(load_starter, knowledge, embedder)
            self._stores = store, knowledge
        return self._stores

    async def audit_log(self) -> KafkaAuditLog:
        """The audit log's chained writer (its own idempotent producer, started once)."""
        if self._audit is None:
            audit = KafkaAuditLog(
                self.producer, self.topics.audit, timeout_s=self.settings.kafka.request_timeout_ms / 1000 + 1
            )
            await audit.start()
            self.stack.push_async_callback(audit.stop)
            self._audit = audit
        return self._audit

    async def sink(self) -> RecordSink:
        """The producer that confirms each write before an edge answers (started once)."""
        if self._sink is None:
            sink = make_sink(
                self.settings.kafka.ingest_client,
                self.producer,
                confirm_timeout_s=self.settings.kafka.request_timeout_ms / 1000 + 1,
                librdkafka_security=librdkafka_security(self.settings.kafka),
            )
            await sink.start()
            self.stack.push_async_callback(sink.stop)
            self._sink = sink
        return self._sink


async def _normalizer(w: Wiring) -> None:
    """HL7 v2 and FHIR input to validated FHIR R4 records."""
    broker = w.broker("normalizer")
    register_normalizer(broker, w.topics, w.settings.normalizer, **w.consuming("normalizer"))
    register_fhir_normalizer(broker, w.topics, w.settings.normalizer, **w.consuming("normalizer-fhir"))


async def _indexer(w: Wiring) -> None:
    """Embedding and Milvus upserts, with the query API and the agents' tools over that index."""
    settings = w.settings
    embedder = await w.embedder()
    writer = background_executor(settings.indexer.cpu_nice)
    w.stack.callback(writer.shutdown)
    index_embedder = embedder
    if settings.indexer.cpu_nice:  # its own session, opened in the thread so its pool inherits
        loop = asyncio.get_running_loop()
        index_embedder = await loop.run_in_executor(writer, open_embedder, settings, await w.milvus())
    store, knowledge = await w.stores()
    cached = CachingEmbedder(index_embedder, settings.indexer.embedding_cache)
    flusher = Flusher(store, FlushPolicy(settings.indexer.flush_rows, settings.indexer.flush_age_s))
    register_indexer(
        w.broker("indexer"),
        w.topics,
        settings.indexer,
        cached,
        store,
        **w.consuming("indexer"),
        flusher=flusher,
        executor=writer,
    )
    w.stack.push_async_callback(asyncio.to_thread, flusher.flush_now)
    ticker = asyncio.create_task(_flush_when_due(flusher))
    w.stack.callback(ticker.cancel)

    query = w.query = ContextualQuery(embedder, store, knowledge)

    def index_stats() -> list[CollectionStats]:
        return [CollectionStats(s.collection, s.count(), embedder.identity) for s in (store, knowledge)]

    w.routes.extend(query_routes(query, index_stats))
    w.openapi.update(query_openapi())
    if settings.agents.enabled:
        # The tools' backend: this process's own query API; alerts and drafts from the
        # inference stage, here or at CLINSTREAM_AGENTS__INFERENCE_URL.
        auth = {"Authorization": f"Bearer {w.api_token}"}
        loopback = httpx.AsyncClient(headers=auth, timeout=120.0, verify=own_client_verify(settings.http))
        w.stack.push_async_callback(loopback.aclose)
        w.loopbacks.append(loopback)
        inference = None
        if settings.agents.inference_url:
            inference = httpx.AsyncClient(
                headers=auth,
                timeout=120.0,
                base_url=settings.agents.inference_url,
                verify=own_client_verify(settings.http),
            )
            w.stack.push_async_callback(inference.aclose)
        audit_log = await w.audit_log()

        async def audit(event: dict[str, Any], patient: str) -> None:
            await audit_log.write(event, patient or None)

        w.routes.extend(agent_routes(ApiBackend(loopback, inference), audit))
        w.openapi.update(tools_openapi()["paths"])


async def _inference(w: Wiring) -> None:
    """Decision support (rules, risk models, CDS Hooks) and note drafting."""
    settings = w.settings
    rules = ruleset_from(settings.cds)
    if settings.cds.risk_models:
        models = [OnnxRiskModel(path, settings.models.providers) for path in settings.cds.risk_models]
        for model in models:
            log.info("risk model %s v%s on %s", model.contract.id, model.contract.version, model.providers)
        rules = replace(rules, risk_models=tuple(models))
    if settings.cds.note_embedding and note_signals.RULE_ID not in settings.cds.disabled_rules:
        matcher = await asyncio.to_thread(
            note_signals.NoteMatcher, await w.embedder(), min_cosine=settings.cds.note_similarity_min
        )
        rules = replace(rules, note_matcher=matcher)
    await asyncio.to_thread(medsafety.preload)
    t = w.topics
    await w.copartitioned(
        t.fhir, t.feedback, t.cds_state, t.notes_charts, t.drafts, t.assist_charts, t.unmapped_codes
    )
    w.pressure.limit_s = settings.cds.live_first_ms / 1000
    state_store = SqliteStateStore(settings.cds_state_path)
    w.stack.callback(state_store.close)
    states = await w.changelog(w.topics.cds_state, state_store.states, state_store.forget)
    terminology = TerminologyStore(settings.cds_state_path, settings.cds.local_codes)
    w.stack.callback(terminology.close)
    unmapped = await w.changelog(t.unmapped_codes, terminology.unmapped)
    mapped = await w.changelog(t.code_mappings, terminology.mappings, terminology.refresh)
    await _migrate_cds_state(w, state_store, states)
    shown = await w.changelog(w.topics.cds_cards, state_store.cards)
    hooks_http = httpx.AsyncClient(timeout=5.0)  # reads the Patient from a CDS client's FHIR server
    w.stack.push_async_callback(hooks_http.aclose)
    cds_broker = w.broker("cds")
    extra: list[HookService] = []
    if settings.assist.enabled:
        assist = await _assist_service(w)
        assist_broker = w.broker("assist")
        assist_charts = await w.changelog(w.topics.assist_charts, assist.store.table)
        register_assist(
            assist_broker,
            w.topics,
            assist,
            **w.consuming("assist"),
            committer=await w.committer(assist_broker, "assist"),
            listener=RestoreOnAssign([assist_charts]),
        )
        w.routes.extend(assist_routes(assist))
        w.openapi.update(assist_openapi())
        extra = [AssistHooks(assist, service) for service in ASSIST_HOOKS]
    cards = SharedCards(
        state_store,
        topic=w.topics.cds_cards,
        publish=lambda records: publish_in_order(cds_broker, records),
        caught_up=lambda timeout_s: shown.caught_up(timeout_s=timeout_s),
    )
    hooks, jwks = _cds_hooks(settings, w.topics, state_store, cds_broker, hooks_http, extra, cards)
    if jwks is not None:
        keys_task = asyncio.create_task(jwks.keep_fresh())
        w.stack.callback(keys_task.cancel)
    register_cds(
        cds_broker,
        w.topics,
        rules,
        state_store,
        **w.consuming("cds"),
        writeback=writeback_from(settings.cds),
        max_records=settings.cds.batch_max_records,
        batch_timeout_ms=settings.cds.batch_timeout_ms,
        committer=await w.committer(cds_broker, "cds"),
        listener=RestoreOnAssign([states, unmapped]),
        terminology=terminology,
        pressure=w.pressure,
    )
    w.routes.extend([*hooks.routes(), *hooks.alert_routes()])
    w.openapi.update(hooks_openapi())

    async def _rerun(mapping: CodeMapping, progress: Callable[[int, int], None]) -> int:
        return await rerun(
            w.bootstrap,
            w.topics,
            mapping,
            lambda records: publish_in_order(cds_broker, records),
            security=w.security,
            progress=progress,
        )

    codes = Terminology(
        terminology,
        w.topics.code_mappings,
        publish=lambda records: publish_in_order(cds_broker, records),
        caught_up=lambda: mapped.caught_up(timeout_s=10),
        rerun=_rerun,
    )
    w.routes.extend(codes.routes())
    w.openapi.update(terminology_openapi())
    w.own_auth.append(CDS_HOOKS_PATH)
    if settings.notes.enabled:
        store, _ = await w.stores()
        notes_service = _notes_service(w, await w.embedder(), store)
        notes_broker = w.broker("notes")
        charts = await w.changelog(w.topics.notes_charts, notes_service.store.table)
        drafts = await w.changelog(w.topics.drafts, notes_service.store.drafts_table, key_of=draft_key)
        register_notes(
            notes_broker,
            w.topics,
            notes_service,
            **w.consuming("notes"),
            committer=await w.committer(notes_broker, "notes"),
            listener=RestoreOnAssign([charts, drafts]),
        )

        async def _publish(messages: Sequence[Outgoing]) -> list[Written]:
            return await publish_in_order(notes_broker, messages)

        w.routes.extend(notes_routes(notes_service, _publish, w.topics))
        w.openapi.update(notes_openapi())
    _warn_undelivered(settings)


async def _migrate_cds_state(w: Wiring, store: SqliteStateStore, states: ChangelogTailer) -> None:
    """Once, on the first start after an upgrade: the patient states an earlier version kept only
    in its SQLite file go into the (then empty) changelog, keyed and partitioned like the input."""
    legacy = await asyncio.to_thread(store.legacy_states)
    if not legacy:
        return
    await states.caught_up()
    positions = await asyncio.to_thread(store.states.positions)
    if store.states.count() or any(n > 0 for n in positions.values()):
        log.warning("decision support: earlier SQLite state found beside a changelog in use: not moved")
        return
    producer = AIOKafkaProducer(**w.producer)
    await producer.start()
    try:
        sent = [await producer.send(w.topics.cds_state, value, key=key.encode()) for key, value in legacy]
        done = await asyncio.gather(*sent)
    finally:
        await producer.stop()
    entries = [
        Entry(key, value, meta.partition, meta.offset)
        for (key, value), meta in zip(legacy, done, strict=True)
    ]
    await asyncio.to_thread(store.states.apply, entries, own=True)
    await asyncio.to_thread(store.drop_legacy)
    log.warning("decision support: %d patients' state moved from the SQLite file into %s", len(legacy),
                w.topics.cds_state)  # fmt: skip


async def _connectors(w: Wiring) -> None:
    """The edges: MLLP and FHIR REST/DICOM ingress (they listen once the consumers run)."""
    sink = await w.sink()
    w.mllp = MllpServer(sink, w.topics, w.settings.mllp)
    if w.settings.mllp.backfill_port is not None:
        history = w.settings.mllp.model_copy(update={"port": w.settings.mllp.backfill_port})
        w.mllp_backfill = MllpServer(sink, w.topics, history, lane="backfill", pressure=w.pressure)
    w.routes.extend(FhirIngress(sink, w.topics, w.settings.http, w.pressure).routes())
    w.openapi.update(fhir_openapi())


async def _outbound(w: Wiring) -> None:
    """Outbound delivery consumers, for the targets that are configured."""
    out = w.settings.outbound
    if out.mllp_host is None and out.fhir_base_url is None:
        return
    broker = w.broker("outbound")
    if out.mllp_host is not None:
        context = ssl.create_default_context(cafile=str(out.mllp_tls_ca)) if out.mllp_tls_ca else None
        client = OutboundMllp(
            out.mllp_host,
            out.mllp_port,
            ssl=context,
            ack_timeout_s=out.ack_timeout_s,
            max_attempts=out.max_attempts,
        )
        w.stack.push_async_callback(client.close)
        register_outbound_mllp(broker, w.topics, client, **w.consuming("outbound-mllp"))
    if out.fhir_base_url is not None:
        headers = {"Authorization": f"Bearer {out.fhir_token.get_secret_value()}"} if out.fhir_token else {}
        http = httpx.AsyncClient(headers=headers, timeout=out.ack_timeout_s)
        w.stack.push_async_callback(http.aclose)
        writer = FhirWriter(http, out.fhir_base_url, max_attempts=out.max_attempts)
        register_outbound_fhir(broker, w.topics, writer, **w.consuming("outbound-fhir"))


_BUILDERS = {
    "connectors": _connectors,
    "normalizer": _normalizer,
    "indexer": _indexer,
    "inference": _inference,
    "outbound": _outbound,
}


async def _serve(w: Wiring) -> int:
    """Start the stages' consumers, then the listeners; the bound HTTP port."""
    for broker in w.brokers.values():
        w.stack.push_async_callback(broker.stop)
    # Each consumer group join takes seconds; join them concurrently.
    await asyncio.gather(*(broker.start() for broker in w.brokers.values()))
    for listener in (w.mllp, w.mllp_backfill):
        if listener is not None:
            await listener.start()
            w.stack.push_async_callback(listener.stop)
    settings = w.settings
    w.routes.extend(audit_routes(w.bootstrap, w.topics.audit, w.security))
    app = w.app = build_app(
        Authenticator(w.api_token, settings.http),
        w.routes,
        audit=await w.audit_log(),
        own_auth=tuple(w.own_auth),
        openapi={**w.openapi, **audit_openapi()},
    )
    server = make_server(app, settings.http.host, settings.http.port, settings.http)
    serve_task = asyncio.create_task(server.serve())

    async def _stop_http() -> None:
        server.should_exit = True
        await serve_task

    w.stack.push_async_callback(_stop_http)
    while not server.started:
        if serve_task.done():
            serve_task.result()  # raises the bind error
            raise ConfigurationError("HTTP server stopped during start-up")
        await asyncio.sleep(0.02)
    http_port = int(server.servers[0].sockets[0].getsockname()[1])
    loop_host = "127.0.0.1" if settings.http.host in ("0.0.0.0", "::") else settings.http.host  # noqa: S104
    for client in w.loopbacks:
        client.base_url = httpx.URL(f"{settings.http.scheme}://{loop_host}:{http_port}")
    return http_port


def _check(settings: Settings, *, dashboard: bool) -> str:
    """The API token; refuses settings that cannot run outside the embedded sandbox."""
    token = settings.http.api_token.get_secret_value() if settings.http.api_token else None
    if token is None and not settings.embedded:
        raise ConfigurationError("CLINSTREAM_HTTP__API_TOKEN must be set when using an external Kafka")
    dash = settings.dashboard
    if (
        dashboard
        and dash.enabled
        and not settings.embedded
        and not dash.users
        and dash.trusted_user_header is None
    ):
        raise ConfigurationError(
            "the dashboard needs CLINSTREAM_DASHBOARD__USERS or __TRUSTED_USER_HEADER with an external Kafka"
        )
    ruleset_from(settings.cds)  # a bad rule setting stops start-up, not the first record
    assist = settings.assist
    if assist.enabled and assist.generator == "openai" and not assist.openai_base_url:
        raise ConfigurationError(
            "CLINSTREAM_ASSIST__GENERATOR=openai needs CLINSTREAM_ASSIST__OPENAI_BASE_URL"
        )
    unknown = set(assist.disabled_rules) - set(dx_rules.RULE_IDS) - set(tx_rules.RULE_IDS)
    if unknown:
        raise ConfigurationError(f"CLINSTREAM_ASSIST__DISABLED_RULES names unknown rules: {sorted(unknown)}")
    return token or secrets.token_urlsafe(24)


def check_stages(settings: Settings, stages: Sequence[str]) -> str:
    """Refuse a stage list that cannot run as one process against the shared Kafka; the API
    token the process serves with."""
    unknown = [s for s in stages if s not in _BUILDERS]
    if unknown:
        raise ConfigurationError(f"unknown stage {unknown[0]!r}; stages: {', '.join(STAGES)}")
    if settings.embedded:
        raise ConfigurationError(
            "a single stage needs the shared Kafka: set CLINSTREAM_KAFKA__BOOTSTRAP "
            "(`clinstream up` runs every stage with an embedded broker)"
        )
    if (
        "inference" in stages
        and "indexer" not in stages
        and (settings.notes.enabled or settings.assist.enabled)
        and not settings.milvus.uri
    ):
        raise ConfigurationError(
            "notes drafting and assistance outside the indexer's process need a Milvus server "
            "(CLINSTREAM_MILVUS__URI): "
            "a Milvus Lite file opens in one process only"
        )
    return _check(settings, dashboard=False)


async def create_topics(settings: Settings, bootstrap: str, topics: Topics) -> None:
    """The deployment's topics, with the configured partitions and replication, retention and
    compaction by role (`kernel.events.topic_config`); existing topics are left alone."""
    replication = settings.kafka.replication_factor
    await ensure_topics(
        bootstrap,
        topics.all(),
        partitions=settings.kafka.partitions,
        replication_factor=replication,
        configs=lambda name: topic_config(topics, name, replication_factor=replication),
        security=kafka_security(settings.kafka),
    )


@dataclass
class StageProcess:
    """Handles on a process running some of the stages (`clinstream run STAGE`)."""

    wiring: Wiring
    http_port: int

    @property
    def mllp_port(self) -> int | None:
        """Bound MLLP port, when this process runs the connectors."""
        return self.wiring.mllp.port if self.wiring.mllp is not None else None

    @property
    def mllp_backfill_port(self) -> int | None:
        """Bound port of the backfill MLLP listener, when this process runs it."""
        return self.wiring.mllp_backfill.port if self.wiring.mllp_backfill is not None else None


@contextlib.asynccontextmanager
async def running_stages(
    settings: Settings, stages: Sequence[str], *, topics: Topics = TOPICS, group_prefix: str = ""
) -> AsyncIterator[StageProcess]:
    """Run ``stages`` in this process against the configured Kafka until the context exits.

    Every stage process also serves /health and /metrics on ``CLINSTREAM_HTTP__PORT``.
    """
    token = check_stages(settings, stages)
    report_state_volume(settings)
    guard_payload_logs()
    bootstrap = str(settings.kafka.bootstrap)
    await create_topics(settings, bootstrap, topics)
    async with contextlib.AsyncExitStack() as stack:
        w = Wiring(settings, topics, bootstrap, group_prefix, token, stack)
        for name in STAGES:  # a fixed order: consumers before the edges that accept traffic
            if name in stages:
                await _BUILDERS[name](w)
        yield StageProcess(w, await _serve(w))


@contextlib.asynccontextmanager
async def running_stack(
    settings: Settings, *, topics: Topics = TOPICS, group_prefix: str = ""
) -> AsyncIterator[Stack]:
    """Run every stage in this process (with an embedded broker unless Kafka is configured),
    and the dashboard as its own process, until the context exits."""
    api_token = _check(settings, dashboard=True)
    report_state_volume(settings)
    guard_payload_logs()
    async with contextlib.AsyncExitStack() as stack:
        embedded: EmbeddedBroker | None = None
        if settings.embedded:
            embedded = embedded_broker(settings.kafka, settings.var_dir)
            await stack.enter_async_context(embedded)
            bootstrap = embedded.bootstrap
        else:
            bootstrap = str(settings.kafka.bootstrap)
        await create_topics(settings, bootstrap, topics)
        tansu = embedded is not None and embedded.kind == "tansu"
        w = Wiring(settings, topics, bootstrap, group_prefix, api_token, stack, tansu=tansu)
        # The indexer opens the embedding session and Milvus first (slow), the edges come last.
        for name in ("indexer", "normalizer", "inference", "outbound", "connectors"):
            await _BUILDERS[name](w)
        http_port = await _serve(w)
        dashboard_url, dashboard_login = None, None
        if settings.dashboard.enabled:
            process, dashboard_login = await _start_dashboard(
                settings, stack, topics, bootstrap, http_port, api_token, tansu=tansu
            )
            dashboard_url = process.url
        store, _ = await w.stores()
        if w.mllp is None or w.query is None:  # pragma: no cover - both stages ran above
            raise ConfigurationError("the connectors and the indexer did not start")
        yield Stack(
            settings=settings,
            topics=topics,
            bootstrap=bootstrap,
            embedded_broker=embedded,
            mllp=w.mllp,
            http_port=http_port,
            api_token=api_token,
            store=store,
            embedder=await w.embedder(),
            query=w.query,
            dashboard_url=dashboard_url,
            dashboard_login=dashboard_login,
            app=w.app,
            mllp_backfill=w.mllp_backfill,
        )
