"""SMART on FHIR scopes, parsed once for the whole code base: what we ask EHRs for
(`ehr.capabilities`), what the API's bearer tokens grant (`api.security`), and what an EHR
granted the clinician app (`smart.routes`).

    system/Task.rs?patient=Patient/1   v2: context, resource type, permission letters (c r u d s)
                                       and a search restriction
    system/Observation.read            v1: read = rs, write = cud, * = cruds
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl

_SCOPE = re.compile(r"^(system|user|patient)/([A-Za-z]+|\*)\.([a-z]+|\*)(?:\?(.*))?$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
LETTERS = "cruds"


@dataclass(frozen=True)
class Scope:
    context: str  # system | user | patient
    resource_type: str  # a resource type or "*"
    permissions: frozenset[str]  # of "cruds"
    # v2 search restriction (`?patient=...`): a limit on what the scope reaches, never ignored
    # silently by whoever grants access (enforcement: the API's read and search).
    restriction: tuple[tuple[str, str], ...] = ()

    def covers(self, resource_type: str, letters: Iterable[str]) -> bool:
        """Whether it grants any of `letters` on `resource_type`."""
        return self.resource_type in ("*", resource_type) and bool(
            self.permissions & set(letters)
        )


def parse_scope(text: str) -> Scope | None:
    """The scope, or None for what is not a SMART resource scope (openid, launch, ...)."""
    match = _SCOPE.match(text.strip())
    if not match:
        return None
    context, resource_type, permission, query = match.groups()
    letters = _V1.get(permission, permission)
    if not letters or not set(letters) <= set(LETTERS):
        return None
    restriction = tuple(parse_qsl(query or "", keep_blank_values=True))
    return Scope(context, resource_type, frozenset(letters), restriction)


def parse_scopes(texts: Iterable[str]) -> list[Scope]:
    return [scope for text in texts if (scope := parse_scope(text)) is not None]


def unreadable(
    granted: Iterable[Scope], resource_types: Iterable[str], contexts: Collection[str]
) -> list[str]:
    """Those of `resource_types` that no scope of `contexts` grants read ("r") of. A scope
    with a search restriction does not count: it reaches only part of what it names, and the
    caller shows all of it."""
    usable = [s for s in granted if s.context in contexts and not s.restriction]
    return [t for t in resource_types if not any(s.covers(t, "r") for s in usable)]
