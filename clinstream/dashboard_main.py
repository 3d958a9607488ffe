"""Entry script of the dashboard process: ``streamlit run clinstream/dashboard_main.py``.

`clinstream up` starts it; in production run it as its own process with the same
``CLINSTREAM_*`` variables as the stages (API URL and token, Kafka bootstrap, logins).
Streamlit runs this file on every interaction; the backend and the metrics sampler are
built once per process.
"""

from __future__ import annotations

import argparse
import json
import sys

import streamlit as st

from clinstream.http import own_client_verify
from clinstream.settings import Settings
from dashboard.app import Config, main
from dashboard.auth import parse_logins
from dashboard.live_source import Endpoints, LiveBackend, Sampler
from kernel.events import TOPICS, Topics
from kernel.settings import kafka_security, librdkafka_security, producer_config


@st.cache_resource
def _runtime(topics_json: str) -> tuple[LiveBackend, Sampler, Config]:
    settings = Settings()
    dash = settings.dashboard
    token = settings.http.api_token.get_secret_value() if settings.http.api_token else ""
    bootstrap = settings.kafka.bootstrap or ""
    topics = Topics(**json.loads(topics_json)) if topics_json else TOPICS
    api_url = dash.api_url or f"{settings.http.scheme}://{settings.http.host}:{settings.http.port}"
    backend = LiveBackend(
        Endpoints(
            api_url=api_url,
            api_token=token,
            bootstrap=bootstrap,
            topics=topics,
            metrics_urls=tuple(dash.metrics_urls),
            producer=producer_config(settings.kafka, bootstrap, tansu=False),
            security=kafka_security(settings.kafka),
            librdkafka=librdkafka_security(settings.kafka),
            verify=own_client_verify(settings.http),
        )
    )
    keep = int(dash.history_min * 60 / dash.sample_s) + 1
    sampler = Sampler(backend, every_s=dash.sample_s, keep=keep).start()
    config = Config(
        logins=parse_logins(u.get_secret_value() for u in dash.users),
        topics=topics,
        user_header=dash.trusted_user_header,
        role_header=dash.trusted_role_header,
        refresh_s=dash.sample_s,
    )
    return backend, sampler, config


def _topics_arg(argv: list[str]) -> str:
    parser = argparse.ArgumentParser(prog="clinstream-dashboard")
    parser.add_argument("--topics", default="", help="topic names as JSON (tests' prefixed topics)")
    return str(parser.parse_known_args(argv)[0].topics)


backend, sampler, config = _runtime(_topics_arg(sys.argv[1:]))
main(backend, sampler, config)
