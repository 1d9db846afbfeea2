"""The CDS Hooks card launches the review screen, in a real browser (Debian's Chromium, driven
by Playwright), against the demo's app over a store the real pipeline filled (the fixtures of
test_launch_browser.py, with `[cds]` enabled for one EHR whose JWK Set is served on loopback).

As an EHR does it: a signed `patient-view` hook request (the EHR's JWT, RS384, checked against
its JWK Set over HTTP) for a sample patient with drafts; the card's `smart` link, opened with
the `iss` and `launch` the EHR appends (SMART App Launch from a CDS Hooks card; the dev EHR's
`launch` encodes the context, here the patient alone, as a chart's patient-view has no
encounter); the dev EHR's sign-in and consent; the review screen of that same patient, showing
exactly the drafts the card counted.

`encounter-start`: the card's link carries `appContext` {"encounter": "Encounter/<id>"}, which
CDS Hooks 2.0 has the EHR pass to the app in the access token response. The dev EHR's launch
here names the patient only and hands the card's `appContext` back in its token response, so
the screen shows that (earlier) session only if the app honours `appContext`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from fhir_adapter.cds.hooks import LAUNCH_PATH
from fhir_adapter.settings import CdsClient, CdsSettings, Settings
from fhir_adapter.smart.devserver import encode_launch
from tests.fhir_adapter.cds.support import (
    ENCOUNTER_START,
    ISS_A,
    PATIENT_VIEW,
    hook_request,
    jwks_server,
    signed,
)
from tests.fhir_adapter.smart.test_launch_browser import (
    Served,
    Watched,
    browser,
    launch_and_consent,
    serve_demo,
    tasks,
    watched,
)

__all__ = ["browser", "watched"]  # fixtures

pytestmark = pytest.mark.integration

PATIENT_ID = "pat-1"
PATIENT = f"Patient/{PATIENT_ID}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with jwks_server() as jwks:

        def configure(settings: Settings, base: str) -> Settings:
            cds = CdsSettings(
                enabled=True,
                clients=[CdsClient(issuer=ISS_A, jwks_url=f"{jwks.url}/ehr-a/jwks.json")],
            )
            return settings.model_copy(update={"cds": cds})

        with serve_demo(tmp_path_factory.mktemp("cds-launch"), configure) as found:
            yield found


def hook(served: Served, service: str, encounter: str | None = None) -> dict[str, Any]:
    """The one card the service answers for pat-1, called as the EHR calls it."""
    body = hook_request(
        "encounter-start" if service == ENCOUNTER_START else "patient-view",
        PATIENT_ID,
        encounter,
    )
    body["fhirServer"] = f"{served.url}/dev-ehr/fhir"
    url = f"{served.url}/cds-services/{service}"
    answer = httpx.post(url, json=body, headers=signed(aud=url), timeout=30)
    assert answer.status_code == 200, answer.text
    [card] = answer.json()["cards"]
    return dict(card)


def opened_by_ehr(served: Served, link: dict[str, Any], encounter: str | None = None) -> str:
    """The link's URL with the `iss` and `launch` the EHR appends to a `smart` link."""
    assert link["type"] == "smart"
    assert link["url"] == f"{served.url}{LAUNCH_PATH}"
    launch = encode_launch(PATIENT_ID, encounter, link.get("appContext"))
    joiner = "&" if "?" in link["url"] else "?"
    return link["url"] + joiner + urlencode({"iss": f"{served.url}/dev-ehr/fhir",
                                             "launch": launch})  # fmt: skip


def shown_tasks(watched: Watched) -> tuple[list[str], list[str]]:
    """The Task ids on the review screen: this session's drafts, earlier homework."""
    page = watched.page
    current = page.locator("#drafts > li.draft").evaluate_all("l => l.map(e => e.dataset.task)")
    earlier = page.locator("#earlier tbody tr").evaluate_all("l => l.map(e => e.dataset.task)")
    return current, earlier


def test_patient_view_card_launches_the_review_of_its_drafts(
    served: Served, watched: Watched, tmp_path: Any
) -> None:
    card = hook(served, PATIENT_VIEW)
    drafts = sorted(t["id"] for t in tasks(served.store, PATIENT) if t["status"] == "draft")
    assert drafts, "the pipeline drafted no homework for pat-1"
    counted = int(re.match(r"(\d+) homework drafts? ", card["summary"]).group(1))  # type: ignore[union-attr]
    assert counted == len(drafts), card["summary"]
    [link] = card["links"]
    assert "appContext" not in link  # patient-view: no encounter in context

    page = watched.page
    launch_and_consent(page, opened_by_ehr(served, link))
    assert page.url == f"{served.url}/smart/review"
    assert page.locator("#patient").inner_text() == PATIENT
    current, earlier = shown_tasks(watched)
    # Every draft the card counted is on the screen: this session's and the earlier ones.
    assert sorted(set(current) | set(earlier)) == drafts
    assert len(current) + len(earlier) == counted
    # No encounter in context: the latest session's drafts are the current ones.
    latest = max(tasks(served.store, PATIENT), key=lambda t: (str(t["authoredOn"]), t["id"]))
    assert page.locator("#encounter").inner_text() == latest["encounter"]["reference"]
    page.screenshot(path=tmp_path / "cds-launch.png", full_page=True)
    assert watched.problems == [], watched.problems


def test_encounter_start_card_app_context_opens_that_session(
    served: Served, watched: Watched
) -> None:
    encounter = "enc-1-2"  # an earlier session than the latest, which a plain launch shows
    card = hook(served, ENCOUNTER_START, encounter)
    [link] = card["links"]
    assert link["appContext"] == '{"encounter":"Encounter/enc-1-2"}'

    page = watched.page
    launch_and_consent(page, opened_by_ehr(served, link))
    assert page.locator("#patient").inner_text() == PATIENT
    assert page.locator("#encounter").inner_text() == f"Encounter/{encounter}"
    current, _ = shown_tasks(watched)
    session = sorted(t["id"] for t in tasks(served.store, PATIENT)
                     if t["encounter"]["reference"] == f"Encounter/{encounter}")  # fmt: skip
    assert session and sorted(current) == session
    assert watched.problems == [], watched.problems
