"""Transcripts given by url: fetched and carried inline, so `mapping.transcripts` reads them.

    inline_attachments(doc, fetch)   a copy of a DocumentReference whose url-only transcript
                                     attachments carry their data

`fetch` is whoever may read the url: the pipeline's EHR client (system token) or the clinician
app's reader (the clinician's token); both fetch from their own server's origin only.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

from fhir_adapter.ehr.client import Attachment
from mapping.transcripts import attachment_urls

__all__ = ["inline_attachments"]


async def inline_attachments(
    doc: dict[str, Any], fetch: Callable[[str], Awaitable[Attachment]]
) -> dict[str, Any]:
    """A copy of `doc` whose transcript attachments given by url carry their data inline."""
    links = {link.url for link in attachment_urls(doc)}
    if not links:
        return doc
    content = []
    for item in doc.get("content") or []:
        attachment = dict(item.get("attachment") or {})
        if attachment.get("url") in links and not attachment.get("data"):
            fetched = await fetch(str(attachment["url"]))
            attachment["data"] = base64.b64encode(fetched.content).decode("ascii")
            attachment.setdefault("contentType", fetched.content_type)
        content.append({**item, "attachment": attachment})
    return {**doc, "content": content}
