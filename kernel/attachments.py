"""The text of FHIR attachments: what a note or report says, for every stage that reads notes.

The indexer renders notes for search; decision support looks for safety signals in them. Both
read the same text: base64 ``data`` of a text content type (HTML with its tags removed), and
nothing from images, PDFs or links.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

_TEXT_TYPES = ("text/plain", "text/markdown", "text/x-markdown", "text/rtf", "text/html")


def text_attachment(text: str) -> dict[str, Any]:
    """A FHIR Attachment holding ``text`` (UTF-8, base64 ``data``): what `attachment_text` reads."""
    return {"contentType": "text/plain; charset=utf-8", "data": base64.b64encode(text.encode()).decode()}


def attachment_text(attachment: dict[str, Any]) -> str:
    """The text of a text attachment (base64 ``data``), else ``""`` (images, PDFs, links)."""
    content_type = str(attachment.get("contentType", "text/plain")).split(";")[0].strip().lower()
    if content_type not in _TEXT_TYPES or not attachment.get("data"):
        return ""
    try:
        raw = base64.b64decode(str(attachment["data"]), validate=True)
    except (binascii.Error, ValueError):
        return ""
    text = raw.decode("utf-8", errors="replace")
    if content_type == "text/html":
        text = re.sub(r"<[^>]+>", " ", text)
    return text
