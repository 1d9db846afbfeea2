"""Our published CodeSystems and ValueSets, kept as FHIR JSON package data, and a tiny loader.

The JSON files are the source of truth for codes and displays: builders look displays up here
rather than repeating them, and a deployment can load the same files into its terminology server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import resources
from typing import Any

from mapping.errors import ResourceError

__all__ = ["all_resources", "code_system", "display", "resource_names"]


def resource_names() -> tuple[str, ...]:
    """File stems of the published resources, e.g. "CodeSystem-homework-category"."""
    files = resources.files(__name__)
    return tuple(
        sorted(
            f.name.removesuffix(".json")
            for f in files.iterdir()
            if f.name.endswith(".json") and f.name.startswith(("CodeSystem-", "ValueSet-"))
        )
    )


@cache
def _load(name: str) -> Mapping[str, Any]:
    text = resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def all_resources() -> Iterator[dict[str, Any]]:
    """Each CodeSystem and ValueSet as a fresh dict (callers may change it)."""
    for name in resource_names():
        yield json.loads(json.dumps(_load(name)))


@cache
def _by_url() -> Mapping[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for name in resource_names():
        data = _load(name)
        if data["resourceType"] == "CodeSystem":
            out[data["url"]] = data
    return out


def code_system(url: str) -> Mapping[str, Any]:
    """The CodeSystem with canonical `url` (read-only view; do not modify)."""
    try:
        return _by_url()[url]
    except KeyError:
        raise ResourceError(f"no published CodeSystem {url}; see mapping/terminology/") from None


def _walk(concepts: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for concept in concepts:
        yield concept
        yield from _walk(concept.get("concept", []))


@cache
def _displays(url: str) -> Mapping[str, str]:
    return {c["code"]: c["display"] for c in _walk(list(code_system(url).get("concept", [])))}


def display(url: str, code: str) -> str:
    """The display of `code` in our CodeSystem `url`; ResourceError for an unknown code."""
    try:
        return _displays(url)[code]
    except KeyError:
        raise ResourceError(f"code {code!r} is not in CodeSystem {url}") from None
