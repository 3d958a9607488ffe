"""Configuration sections shared by the stages.

The root settings object (`clinstream.settings.Settings`, env prefix ``CLINSTREAM_``)
is built once at start-up from these sections and the stages receive the section they
need. Sections are frozen pydantic models with no I/O.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    """Kafka connection and delivery guarantees."""

    bootstrap: str | None = Field(
        default=None,
        description="Kafka bootstrap servers (host:port,...). Unset: start the embedded broker.",
    )
    embedded_broker: Literal["kafka", "tansu"] = Field(
        default="kafka",
        description="The broker `clinstream up` starts when no bootstrap is set: a single-node Apache Kafka "
        "with its log under the var dir (needs Java 17+; acknowledged messages survive a crash), or Tansu "
        "in memory (also the fallback without Java; acknowledged messages die with it).",
    )
    embedded_heap_mb: int = Field(
        default=256, ge=128, description="Heap of the embedded Apache Kafka JVM (MiB)."
    )
    partitions: int = Field(default=6, ge=1, description="Partitions of each topic created by clinstream.")
    replication_factor: int = Field(default=1, ge=1, description="Replication factor of created topics.")
    enable_idempotence: bool | None = Field(
        default=None,
        description="Idempotent producers. Unset: on, except against the embedded Tansu broker "
        "(it rejects InitProducerId).",
    )
    transactions: bool | None = Field(
        default=None,
        description="Exactly-once stateful stages: state changes, outputs and the input offsets in one "
        "Kafka transaction. Unset: on wherever producers are idempotent.",
    )
    transaction_timeout_ms: int = Field(
        default=15_000,
        ge=1000,
        description="How long the broker keeps a transaction of a crashed instance open before aborting "
        "it; read_committed consumers of its partitions wait that long at most.",
    )
    instance_id: str | None = Field(
        default=None,
        description="Stable name of this process among a stage's instances (its transactional ids, so a "
        "restart fences its predecessor). Unset: the host name and the var dir.",
    )
    request_timeout_ms: int = Field(
        default=10_000, ge=1000, description="How long a producer waits for the broker's acknowledgement."
    )
    embedded_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the embedded broker (0: a free port)."
    )
    session_timeout_ms: int = Field(
        default=10_000,
        ge=1000,
        description="Consumer group session timeout: how soon a group notices that a stage instance is gone. "
        "Tansu also completes each group join after half of it. Apache Kafka refuses "
        "values below its group.min.session.timeout.ms (6 s by default).",
    )
    ingest_client: Literal["librdkafka", "aiokafka"] = Field(
        default="librdkafka",
        description="Producer of the ingress connectors (MLLP, FHIR): librdkafka or aiokafka.",
    )
    max_record_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024 * 1024,
        le=1_000_000_000,
        description="Largest record a producer writes: above the 32 MiB HTTP and 16 MiB MLLP input limits, "
        "with room for the envelope and the normalized FHIR. An Apache Kafka broker needs message.max.bytes "
        "(and replica.fetch.max.bytes) at least this large (docs/deploy.md); a larger input is refused "
        "(413 / AR), never half-stored.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="How every producer, consumer and admin client reaches Kafka: PLAINTEXT, SSL (TLS), "
        "SASL_PLAINTEXT or SASL_SSL (a login over TLS).",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="SCRAM-SHA-512", description="SASL mechanism (with a SASL_* protocol)."
    )
    sasl_username: str | None = Field(default=None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(default=None, description="SASL password (never logged).")
    ssl_ca_file: Path | None = Field(
        default=None, description="PEM CA bundle the broker's certificate must chain to. Unset: the system's."
    )
    ssl_cert_file: Path | None = Field(
        default=None, description="PEM client certificate, for brokers that require mutual TLS."
    )
    ssl_key_file: Path | None = Field(default=None, description="PEM private key of the client certificate.")
    ssl_key_password: SecretStr | None = Field(
        default=None, description="Password of an encrypted client key (never logged)."
    )
    ssl_check_hostname: bool = Field(
        default=True, description="Check that the broker's certificate names the host connected to."
    )

    @property
    def uses_tls(self) -> bool:
        """Whether connections are TLS."""
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        """Whether connections log in with SASL."""
        return self.security_protocol.startswith("SASL_")


def kafka_security(kafka: KafkaSettings) -> dict[str, Any]:
    """The connection arguments every aiokafka client gets (producers, consumers, admin): none
    for PLAINTEXT; a TLS context and the SASL login otherwise. Raises ValueError for a SASL
    protocol without a user name and password."""
    if kafka.security_protocol == "PLAINTEXT":
        return {}
    found: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.uses_tls:
        from aiokafka.helpers import create_ssl_context

        context = create_ssl_context(
            cafile=str(kafka.ssl_ca_file) if kafka.ssl_ca_file else None,
            certfile=str(kafka.ssl_cert_file) if kafka.ssl_cert_file else None,
            keyfile=str(kafka.ssl_key_file) if kafka.ssl_key_file else None,
            password=kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None,
        )
        context.check_hostname = kafka.ssl_check_hostname
        found["ssl_context"] = context
    if kafka.uses_sasl:
        if not kafka.sasl_username or kafka.sasl_password is None:
            raise ValueError("CLINSTREAM_KAFKA__SASL_USERNAME and _SASL_PASSWORD are needed with SASL")
        found |= {
            "sasl_mechanism": kafka.sasl_mechanism,
            "sasl_plain_username": kafka.sasl_username,
            "sasl_plain_password": kafka.sasl_password.get_secret_value(),
        }
    return found


def librdkafka_security(kafka: KafkaSettings) -> dict[str, Any]:
    """The same connection settings for librdkafka clients (confluent-kafka)."""
    if kafka.security_protocol == "PLAINTEXT":
        return {}
    found: dict[str, Any] = {"security.protocol": kafka.security_protocol.lower()}
    if kafka.uses_tls:
        found["ssl.endpoint.identification.algorithm"] = "https" if kafka.ssl_check_hostname else "none"
        for key, path in (
            ("ssl.ca.location", kafka.ssl_ca_file),
            ("ssl.certificate.location", kafka.ssl_cert_file),
            ("ssl.key.location", kafka.ssl_key_file),
        ):
            if path is not None:
                found[key] = str(path)
        if kafka.ssl_key_password is not None:
            found["ssl.key.password"] = kafka.ssl_key_password.get_secret_value()
    if kafka.uses_sasl:
        if not kafka.sasl_username or kafka.sasl_password is None:
            raise ValueError("CLINSTREAM_KAFKA__SASL_USERNAME and _SASL_PASSWORD are needed with SASL")
        found |= {
            "sasl.mechanisms": kafka.sasl_mechanism,
            "sasl.username": kafka.sasl_username,
            "sasl.password": kafka.sasl_password.get_secret_value(),
        }
    return found


def producer_config(kafka: KafkaSettings, bootstrap: str, *, tansu: bool) -> dict[str, Any]:
    """Producer settings for every clinstream producer: explicit, never the library defaults.

    aiokafka defaults to ``acks=1``; we always wait for all in-sync replicas. ``tansu``: the
    broker is the embedded Tansu, which has no idempotent producers.
    """
    idempotent = kafka.enable_idempotence if kafka.enable_idempotence is not None else not tansu
    return {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "enable_idempotence": idempotent,
        "request_timeout_ms": kafka.request_timeout_ms,
        "linger_ms": 0,
        "max_request_size": kafka.max_record_bytes,
        **kafka_security(kafka),
    }


def transactional(kafka: KafkaSettings, *, tansu: bool) -> bool:
    """Whether the stateful stages run their batches as Kafka transactions (exactly-once)."""
    if kafka.transactions is not None:
        return kafka.transactions
    return kafka.enable_idempotence if kafka.enable_idempotence is not None else not tansu


class MilvusSettings(_Section):
    """Vector store location and collection layout."""

    uri: str | None = Field(
        default=None, description="Milvus server URI. Unset: Milvus Lite in `<var_dir>/milvus/`."
    )
    token: SecretStr | None = Field(
        default=None,
        description="Milvus server token (`user:password`, never logged); the server needs "
        "common.security.authorizationEnabled.",
    )
    tls_ca_file: Path | None = Field(
        default=None,
        description="PEM CA (or server certificate) to reach a Milvus server over TLS (tlsMode 1); the URI "
        "then starts with https://.",
    )
    tls_server_name: str | None = Field(
        default=None, description="Host name the Milvus server's certificate names, when not the URI's."
    )
    collection: str = Field(
        default="clinical_chunks_v2",
        description="Collection of patient record chunks (v2 layout: with chunk number, encounter, codes).",
    )
    knowledge_collection: str = Field(
        default="knowledge_chunks", description="Collection of knowledge-base passages (`clinstream kb add`)."
    )
    index_type: str | None = Field(
        default=None,
        description="Dense index type. Unset: FLAT (exact) on Milvus Lite, HNSW on a server.",
    )


class MllpSettings(_Section):
    """Inbound HL7 v2 over MLLP."""

    host: str = Field(default="127.0.0.1", description="MLLP listen address.")
    port: int = Field(default=2575, ge=0, le=65535, description="MLLP listen port (0: a free port).")
    backfill_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="A second MLLP listener for history (`clinstream backfill --mllp`): what it takes "
        "travels in the backfill lane, served after live messages. Unset: none (0: a free port).",
    )
    max_message_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest accepted message; larger frames get AR."
    )
    receiving_application: str = Field(default="CLINSTREAM", description="MSH-3 of our ACKs.")
    receiving_facility: str = Field(default="CLINSTREAM", description="MSH-4 of our ACKs.")
    accepted_message_types: tuple[str, ...] = Field(
        default=(),
        description='Message types accepted (e.g. ["ADT^*", "ORU^R01"]); empty: every well-formed '
        "message. Others get AR 200/201.",
    )
    allowed_senders: tuple[str, ...] = Field(
        default=(),
        description="Sending facilities (MSH-4) or APP^FACILITY (MSH-3^MSH-4) allowed to send; empty: all. "
        "Others get AR.",
    )
    tls_cert: Path | None = Field(default=None, description="PEM certificate: serve MLLP over TLS.")
    tls_key: Path | None = Field(default=None, description="PEM private key of the TLS certificate.")
    tls_client_ca: Path | None = Field(
        default=None, description="PEM CA bundle: require client certificates signed by it (mutual TLS)."
    )
    duplicate_memory: int = Field(
        default=100_000, ge=0, description="(sender, MSH-10) pairs remembered to answer retransmissions."
    )


class HttpSettings(_Section):
    """The HTTP API (FHIR ingress, query, CDS Hooks, agent tools)."""

    host: str = Field(default="127.0.0.1", description="HTTP listen address.")
    port: int = Field(default=8080, ge=0, le=65535, description="HTTP listen port (0: a free port).")
    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token every API call must present. Unset in embedded mode: a random one "
        "is generated and printed at start.",
    )
    api_token_scopes: str = Field(
        default="system/*.cruds system/AuditEvent.rs",
        description="SMART v2 scopes the static API token carries (space separated); JWTs carry "
        "their own in their `scope` claim.",
    )
    jwt_hs256_secret: SecretStr | None = Field(
        default=None, description="Also accept JWTs signed with this HS256 secret."
    )
    jwt_public_key_file: Path | None = Field(
        default=None, description="Also accept JWTs signed with this PEM public key (RS256/ES256)."
    )
    jwt_audience: str | None = Field(default=None, description="Required `aud` of accepted JWTs.")
    jwt_issuer: str | None = Field(default=None, description="Required `iss` of accepted JWTs.")
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="Largest accepted request body; larger gets 413."
    )
    tls_cert: Path | None = Field(
        default=None, description="PEM certificate (chain): serve the HTTP API over TLS (https)."
    )
    tls_key: Path | None = Field(default=None, description="PEM private key of the TLS certificate.")
    tls_ca_file: Path | None = Field(
        default=None,
        description="PEM CA bundle this deployment's own clients (agent tools, dashboard) trust the API's "
        "certificate with. Unset: the certificate itself (self-signed).",
    )

    @property
    def scheme(self) -> str:
        """``https`` when the API serves TLS, else ``http``."""
        return "https" if self.tls_cert is not None else "http"


class DashboardSettings(_Section):
    """The ops dashboard (Streamlit)."""

    enabled: bool = Field(default=True, description="`clinstream up` also starts the dashboard.")
    host: str = Field(default="127.0.0.1", description="Dashboard listen address.")
    port: int = Field(default=8501, ge=0, le=65535, description="Dashboard listen port (0: a free port).")
    users: list[SecretStr] = Field(
        default_factory=list,
        description="Dashboard logins, JSON list of `name:role:hash` (hash from `clinstream password`); "
        "roles viewer, operator, integration, clinician, admin. Unset in embedded mode: an `admin` "
        "login with a random password is printed at start.",
    )
    trusted_user_header: str | None = Field(
        default=None,
        description="OIDC hook: trust this header for the user's name (set by an authenticating proxy "
        "such as oauth2-proxy, which must strip it from clients), e.g. X-Forwarded-Email.",
    )
    trusted_role_header: str | None = Field(
        default=None,
        description="With the user header: the header with the user's groups (comma-separated); the "
        "first that names a role is used, else viewer.",
    )
    api_url: str | None = Field(
        default=None, description="Query API base URL the dashboard reads. Unset: this deployment's."
    )
    metrics_urls: list[str] = Field(
        default_factory=list,
        description="Prometheus /metrics URLs of the stage processes. Unset: the API server's /metrics.",
    )
    sample_s: float = Field(default=5.0, gt=0, description="Seconds between samples of metrics and lag.")
    history_min: int = Field(default=60, ge=1, le=1440, description="Minutes of samples the charts keep.")


class ModelsSettings(_Section):
    """ONNX models built by `make models`."""

    dir: Path | None = Field(
        default=None,
        description="Root of the built models. Unset: `${XDG_CACHE_HOME:-~/.cache}/clinstream/models`.",
    )
    providers: tuple[str, ...] = Field(
        default=("CUDAExecutionProvider", "CPUExecutionProvider"),
        description="ONNX Runtime execution providers in order of preference; unavailable ones are skipped.",
    )
    intra_op_threads: int = Field(default=0, ge=0, description="ONNX Runtime threads (0: runtime default).")
    embedding_batch_size: int = Field(default=64, ge=1, description="Most texts per embedding call.")
    embedding_batch_tokens: int = Field(
        default=1024,
        ge=1,
        description="Most tokens per embedding call, padding included (texts are grouped by length).",
    )
    embedding_precision: Literal["auto", "fp32", "int8"] = Field(
        default="auto",
        description="Embedding model variant (fp32, int8). auto: what the record collection was built"
        " with, else int8 on a CPU with VNNI (same retrieval quality, twice the speed: bench/retrieval.py,"
        " bench/embed.py) and fp32 on a GPU or an older CPU. A collection keeps the one it was built with.",
    )


class OutboundSettings(_Section):
    """Delivery back into the EHR (HL7 over MLLP, FHIR write-back). Unset targets: not started."""

    mllp_host: str | None = Field(default=None, description="EHR MLLP endpoint host for outbound HL7.")
    mllp_port: int = Field(default=2575, ge=1, le=65535, description="EHR MLLP endpoint port.")
    mllp_tls_ca: Path | None = Field(
        default=None,
        description="PEM CA bundle: connect to the EHR MLLP endpoint over TLS, verified with it.",
    )
    fhir_base_url: str | None = Field(default=None, description="EHR FHIR base URL for write-back (PUT).")
    fhir_token: SecretStr | None = Field(default=None, description="Bearer token for the EHR FHIR server.")
    max_attempts: int = Field(default=5, ge=1, description="Delivery attempts before a message is failed.")
    ack_timeout_s: float = Field(default=30.0, gt=0, description="Wait for an outbound ACK or HTTP answer.")


class NormalizerSettings(_Section):
    """HL7 v2 → FHIR R4 normalization."""

    default_timezone: str = Field(
        default="UTC",
        description="IANA zone for HL7 timestamps that carry no offset (set to the hospital's zone).",
    )
    patient_authorities: dict[str, str] = Field(
        default_factory=dict,
        description="FHIR Patient identifier system → HL7 assigning authority (PID-3 CX.4), as JSON, so "
        'a FHIR Patient gets the same key as its HL7 messages: {"http://mercy.example/mrn":"MERCY"}.',
    )
    batch_max_records: int = Field(
        default=64, ge=1, description="HL7 v2 messages normalized per batch (one commit per batch)."
    )
    batch_timeout_ms: int = Field(
        default=20, ge=1, description="How long an idle normalizer waits between polls."
    )


class IndexerSettings(_Section):
    """Indexing batches and the Milvus flush policy."""

    batch_max_records: int = Field(default=256, ge=1, description="Records per indexing batch.")
    batch_timeout_ms: int = Field(default=100, ge=1, description="Longest wait to fill a batch.")
    flush_rows: int = Field(
        default=10_000, ge=1, description="Seal Milvus segments after this many written rows."
    )
    flush_age_s: float = Field(
        default=5.0, gt=0, description="Seal Milvus segments once the oldest unsealed write is this old."
    )
    embedding_cache: int = Field(
        default=20_000,
        ge=0,
        description="Chunk vectors remembered by a digest of their text (1.5 kB each), so text the"
        " feed repeats (the patient and visit of every message, unchanged report sections) is not"
        " embedded again. 0: off.",
    )
    cpu_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Nice increment of the indexer's embedding and write threads (Linux): when CPU is"
        " short, MLLP ACKs, normalizing and alerts run first and indexing takes what is left. 0 = same"
        " priority as the other stages.",
    )


class CdsSettings(_Section):
    """Clinical decision support: rule settings, alert hygiene, where patient state is kept."""

    critical_limits: dict[str, dict[str, float | None]] = Field(
        default_factory=dict,
        description='Critical lab limits over the defaults, canonical units, as JSON: {"potassium": '
        '{"low": 2.8, "high": 6.2}} (null switches a side off). Analytes: see docs/decision-support.md.',
    )
    vitals_window_h: float = Field(
        default=12.0,
        gt=0,
        description="Hours: the latest vital sign within this counts (NEWS2, qSOFA, SIRS).",
    )
    news2_scale2_codes: tuple[str, ...] = Field(
        default=(
            "http://hl7.org/fhir/sid/icd-10-cm|J96.02",
            "http://hl7.org/fhir/sid/icd-10-cm|J96.12",
            "http://hl7.org/fhir/sid/icd-10-cm|J96.22",
            "http://hl7.org/fhir/sid/icd-10-cm|J96.92",
        ),
        description="Active condition codes (system|code) that put a patient on NEWS2 SpO2 Scale 2.",
    )
    local_codes: dict[str, str] = Field(
        default_factory=dict,
        description='Local observation codes → analyte, as JSON: {"http://hosp.example/obs|RESP": '
        '"respiratory_rate"}. LOINC codes are known already.',
    )
    dedupe_window_h: float = Field(
        default=12.0, gt=0, description="Hours within which one patient + rule + subject alerts once."
    )
    rule_dedupe_window_h: dict[str, float] = Field(
        default_factory=dict, description='Per-rule dedupe windows in hours, as JSON: {"sepsis-sirs": 24}.'
    )
    disabled_rules: tuple[str, ...] = Field(default=(), description="Rule ids that raise nothing here.")
    note_embedding: bool = Field(
        default=True,
        description="Also find note safety signals with the embedding model (sentences like the"
        " written examples of a signal), not only by their phrases.",
    )
    note_similarity_min: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Cosine a note sentence needs to its closest example of a signal (embedding model).",
    )
    stale_after_h: float = Field(
        default=24.0,
        gt=0,
        description="Hours: findings on older results (a backfill, a catch-up) update state, page no one.",
    )
    live_first_ms: int = Field(
        default=250,
        ge=1,
        description="While a live record reaches decision support later than this (in the last 2 s), "
        "the edges of the same process hold backfilled history back (FHIR 429, MLLP ACK held).",
    )
    state_path: Path | None = Field(
        default=None,
        description="SQLite replica of the per-patient state and shown cards (changelogs cds.state.v1, "
        "cds.cards.v1). Unset: `<var_dir>/cds/state.sqlite`.",
    )
    jwt_secret: SecretStr | None = Field(
        default=None, description="CDS Hooks: accept HS256 JWTs signed with this (development and tests)."
    )
    jwks_file: Path | None = Field(
        default=None, description="CDS Hooks: JWKS file of the EHR's public keys (RS/ES 256/384)."
    )
    jwks_url: str | None = Field(
        default=None,
        description="CDS Hooks: JWKS URL of the EHR's public keys; read at start, hourly, on an unknown kid.",
    )
    jwt_issuers: tuple[str, ...] = Field(
        default=(), description="CDS Hooks: accepted `iss` values (JSON list); empty: any a known key signed."
    )
    public_base_url: str | None = Field(
        default=None,
        description="CDS Hooks: base URL the EHR calls (JWT `aud`) when behind a proxy. Unset: request URL.",
    )
    cards_window_h: float = Field(
        default=24.0, gt=0, description="CDS Hooks: alerts raised within this many hours are shown as cards."
    )
    batch_max_records: int = Field(
        default=256,
        ge=1,
        description="Most normalized records decided per batch (one state write, one commit): a backlog"
        " goes through in batches this large, a live feed in what has arrived.",
    )
    batch_timeout_ms: int = Field(
        default=20, ge=1, description="How long an idle decision-support consumer waits between polls."
    )
    risk_models: tuple[Path, ...] = Field(
        default=(),
        description="Risk-model contract files (JSON list of paths); each names its ONNX graph "
        "(docs/decision-support.md).",
    )
    writeback_fhir: bool = Field(
        default=False,
        description="Write each alert back as a FHIR DetectedIssue with its Provenance (outbound FHIR).",
    )
    writeback_hl7: bool = Field(
        default=False, description="Send each alert to the EHR as an HL7 ORU^R01 (outbound MLLP)."
    )
    writeback_hl7_receiver: str = Field(
        default="", description="MSH-5^MSH-6 (receiving application^facility) of those ORU^R01 messages."
    )


class NotesSettings(_Section):
    """Draft clinical notes: triggers, the generator, the grounding guard, write-back."""

    enabled: bool = Field(
        default=True, description="Run the notes stage (drafts on discharge and abnormal reports)."
    )
    generator: bool = Field(
        default=True,
        description="Write narrative sections with the generative model; false: structured sections only.",
    )
    generator_dir: Path | None = Field(
        default=None,
        description="A decoder-with-past ONNX model directory (model.onnx, tokenizer.json, "
        "chat_template.jinja, manifest.json). Unset: SmolLM2-135M-Instruct built by `make models`.",
    )
    triggers: tuple[Literal["discharge-summary", "lab-interpretation"], ...] = Field(
        default=("discharge-summary", "lab-interpretation"),
        description="Drafts written on events (JSON list): a stay ends, a report with an abnormal result "
        "arrives. Each takes seconds of CPU with the model; drop lab-interpretation on a busy CPU feed.",
    )
    guard: Literal["remove", "mark"] = Field(
        default="remove",
        description="Sentences the chart does not support: removed, or kept marked UNVERIFIED.",
    )
    max_new_tokens: int = Field(
        default=120, ge=8, le=2048, description="Token budget of the summary section."
    )
    cpu_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Nice increment of the drafting thread (generation yields the CPU).",
    )
    store_path: Path | None = Field(
        default=None,
        description="SQLite replica of the charts and drafts (notes.charts.v1, notes.drafts.v1). "
        "Unset: `<var_dir>/notes/notes.sqlite`.",
    )
    writeback_fhir: bool = Field(
        default=True,
        description="Send drafts (and reviews) as FHIR DocumentReference + Provenance (outbound FHIR).",
    )
    writeback_hl7: bool = Field(
        default=True, description="Send drafts (and reviews) as HL7 MDM^T02/T08/T11 (outbound MLLP)."
    )
    writeback_hl7_receiver: str = Field(
        default="", description="MSH-5^MSH-6 (receiving application^facility) of those MDM messages."
    )


class AssistSettings(_Section):
    """Diagnostic assistance, treatment suggestions and cited answers (`/assist/*`)."""

    enabled: bool = Field(default=True, description="Run the assistance stage and serve `/assist/*`.")
    disabled_rules: tuple[str, ...] = Field(
        default=(),
        description='Suggestion rules switched off (JSON list of rule ids, e.g. ["dx-hypertension"]).',
    )
    store_path: Path | None = Field(
        default=None,
        description="SQLite replica of the stage's charts (assist.charts.v1). "
        "Unset: `<var_dir>/assist/charts.sqlite`.",
    )
    generator: Literal["onnx", "openai"] = Field(
        default="onnx",
        description="Who writes `/assist/ask` answers: the built-in ONNX model (the notes generator), "
        "or an OpenAI-compatible chat server (llama.cpp, vLLM, Ollama, a hosted model).",
    )
    openai_base_url: str | None = Field(
        default=None, description="The OpenAI-compatible server's base URL (e.g. http://llm:8000/v1)."
    )
    openai_model: str = Field(default="", description="The model name the server expects.")
    openai_api_key: SecretStr | None = Field(default=None, description="Its API key, if it asks for one.")
    ask_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Time an answer may take before the caller gets 503."
    )
    ask_max_new_tokens: int = Field(
        default=96, ge=16, le=4096, description="Token budget of one answer (three sentences need about 80)."
    )
    writeback_conditions: bool = Field(
        default=True,
        description="An accepted diagnosis suggestion (CDS Hooks feedback) goes out as a provisional "
        "Condition on the FHIR write-back channel.",
    )


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class ExportsSettings(_Section):
    """De-identified datasets for model builders (`clinstream export`)."""

    deid_key: SecretStr | None = Field(
        default=None,
        description="Secret (16+ characters) behind pseudonyms and date offsets: the same key gives the same "
        "dataset; keep it secret, as it links pseudonyms across exports. Required by `clinstream export`.",
    )
    parquet: bool = Field(default=True, description="Write Parquet beside JSON lines.")
    deid_mode: Literal["shifted", "safe-harbor"] = Field(
        default="shifted",
        description="`shifted`: dates shifted per patient and keyed pseudonyms (a limited data set / "
        "expert-determination style export, needs the key); `safe-harbor`: HIPAA Safe Harbor, years only, "
        "random codes per export, no key.",
    )


class AgentsSettings(_Section):
    """Agent tools (`/agent/tools`, `clinstream mcp`)."""

    enabled: bool = Field(default=True, description="Serve the agent tools on the API server.")
    token_ttl_s: int = Field(
        default=900, ge=60, le=86_400, description="Lifetime of tokens minted by `clinstream agent-token`."
    )
    api_url: str = Field(
        default="http://127.0.0.1:8080", description="`clinstream mcp`: the API the MCP server calls."
    )
    inference_url: str | None = Field(
        default=None,
        description="The inference stage's API (alerts, drafts) for the tools when it runs in another "
        "process (`clinstream run inference`); unset: the same process.",
    )
    token: SecretStr | None = Field(
        default=None, description="`clinstream mcp`: the agent's scoped token (`clinstream agent-token`)."
    )
