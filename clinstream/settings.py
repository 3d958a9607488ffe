"""The one settings object, built once at start-up from ``CLINSTREAM_*`` variables.

Nested sections use ``__``: ``CLINSTREAM_KAFKA__BOOTSTRAP=kafka:9092``,
``CLINSTREAM_MLLP__PORT=2575``. The README's configuration table lists every variable
(`clinstream config` prints them with their current values, secrets masked).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kernel.settings import (
    AgentsSettings,
    AssistSettings,
    CdsSettings,
    DashboardSettings,
    ExportsSettings,
    HttpSettings,
    IndexerSettings,
    KafkaSettings,
    LogLevel,
    MilvusSettings,
    MllpSettings,
    ModelsSettings,
    NormalizerSettings,
    NotesSettings,
    OutboundSettings,
)


class Settings(BaseSettings):
    """Root settings: one frozen object passed down to the stages."""

    model_config = SettingsConfigDict(
        env_prefix="CLINSTREAM_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    var_dir: Path = Field(default=Path("var"), description="Local state: Milvus Lite data, broker log.")
    state_on_encrypted_volume: bool = Field(
        default=False,
        description="Declares the state folder encrypted at rest where the kernel cannot show it (a "
        "network or overlay file system, a cloud disk encrypted below the machine); start-up says "
        "which (`clinstream.at_rest`).",
    )
    log_level: LogLevel = Field(default="INFO", description="Log level of clinstream's loggers.")
    kafka: KafkaSettings = KafkaSettings()
    milvus: MilvusSettings = MilvusSettings()
    mllp: MllpSettings = MllpSettings()
    http: HttpSettings = HttpSettings()
    dashboard: DashboardSettings = DashboardSettings()
    models: ModelsSettings = ModelsSettings()
    normalizer: NormalizerSettings = NormalizerSettings()
    indexer: IndexerSettings = IndexerSettings()
    cds: CdsSettings = CdsSettings()
    notes: NotesSettings = NotesSettings()
    assist: AssistSettings = AssistSettings()
    outbound: OutboundSettings = OutboundSettings()
    exports: ExportsSettings = ExportsSettings()
    agents: AgentsSettings = AgentsSettings()

    @property
    def embedded(self) -> bool:
        """True when clinstream starts its own broker (no external Kafka configured)."""
        return not self.kafka.bootstrap

    @property
    def milvus_lite_path(self) -> Path:
        """The Milvus Lite database file used when no Milvus URI is configured."""
        return self.var_dir / "milvus" / "clinstream.db"

    @property
    def cds_state_path(self) -> Path:
        """The SQLite file of decision support's per-patient state."""
        return self.cds.state_path or self.var_dir / "cds" / "state.sqlite"

    @property
    def notes_store_path(self) -> Path:
        """The SQLite file of the notes stage's charts and drafts."""
        return self.notes.store_path or self.var_dir / "notes" / "notes.sqlite"

    @property
    def assist_store_path(self) -> Path:
        """The SQLite file of the assistance stage's charts."""
        return self.assist.store_path or self.var_dir / "assist" / "charts.sqlite"


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting, for the README and `clinstream config`."""
    rows: list[tuple[str, str, str]] = []
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            for sub, subfield in annotation.model_fields.items():
                rows.append(
                    (
                        f"CLINSTREAM_{name.upper()}__{sub.upper()}",
                        _default(subfield.get_default(call_default_factory=True)),
                        subfield.description or "",
                    )
                )
        else:
            rows.append((f"CLINSTREAM_{name.upper()}", _default(field.default), field.description or ""))
    return rows


def _default(value: object) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)
