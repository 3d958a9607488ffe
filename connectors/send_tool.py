"""`clinstream send`: send files or folders of HL7 v2 messages over MLLP and report the ACKs.

The tool an interface analyst uses to test a feed. Files may hold one message, several,
or an FHS/BHS batch; each message is sent on its own, in file order, over one connection
(reopened if the receiver hangs up). Messages whose MSH-15 asks for no accept ACK on
success (NE, ER) are given a short wait (``quiet_wait_s``) instead of the full timeout,
and the connection is reopened after them so a late ACK cannot be taken for the next one.
"""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from connectors.mllp_client import MllpClient
from kernel.errors import Hl7Error
from kernel.hl7v2.parser import decode_payload, parse_message, split_batch


@dataclass(frozen=True, slots=True)
class Sent:
    """One message sent and what came back."""

    path: Path
    index: int  # position of the message in its file
    code: str  # MSA-1; "-" (no ACK, as MSH-15 asked); "none" (no answer); "error" (could not send)
    detail: str = ""


@dataclass
class SendReport:
    """Everything `send_files` did."""

    sent: list[Sent] = field(default_factory=list)

    @property
    def codes(self) -> Counter[str]:
        """How many of each ACK code."""
        return Counter(s.code for s in self.sent)

    @property
    def ok(self) -> bool:
        """True when every message was accepted (or, as MSH-15 asked, not acknowledged)."""
        return all(s.code in ("AA", "CA", "-") for s in self.sent)


def iter_files(paths: list[Path]) -> Iterator[Path]:
    """Files named, and the files under folders named (sorted, hidden ones skipped)."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")


def messages_of(path: Path) -> list[bytes]:
    """The messages of one file, CR-terminated, as they will be framed."""
    raw = path.read_bytes()
    batch = split_batch(decode_payload(raw))
    if not batch.enveloped and len(batch.messages) <= 1:
        return [raw] if raw.strip() else []
    return [m.encode("utf-8") for m in batch.messages]


def _quiet(payload: bytes) -> bool:
    try:
        return parse_message(decode_payload(payload)).msh.value(15).upper() in ("NE", "ER")
    except Hl7Error:
        return False


def _err_text(ack: bytes) -> str:
    try:
        msg = parse_message(decode_payload(ack))
    except Hl7Error:
        return ""
    err = msg.first("ERR")
    if err is not None and err.value(8):
        return err.value(8)
    msa = msg.first("MSA")
    return msa.value(3) if msa is not None else ""


async def send_files(
    paths: list[Path],
    host: str,
    port: int,
    *,
    timeout_s: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
    quiet_wait_s: float = 0.5,
    progress: Callable[[int, int, Counter[str]], None] | None = None,
) -> SendReport:
    """Send every message of every file; returns what each got back."""
    work = [(path, i, payload) for path in iter_files(paths) for i, payload in enumerate(messages_of(path))]
    report = SendReport()
    client: MllpClient | None = None
    try:
        for done, (path, index, payload) in enumerate(work, start=1):
            if client is None:
                client = MllpClient(host, port, timeout_s=timeout_s, ssl=ssl_context)
                await client.__aenter__()
            quiet = _quiet(payload)
            try:
                result = await client.send(payload, timeout_s=quiet_wait_s if quiet else None)
                if result.code is None:  # the receiver had hung up (after a framing error, say): once more
                    await client.__aexit__(None, None, None)
                    client = MllpClient(host, port, timeout_s=timeout_s, ssl=ssl_context)
                    await client.__aenter__()
                    result = await client.send(payload, timeout_s=quiet_wait_s if quiet else None)
                code = result.code or "none"
                detail = _err_text(result.raw) if code not in ("AA", "CA", "none") else ""
            except TimeoutError:
                code, detail = (
                    ("-", "MSH-15 asked for no ACK on success") if quiet else ("none", "no ACK in time")
                )
            except OSError as exc:
                code, detail = "error", type(exc).__name__
            if code in ("none", "error", "-"):
                await client.__aexit__(None, None, None)
                client = None
            report.sent.append(Sent(path, index, code, detail))
            if progress is not None:
                progress(done, len(work), report.codes)
    finally:
        if client is not None:
            await client.__aexit__(None, None, None)
    return report
