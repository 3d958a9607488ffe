"""The whole HL7 corpus through `clinstream send` into the embedded broker: time and ACK mix.

Starts the embedded broker and the MLLP listener (default settings, ingress sink as
deployed) in this process, sends every file under the corpus folder with the same code as
`clinstream send`, and prints the elapsed time and the count of each answer.
"-" is a message stored without an ACK because its MSH-15 asked for none (NE/ER).

Usage: python bench/corpus_send.py [--corpora ../shared/corpora]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clinstream.runtime import EmbeddedBroker, ensure_topics  # noqa: E402
from connectors.kafka_sink import make_sink  # noqa: E402
from connectors.mllp_server import MllpServer  # noqa: E402
from connectors.send_tool import send_files  # noqa: E402
from kernel.events import Topics  # noqa: E402
from kernel.settings import KafkaSettings, MllpSettings, producer_config  # noqa: E402


async def main(corpora: Path) -> None:
    async with EmbeddedBroker() as broker:
        topics = Topics()
        await ensure_topics(broker.bootstrap, topics.all(), partitions=6, replication_factor=1)
        kafka = KafkaSettings()
        sink = make_sink(
            kafka.ingest_client, producer_config(kafka, broker.bootstrap, tansu=True), confirm_timeout_s=11
        )
        await sink.start()
        server = MllpServer(sink, topics, MllpSettings(port=0))
        await server.start()
        try:
            started = time.perf_counter()
            report = await send_files(
                [corpora / "hl7v2"], "127.0.0.1", server.port, timeout_s=10, quiet_wait_s=0.1
            )
            elapsed = time.perf_counter() - started
        finally:
            await server.stop()
            await sink.stop()
    files = len({s.path for s in report.sent})
    mix = ", ".join(f"{k} {v}" for k, v in report.codes.most_common())
    print(f"{len(report.sent)} messages from {files} files in {elapsed:.1f} s: {mix}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=REPO.parent / "shared" / "corpora")
    asyncio.run(main(parser.parse_args().corpora))
