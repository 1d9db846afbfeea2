"""One reference parser for the code base: "Type/id", absolute URLs, versions, Reference
objects, and lists of them (the first), as FHIR resources carry them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# FHIR's grammar for a logical id (R4 "id" datatype) and a resource type name.
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")


def is_fhir_id(value: str) -> bool:
    return FHIR_ID.fullmatch(value) is not None


@dataclass(frozen=True)
class Reference:
    resource_type: str
    id: str
    base: str | None = None  # the server's base URL of an absolute reference

    @property
    def relative(self) -> str:
        return f"{self.resource_type}/{self.id}"


def parse_reference(value: Any) -> Reference | None:
    """The reference in `value` ("Type/id", "https://server/fhir/Type/id/_history/2", a
    Reference object or a list of them), or None when it holds none (contained "#x" and
    identifier-only references included)."""
    if isinstance(value, list):
        return parse_reference(value[0]) if value else None
    if isinstance(value, dict):
        value = value.get("reference")
    if not isinstance(value, str) or value.startswith("#"):
        return None
    parts = value.split("/_history/")[0].strip().rstrip("/").split("/")
    if len(parts) < 2 or not parts[-2] or not parts[-1] or not parts[-2][:1].isupper():
        return None
    base = "/".join(parts[:-2]) or None
    return Reference(parts[-2], parts[-1], base)


def reference_id(value: Any, resource_type: str | None = None) -> str | None:
    """The id of the reference in `value` (of `resource_type`, when given)."""
    ref = parse_reference(value)
    if ref is None or (resource_type is not None and ref.resource_type != resource_type):
        return None
    return ref.id
