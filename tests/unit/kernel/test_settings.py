import pytest
from pydantic import ValidationError

from clinstream.settings import Settings, settings_table
from kernel.settings import KafkaSettings, producer_config, transactional
from tests.conftest import REPO


def test_defaults(monkeypatch):
    for name in [k for k in __import__("os").environ if k.startswith("CLINSTREAM_")]:
        monkeypatch.delenv(name)
    s = Settings()
    assert s.embedded
    assert (s.mllp.host, s.mllp.port, s.http.port, s.dashboard.port) == ("127.0.0.1", 2575, 8080, 8501)
    assert s.kafka.partitions == 6
    assert s.http.api_token is None


def test_nested_environment_variables(monkeypatch):
    monkeypatch.setenv("CLINSTREAM_KAFKA__BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("CLINSTREAM_MLLP__PORT", "12575")
    monkeypatch.setenv("CLINSTREAM_HTTP__API_TOKEN", "s3cr3t-xyz")
    s = Settings()
    assert not s.embedded
    assert s.mllp.port == 12575
    assert s.http.api_token.get_secret_value() == "s3cr3t-xyz"
    assert "s3cr3t-xyz" not in repr(s)


def test_settings_are_frozen_and_strict(monkeypatch):
    s = Settings()
    with pytest.raises(ValidationError):
        s.log_level = "DEBUG"
    monkeypatch.setenv("CLINSTREAM_MLLP__PORT", "not-a-port")
    with pytest.raises(ValidationError):
        Settings()


def test_producers_always_wait_for_all_replicas():
    embedded = producer_config(KafkaSettings(), "127.0.0.1:1", tansu=True)
    external = producer_config(KafkaSettings(), "kafka:9092", tansu=False)
    assert embedded["acks"] == external["acks"] == "all"
    assert (embedded["enable_idempotence"], external["enable_idempotence"]) == (False, True)
    forced = producer_config(KafkaSettings(enable_idempotence=False), "kafka:9092", tansu=False)
    assert forced["enable_idempotence"] is False


def test_stateful_stages_are_transactional_wherever_producers_are_idempotent():
    assert transactional(KafkaSettings(), tansu=False) is True
    assert transactional(KafkaSettings(), tansu=True) is False
    assert transactional(KafkaSettings(enable_idempotence=False), tansu=False) is False
    assert transactional(KafkaSettings(transactions=False), tansu=False) is False


def test_readme_documents_every_setting():
    readme = (REPO / "README.md").read_text()
    missing = [name for name, _, _ in settings_table() if f"`{name}`" not in readme]
    assert missing == []


async def test_external_kafka_requires_an_api_token():
    from clinstream.errors import ConfigurationError
    from clinstream.stack import running_stack

    settings = Settings(kafka={"bootstrap": "127.0.0.1:1"}, http={"api_token": None})
    with pytest.raises(ConfigurationError, match="API_TOKEN"):
        async with running_stack(settings):
            pass
