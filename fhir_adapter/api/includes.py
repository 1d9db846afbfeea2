"""`_include` and `_revinclude` where they are cheap: Task <-> CarePlan <-> Provenance.

Supported (anything else is a 400 naming these):
- `Task?_include=Task:based-on` — the session's CarePlan (by id);
- `CarePlan?_include=CarePlan:activity-reference` — the plan's Tasks (by id);
- `Provenance?_include=Provenance:target` — what the Provenance is about (by id);
- `CarePlan?_revinclude=Task:based-on` — the Tasks of a plan (looked up by its encounter).

Not offered: `_revinclude=Provenance:target`. Our Provenances target CarePlans and Tasks, not
a Patient, so no indexed column leads from a Task to them; it would need a table of targets.

Included resources obey the token as matches do: the type must be readable, and v2
restrictions apply. At most MAX_INCLUDED resources are added to a page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from fhir_adapter.api.outcome import ApiError
from fhir_adapter.store import resources
from fhir_adapter.store.resources import Query
from mapping.fhir.references import parse_reference

MAX_INCLUDED = 1000  # one page's includes: bounded like _count, so a page stays cheap
INCLUDE = {
    ("Task", "Task:based-on"): "CarePlan",
    ("CarePlan", "CarePlan:activity-reference"): "Task",
    ("Provenance", "Provenance:target"): "*",
}
REVINCLUDE = {("CarePlan", "Task:based-on"): "Task"}
# (resource type, action) -> the token's restrictions as queries; raises 403 when not allowed.
Limits = Callable[[str], list[Query]]


@dataclass(frozen=True)
class Include:
    parameter: str  # _include | _revinclude
    value: str  # e.g. Task:based-on


def parse_includes(resource_type: str, params: Iterable[tuple[str, str]]) -> list[Include]:
    found = []
    for name, value in params:
        if name not in ("_include", "_revinclude"):
            continue
        table = INCLUDE if name == "_include" else REVINCLUDE
        if (resource_type, value) not in table:
            supported = sorted(v for (t, v) in table if t == resource_type)
            raise ApiError(
                400, "not-supported",
                f"{name}={value[:64]} is not supported on {resource_type}; supported: "
                + (", ".join(supported) or "none"),
            )  # fmt: skip
        if (include := Include(name, value)) not in found:  # a repeat asks once, not once more
            found.append(include)
    return found


def _refs(values: Any) -> list[tuple[str, str]]:
    out = []
    for value in values or ():
        ref = parse_reference(value)
        if ref is not None and ref.id:
            out.append((ref.resource_type, ref.id))
    return out


def _by_ids(
    session: Session, limits: Limits, wanted: Sequence[tuple[str, str]]
) -> list[dict[str, Any]]:
    by_type: dict[str, list[str]] = {}
    for rtype, rid in wanted:
        by_type.setdefault(rtype, []).append(rid)
    out: list[dict[str, Any]] = []
    for rtype, ids in sorted(by_type.items()):
        query = Query(rtype, ids=sorted(set(ids)), count=MAX_INCLUDED, within=limits(rtype))
        found, _ = resources.search(session, query)
        out.extend(found)
    return out


def included(
    session: Session, matches: Sequence[dict[str, Any]], includes: Sequence[Include], limits: Limits
) -> list[dict[str, Any]]:
    """The resources `includes` add to a page of `matches` (none of the matches repeated)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for inc in includes:
        if inc.value == "Task:based-on" and inc.parameter == "_include":
            found = _by_ids(session, limits, [r for m in matches for r in _refs(m.get("basedOn"))
                                              if r[0] == "CarePlan"])  # fmt: skip
        elif inc.value == "CarePlan:activity-reference":
            refs = [a.get("reference") for m in matches for a in m.get("activity") or ()]
            found = _by_ids(session, limits, [r for r in _refs(refs) if r[0] == "Task"])
        elif inc.value == "Provenance:target":
            found = _by_ids(session, limits, [r for m in matches for r in _refs(m.get("target"))])
        else:  # CarePlan?_revinclude=Task:based-on
            plans = {f"CarePlan/{m['id']}" for m in matches}
            found = []
            for encounter in sorted({e for m in matches if (e := _encounter(m))}):
                query = Query(
                    "Task", encounter=encounter, count=MAX_INCLUDED, within=limits("Task")
                )
                candidates, _ = resources.search(session, query)
                found.extend(c for c in candidates if _based_on(c) & plans)
        for body in found:
            out.setdefault((body["resourceType"], body["id"]), body)
            if len(out) >= MAX_INCLUDED:
                break
    matched = {(m["resourceType"], m["id"]) for m in matches}
    return [b for k, b in out.items() if k not in matched]


def _based_on(body: dict[str, Any]) -> set[str]:
    return {f"{t}/{i}" for t, i in _refs(body.get("basedOn"))}


def _encounter(body: dict[str, Any]) -> str | None:
    ref = parse_reference(body.get("encounter"))
    return f"Encounter/{ref.id}" if ref is not None and ref.resource_type == "Encounter" else None
