"""Starting and stopping the whole deployment in one process (`clinstream up`, demo, tests).

Order matters: broker and topics first, then the model and Milvus (slow to open), then
the consumers, then the listeners that accept traffic. Shutdown runs in reverse, and
every step is undone even when a later one fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import httpx
from faststream.kafka import KafkaBroker
from pymilvus import MilvusClient
from starlette.routing import BaseRoute

from agents.api_client import ApiBackend
from agents.http import agent_routes
from clinstream.http import build_app, make_server
from clinstream.models import embedding_dir, generator_dir
from clinstream.runtime import DashboardProcess, EmbeddedBroker, ensure_topics
from clinstream.settings import Settings
from connectors.app import register_outbound_fhir, register_outbound_mllp
from connectors.fhir_client import FhirWriter
from connectors.fhir_server import FhirIngress
from connectors.kafka_sink import make_sink
from connectors.mllp_client import OutboundMllp
from connectors.mllp_server import MllpServer
from connectors.security import Authenticator
from dashboard.auth import hash_password
from indexer.app import Flusher, register_indexer
from indexer.errors import VectorStoreError
from indexer.flush import FlushPolicy
from indexer.http import CollectionStats, query_routes
from indexer.knowledge_files import load_starter
from indexer.milvus_store import KnowledgeStore, MilvusStore, connect, index_for
from indexer.ort_session import Embedder
from indexer.priority import background_executor
from indexer.query import ContextualQuery
from inference import medsafety, notes
from inference.app import register_cds
from inference.cds_auth import CdsJwtVerifier, JwksSource
from inference.cds_hooks import CDS_HOOKS_PATH, CdsHooksService
from inference.generator import LazyGenerator
from inference.grounding import Evidence
from inference.notes_app import NotesService, notes_routes, register_notes
from inference.notes_store import NotesStore
from inference.risk_model import OnnxRiskModel
from inference.rules import ruleset_from
from inference.state_store import SqliteStateStore
from inference.writeback import writeback_from
from stream.app import register_fhir_normalizer, register_normalizer
from stream.errors import ClinstreamError
from stream.events import TOPICS, ClinicianFeedback, Topics
from stream.kafka import Outgoing, publish_in_order
from stream.settings import producer_config

log = logging.getLogger(__name__)


class ConfigurationError(ClinstreamError, ValueError):
    """Settings that cannot work together."""


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

    @property
    def mllp_port(self) -> int:
        """Bound MLLP port."""
        return self.mllp.port


def stage_broker(stage: str, producer: dict[str, Any]) -> KafkaBroker:
    """A FastStream Kafka broker for one stage, producing with our delivery settings."""
    return KafkaBroker(
        producer["bootstrap_servers"],
        acks=producer["acks"],
        enable_idempotence=producer["enable_idempotence"],
        request_timeout_ms=producer["request_timeout_ms"],
        client_id=f"clinstream-{stage}",
        logger=logging.getLogger(f"clinstream.kafka.{stage}"),
        log_level=logging.DEBUG,  # per-message lines only at DEBUG
    )


def milvus_client(settings: Settings) -> MilvusClient:
    """The configured Milvus server, else the Milvus Lite file under ``var_dir``."""
    token = settings.milvus.token.get_secret_value() if settings.milvus.token else None
    return connect(settings.milvus.uri, lite_path=settings.milvus_lite_path, token=token)


def open_embedder(settings: Settings) -> Embedder:
    """The ONNX embedding session the settings describe (model variant, threads, batching)."""
    return Embedder(
        embedding_dir(settings.models.dir),
        providers=settings.models.providers,
        threads=settings.models.intra_op_threads,
        batch_size=settings.models.embedding_batch_size,
        batch_tokens=settings.models.embedding_batch_tokens,
        precision=settings.models.embedding_precision,
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


async def _register_outbound(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    topics: Topics,
    group_prefix: str,
    producer: dict[str, Any],
    brokers: dict[str, KafkaBroker],
) -> None:
    """Outbound delivery consumers, for the targets that are configured."""
    out = settings.outbound
    if out.mllp_host is None and out.fhir_base_url is None:
        return
    broker = brokers["outbound"] = stage_broker("outbound", producer)
    if out.mllp_host is not None:
        context = ssl.create_default_context(cafile=str(out.mllp_tls_ca)) if out.mllp_tls_ca else None
        client = OutboundMllp(
            out.mllp_host,
            out.mllp_port,
            ssl=context,
            ack_timeout_s=out.ack_timeout_s,
            max_attempts=out.max_attempts,
        )
        stack.push_async_callback(client.close)
        register_outbound_mllp(broker, topics, client, group_id=f"{group_prefix}outbound-mllp")
    if out.fhir_base_url is not None:
        headers = {"Authorization": f"Bearer {out.fhir_token.get_secret_value()}"} if out.fhir_token else {}
        http = httpx.AsyncClient(headers=headers, timeout=out.ack_timeout_s)
        stack.push_async_callback(http.aclose)
        writer = FhirWriter(http, out.fhir_base_url, max_attempts=out.max_attempts)
        register_outbound_fhir(broker, topics, writer, group_id=f"{group_prefix}outbound-fhir")


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
    ), jwks


async def _start_dashboard(
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    topics: Topics,
    bootstrap: str,
    http_port: int,
    token: str,
) -> tuple[DashboardProcess, tuple[str, str] | None]:
    """The dashboard process, told where the API and Kafka are; a generated admin login when
    none is configured (embedded mode only: `running_stack` refuses that otherwise)."""
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
        "api_url": dash.api_url or f"http://{api_host}:{http_port}",
    }
    env = {
        "CLINSTREAM_DASHBOARD": json.dumps(section),
        "CLINSTREAM_HTTP__API_TOKEN": token,
        "CLINSTREAM_KAFKA__BOOTSTRAP": bootstrap,
    }
    if settings.embedded:
        env["CLINSTREAM_KAFKA__ENABLE_IDEMPOTENCE"] = "false"  # Tansu rejects InitProducerId
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


def _notes_service(
    settings: Settings, stack: contextlib.AsyncExitStack, embedder: Embedder, store: MilvusStore
) -> NotesService:
    """The notes stage: its store, its low-priority drafting thread, the generator (opened on
    first use, in that thread) and the contextual query it retrieves passages with."""
    notes_settings = settings.notes
    notes_store = NotesStore(settings.notes_store_path)
    stack.callback(notes_store.close)
    executor = background_executor(notes_settings.cpu_nice, "clinstream-notes")
    stack.callback(executor.shutdown)
    generator = None
    if notes_settings.generator:
        model_dir = notes_settings.generator_dir or generator_dir(settings.models.dir)
        generator = LazyGenerator(
            model_dir, providers=settings.models.providers, threads=settings.models.intra_op_threads
        )
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


@contextlib.asynccontextmanager
async def running_stack(
    settings: Settings, *, topics: Topics = TOPICS, group_prefix: str = ""
) -> AsyncIterator[Stack]:
    """Run every stage until the context exits."""
    token = settings.http.api_token.get_secret_value() if settings.http.api_token else None
    if token is None and not settings.embedded:
        raise ConfigurationError("CLINSTREAM_HTTP__API_TOKEN must be set when using an external Kafka")
    dash = settings.dashboard
    if dash.enabled and not settings.embedded and not dash.users and dash.trusted_user_header is None:
        raise ConfigurationError(
            "the dashboard needs CLINSTREAM_DASHBOARD__USERS or __TRUSTED_USER_HEADER with an external Kafka"
        )
    api_token = token or secrets.token_urlsafe(24)
    rules = ruleset_from(settings.cds)  # a bad rule setting stops start-up, not the first record
    if settings.cds.risk_models:
        models = [OnnxRiskModel(path, settings.models.providers) for path in settings.cds.risk_models]
        for model in models:
            log.info("risk model %s v%s on %s", model.contract.id, model.contract.version, model.providers)
        rules = replace(rules, risk_models=tuple(models))

    async with contextlib.AsyncExitStack() as stack:
        embedded: EmbeddedBroker | None = None
        if settings.embedded:
            embedded = EmbeddedBroker(
                port=settings.kafka.embedded_port, log_path=settings.var_dir / "broker.log"
            )
            await stack.enter_async_context(embedded)
            bootstrap = embedded.bootstrap
        else:
            bootstrap = str(settings.kafka.bootstrap)
        await ensure_topics(
            bootstrap,
            topics.all(),
            partitions=settings.kafka.partitions,
            replication_factor=settings.kafka.replication_factor,
        )

        embedder = await asyncio.to_thread(open_embedder, settings)  # queries: normal priority
        writer = background_executor(settings.indexer.cpu_nice)
        stack.callback(writer.shutdown)
        index_embedder = embedder
        if settings.indexer.cpu_nice:  # its own session, opened in the thread so its pool inherits
            loop = asyncio.get_running_loop()
            index_embedder = await loop.run_in_executor(writer, open_embedder, settings)
        client = await asyncio.to_thread(milvus_client, settings)
        stack.callback(client.close)
        store, knowledge = milvus_stores(settings, client, embedder)
        if settings.cds.note_embedding and notes.RULE_ID not in settings.cds.disabled_rules:
            matcher = await asyncio.to_thread(
                notes.NoteMatcher, embedder, min_cosine=settings.cds.note_similarity_min
            )
            rules = replace(rules, note_matcher=matcher)
        await asyncio.to_thread(store.ensure_collection)
        await asyncio.to_thread(knowledge.ensure_collection)
        await asyncio.to_thread(load_starter, knowledge, embedder)

        producer = producer_config(settings.kafka, bootstrap, embedded=settings.embedded)
        stages = ("normalizer", "indexer", "cds") + (("notes",) if settings.notes.enabled else ())
        brokers = {name: stage_broker(name, producer) for name in stages}
        register_normalizer(
            brokers["normalizer"], topics, settings.normalizer, group_id=f"{group_prefix}normalizer"
        )
        register_fhir_normalizer(
            brokers["normalizer"], topics, settings.normalizer, group_id=f"{group_prefix}normalizer-fhir"
        )
        flusher = Flusher(store, FlushPolicy(settings.indexer.flush_rows, settings.indexer.flush_age_s))
        register_indexer(
            brokers["indexer"],
            topics,
            settings.indexer,
            index_embedder,
            store,
            group_id=f"{group_prefix}indexer",
            flusher=flusher,
            executor=writer,
        )
        stack.push_async_callback(asyncio.to_thread, flusher.flush_now)
        ticker = asyncio.create_task(_flush_when_due(flusher))
        stack.callback(ticker.cancel)
        await asyncio.to_thread(medsafety.preload)
        state_store = SqliteStateStore(settings.cds_state_path)
        stack.callback(state_store.close)
        hooks_http = httpx.AsyncClient(timeout=5.0)  # reads the Patient from a CDS client's FHIR server
        stack.push_async_callback(hooks_http.aclose)
        hooks, jwks = _cds_hooks(settings, topics, state_store, brokers["cds"], hooks_http)
        if jwks is not None:
            keys_task = asyncio.create_task(jwks.keep_fresh())
            stack.callback(keys_task.cancel)
        writeback = writeback_from(settings.cds)
        register_cds(
            brokers["cds"],
            topics,
            rules,
            state_store,
            group_id=f"{group_prefix}cds",
            writeback=writeback,
            max_records=settings.cds.batch_max_records,
            batch_timeout_ms=settings.cds.batch_timeout_ms,
        )
        notes_routes_: Sequence[BaseRoute] = ()
        if settings.notes.enabled:
            notes_service = _notes_service(settings, stack, embedder, store)
            register_notes(brokers["notes"], topics, notes_service, group_id=f"{group_prefix}notes")
            notes_broker = brokers["notes"]

            async def _publish(messages: Sequence[Outgoing]) -> None:
                await publish_in_order(notes_broker, messages)

            notes_routes_ = notes_routes(notes_service, _publish, topics)
        _warn_undelivered(settings)
        await _register_outbound(stack, settings, topics, group_prefix, producer, brokers)
        for broker in brokers.values():
            stack.push_async_callback(broker.stop)
        # Each consumer group join takes seconds; join them concurrently.
        await asyncio.gather(*(broker.start() for broker in brokers.values()))

        sink = make_sink(
            settings.kafka.ingest_client,
            producer,
            confirm_timeout_s=settings.kafka.request_timeout_ms / 1000 + 1,
        )
        await sink.start()
        stack.push_async_callback(sink.stop)
        mllp = MllpServer(sink, topics, settings.mllp)
        await mllp.start()
        stack.push_async_callback(mllp.stop)

        query = ContextualQuery(embedder, store, knowledge)

        def index_stats() -> list[CollectionStats]:
            return [CollectionStats(s.collection, s.count(), embedder.identity) for s in (store, knowledge)]

        fhir = FhirIngress(sink, topics, settings.http)
        agents_routes_: list[BaseRoute] = []
        loopback: httpx.AsyncClient | None = None
        if settings.agents.enabled:
            # The tools' backend: this server's own query API (its address is known once it listens).
            loopback = httpx.AsyncClient(headers={"Authorization": f"Bearer {api_token}"}, timeout=120.0)
            stack.push_async_callback(loopback.aclose)

            async def audit(event: dict[str, Any], patient: str) -> None:
                await sink.send(
                    topics.audit,
                    json.dumps(event, separators=(",", ":")).encode(),
                    key=patient.encode() or None,
                    headers=[("resource_type", b"AuditEvent")],
                )

            agents_routes_ = [*agent_routes(ApiBackend(loopback), audit)]
        app = build_app(
            Authenticator(api_token, settings.http),
            [
                *fhir.routes(),
                *query_routes(query, index_stats),
                *hooks.routes(),
                *hooks.alert_routes(),
                *notes_routes_,
                *agents_routes_,
            ],
            own_auth=(CDS_HOOKS_PATH,),
        )
        server = make_server(app, settings.http.host, settings.http.port)
        serve_task = asyncio.create_task(server.serve())

        async def _stop_http() -> None:
            server.should_exit = True
            await serve_task

        stack.push_async_callback(_stop_http)
        while not server.started:
            if serve_task.done():
                serve_task.result()  # raises the bind error
                raise ConfigurationError("HTTP server stopped during start-up")
            await asyncio.sleep(0.02)
        http_port = int(server.servers[0].sockets[0].getsockname()[1])
        if loopback is not None:
            loop_host = "127.0.0.1" if settings.http.host in ("0.0.0.0", "::") else settings.http.host  # noqa: S104
            loopback.base_url = httpx.URL(f"http://{loop_host}:{http_port}")
        dashboard_url, dashboard_login = None, None
        if settings.dashboard.enabled:
            process, dashboard_login = await _start_dashboard(
                settings, stack, topics, bootstrap, http_port, api_token
            )
            dashboard_url = process.url

        yield Stack(
            settings=settings,
            topics=topics,
            bootstrap=bootstrap,
            embedded_broker=embedded,
            mllp=mllp,
            http_port=http_port,
            api_token=api_token,
            store=store,
            embedder=embedder,
            query=query,
            dashboard_url=dashboard_url,
            dashboard_login=dashboard_login,
        )
