"""The body of `POST /ingest`: JSON, a transaction/collection/batch Bundle, every resource valid
R4B, before any of it is used. Problems are 400s naming where they are, never what the text says
(a transcript's words must not come back in an error or reach a log)."""

from __future__ import annotations

from typing import Any

import ijson
from fhir.resources.R4B.bundle import Bundle
from ijson.common import ObjectBuilder

from fhir_adapter.api.outcome import ApiError
from mapping.errors import ResourceError
from mapping.fhir.references import is_fhir_id, parse_reference
from mapping.fhir.validate import parse, parse_any

INGEST_TYPES = ("transaction", "collection", "batch")
# Problems listed in one answer; the rest are counted.
MAX_LISTED = 5
# Levels of objects and arrays an ingest body may nest. A Bundle's resources sit 4 deep and
# R4B resources nest about 10 more (a QuestionnaireResponse's item groups 2 a group); ijson
# keeps a prefix per level, so a deeper body costs memory with the square of its depth (a
# 200 KB one took 18 GB) while still far under the body limit.
MAX_DEPTH = 64


def _null_at(value: Any, path: str = "") -> str | None:
    """Where `value` holds a JSON null as an element's value (FHIR JSON has none; the R4B
    models let some through), or None. Iterative: a hostile body may nest deeply."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            for key, item in node.items():
                here = f"{where}.{key}" if where else str(key)
                if item is None:
                    return here
                stack.append((item, here))
        elif isinstance(node, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(node))
    return None


def _bad_reference(value: Any, path: str = "") -> str | None:
    """Where `value` holds a literal reference whose id is outside FHIR's grammar (over 64
    characters, say), or None; contained (#x) and urn: references are not literal ids."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str) and not ref.startswith(("#", "urn:")):
                parsed = parse_reference(ref)
                if parsed is None or not is_fhir_id(parsed.id):
                    return f"{where}.reference" if where else "reference"
            stack.extend((item, f"{where}.{key}" if where else str(key))
                         for key, item in node.items())  # fmt: skip
        elif isinstance(node, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(node))
    return None


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid", message)


def _check_depth(raw: bytes) -> None:
    """ApiError 400 once `raw` nests past MAX_DEPTH; `basic_parse` keeps no prefixes, so this
    pass is cheap whatever the depth. Malformed JSON raises ijson's errors, as `_load` does."""
    depth = 0
    for event, _ in ijson.basic_parse(raw, use_float=True):
        if event in ("start_map", "start_array"):
            depth += 1
            if depth > MAX_DEPTH:
                raise _invalid(f"the body is nested too deeply (over {MAX_DEPTH} levels of "
                               "objects and arrays); send FHIR resources, which nest far "
                               "less")  # fmt: skip
        elif event in ("end_map", "end_array"):
            depth -= 1


def _load(raw: bytes) -> tuple[Any, list[Any]]:
    """(the Bundle without its entries, the entries), parsed entry by entry.

    A 10 MB Bundle parsed in one `json.loads` would hold the interpreter lock for over 100 ms,
    stalling the event loop's health checks; parsed incrementally, no single step holds it for
    more than a fraction of a millisecond.
    """
    _check_depth(raw)  # before ijson.items/parse, whose prefixes grow with the depth squared
    entries = list(ijson.items(raw, "entry.item", use_float=True))
    shell = ObjectBuilder()
    for prefix, event, value in ijson.parse(raw, use_float=True):
        if prefix.startswith("entry.item"):
            continue  # parsed above
        shell.event(event, value)
    return shell.value, entries


def ingest_resources(raw: bytes) -> list[dict[str, Any]]:
    """The resources of an ingest Bundle, validated; ApiError 400 otherwise. CPU-bound: run it
    off the event loop."""
    try:
        bundle, entries = _load(raw)
    except (ijson.JSONError, ValueError, RecursionError) as exc:
        raise _invalid("the body is not JSON (send a FHIR Bundle, application/fhir+json)") from exc
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise _invalid("POST /ingest takes a FHIR Bundle (resourceType 'Bundle')")
    if bundle.get("type") not in INGEST_TYPES:
        raise _invalid(f"POST /ingest takes a Bundle of type {', '.join(INGEST_TYPES)}")
    if "entry" not in bundle:
        entries = []
    elif not isinstance(bundle["entry"], list) or not all(isinstance(e, dict) for e in entries):
        raise _invalid("Bundle.entry must be a list of entries")
    # The Bundle's own elements first, its resources one by one after (each named by index).
    shell = {**bundle, "entry": [{k: v for k, v in e.items() if k != "resource"} for e in entries]}
    try:
        parse(shell, Bundle)
    except ResourceError as exc:
        raise _invalid(str(exc)) from exc
    problems: list[str] = []
    found: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        resource = entry.get("resource")
        if resource is None:
            continue
        if not isinstance(resource, dict):
            problems.append(f"entry[{i}].resource is not a resource")
            continue
        null = _null_at(resource)
        if null is not None:
            problems.append(f"entry[{i}]: {null} is null (FHIR JSON leaves an element out)")
            continue
        try:
            parse_any(resource)
        except ResourceError as exc:
            problems.append(f"entry[{i}]: {str(exc)[:300]}")
            continue
        bad = _bad_reference(resource)
        if bad is not None:
            problems.append(f"entry[{i}]: {bad} is not Type/id with a FHIR id (1-64 letters, "
                            "digits, '-' or '.')")  # fmt: skip
            continue
        found.append(resource)
    if problems:
        listed = "; ".join(problems[:MAX_LISTED])
        more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        raise _invalid(f"{len(problems)} invalid resource(s) in the Bundle: {listed}{more}")
    return found
