"""`clinstream run STAGE`: the splits that cannot work are refused before anything starts."""

import subprocess
import sys

import pytest

from clinstream.errors import ConfigurationError
from clinstream.settings import Settings
from clinstream.stack import STAGES, check_stages

KAFKA = {"bootstrap": "kafka:9092"}
TOKEN = {"api_token": "t" * 24}


def test_every_stage_runs_alone_against_a_shared_kafka():
    settings = Settings(kafka=KAFKA, http=TOKEN, milvus={"uri": "http://milvus:19530"})
    for stage in STAGES:
        check_stages(settings, [stage])


@pytest.mark.parametrize(
    ("settings", "stages", "says"),
    [
        (Settings(http=TOKEN), ["normalizer"], "CLINSTREAM_KAFKA__BOOTSTRAP"),
        (Settings(kafka=KAFKA), ["normalizer"], "CLINSTREAM_HTTP__API_TOKEN"),
        (Settings(kafka=KAFKA, http=TOKEN), ["inference"], "CLINSTREAM_MILVUS__URI"),
        (Settings(kafka=KAFKA, http=TOKEN), ["indexer", "nope"], "unknown stage"),
    ],
)
def test_impossible_splits_are_refused(settings, stages, says):
    with pytest.raises(ConfigurationError, match=says):
        check_stages(settings, stages)


def test_notes_and_assistance_off_let_inference_run_apart_from_a_lite_file():
    check_stages(
        Settings(kafka=KAFKA, http=TOKEN, notes={"enabled": False}, assist={"enabled": False}), ["inference"]
    )
    with pytest.raises(ConfigurationError, match="assistance"):
        check_stages(Settings(kafka=KAFKA, http=TOKEN, notes={"enabled": False}), ["inference"])


def test_the_cli_says_why_and_exits_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "clinstream", "run", "normalizer"],
        env={"PATH": "/usr/bin:/bin", "CLINSTREAM_VAR_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "CLINSTREAM_KAFKA__BOOTSTRAP" in done.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["dashboard"], "CLINSTREAM_DASHBOARD__USERS"),
        (["dashboard", "normalizer"], "the dashboard runs alone"),
    ],
)
def test_the_dashboard_runs_alone_and_only_with_logins(tmp_path, args, says):
    done = subprocess.run(
        [sys.executable, "-m", "clinstream", "run", *args],
        env={"PATH": "/usr/bin:/bin", "CLINSTREAM_VAR_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert says in done.stderr


@pytest.mark.parametrize(
    ("assist", "message"),
    [
        ({"generator": "openai"}, "OPENAI_BASE_URL"),
        ({"disabled_rules": ["dx-obesity", "dx-unicorn"]}, "dx-unicorn"),
    ],
)
def test_assistance_settings_that_cannot_work_stop_start_up(assist, message):
    with pytest.raises(ConfigurationError, match=message):
        check_stages(
            Settings(kafka=KAFKA, http=TOKEN, milvus={"uri": "http://milvus:19530"}, assist=assist),
            ["inference"],
        )
