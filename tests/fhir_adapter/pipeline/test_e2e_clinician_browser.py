"""The whole clinician launch in a real browser, with sekmet-fhir as the EHR's FHIR API: from the
EHR launch URL through sign-in and consent, the review screen, edit/reject/add/approve clicked
in Debian's Chromium (Playwright), to the resources in sekmet and in our store.

The EHR: sekmet-fhir for FHIR (a clinic seeded in it, Alex Moreno's session processed by the
real pipeline with the shipped model, care_plan_store = "ehr"), and for authorization the
development authorization server (fhir_adapter.smart.devserver) issuing tokens for sekmet's
base (the `aud`), its patients and encounters read from sekmet (an export of the clinic), the
clinician being the clinic's practitioner. sekmet publishes no authorization endpoint, so the
connection's `smart_app.configuration_url` points the app's discovery at that server; the
launch's `iss` and `aud` stay sekmet's base.

sekmet checks only the tokens it issued: this one runs with inbound auth ("smart", "none"), so
the evidence read with the clinician's token (the transcript, sekmet's DocumentReference) is
answered without the token being checked. The write-back authenticates as the connection's
backend client (SMART Backend Services, ES384), as in production.

After the decisions, the write-back the routes start (the outbox, flushed in the app's
process) is awaited; then sekmet holds the CarePlan active/plan, the Tasks requested/rejected/
added with their labels, the clinician's Provenance and the chart note updated in place, and
our store agrees.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from fhir_adapter.model_backend import make_backend
from fhir_adapter.service import build_service
from fhir_adapter.settings import Settings, SmartAppClient
from fhir_adapter.smart.devserver import DevClient, DevEhr, dev_ehr_router, encode_launch
from fhir_adapter.smart.routes import launch_link
from fhir_adapter.store import Store, open_store
from fhir_adapter.store.models import OutboxRow
from fhir_adapter.store.outbox import OutboxStatus
from inference_server.triton_server import free_port
from mapping.fhir.codes import AIAST, CLINAST_AIRPT, P_THERAPIST_QUOTE, SID_CAREPLAN, SID_TASK
from mapping.fhir.validate import problems
from tests.fhir_adapter.pipeline.checks import notes_of
from tests.fhir_adapter.pipeline.seed import (
    Clinic,
    clinic_resources,
    ehr_resources,
    seed_clinic,
    write_export,
)
from tests.fhir_adapter.pipeline.support import (
    CONNECTION,
    connection,
    identifier_of,
    run_pass,
    settings_for,
    stored,
)
from tests.fhir_adapter.pipeline.test_e2e_review_per_task import ALEX
from tests.fhir_adapter.sekmet_server import SekmetServer, start_sekmet
from tests.fhir_adapter.smart.test_launch_browser import (
    Watched,
    browser,
    edit_item,
    saved,
    serving,
    watched,
)

__all__ = ["browser", "watched"]  # fixtures

pytestmark = pytest.mark.integration

CLIENT_ID = "homework-fhir-review"
CLINICIAN_NAME = "Dr. Sara Haddad"
EDITED = "Practise the slow breathing for ten minutes every morning, before work"
DUE = "2099-01-15"
REASON = "The diary was the client's own idea; not set as homework"
ADDED = "Write down one calm moment each evening"
WRITE_BACK_S = 90.0


@dataclass
class Launched:
    sekmet: SekmetServer
    clinic: Clinic
    store: Store
    url: str  # the app
    launch: str  # the EHR launch URL
    written_note: dict[str, Any]


def _security(resource: dict[str, Any]) -> set[str]:
    return {str(s.get("code")) for s in (resource.get("meta") or {}).get("security") or ()}


def _process(settings: Settings, store: Store) -> None:
    """One pipeline pass (the shipped model in process) over the clinic's session."""

    async def once() -> None:
        backend = make_backend(settings)
        try:
            done = await run_pass(settings, store, backend)
        finally:
            await backend.close()
        assert (done.encounters_processed, done.writes_failed) == (1, 0), done.errors

    # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, once()).result()


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[Launched]:
    with start_sekmet(tmp_path / "sekmet", auth_types=("smart", "none")) as sekmet:
        clinic = seed_clinic(sekmet, sessions=1, in_progress=False, plans=[ALEX])
        alex = clinic.patients["alex"]
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        secret = secrets.token_urlsafe(32)
        redirect = f"{base}/smart/callback"
        smart_app = SmartAppClient(
            client_id=CLIENT_ID,
            client_secret=secret,  # type: ignore[arg-type]  (pydantic makes it a SecretStr)
            redirect_uri=redirect,
            configuration_url=f"{base}/dev-ehr/fhir/.well-known/smart-configuration",
        )
        conn = connection(sekmet, clinic, client="es384", care_plan_store="ehr",
                          communication=False, smart_app=smart_app)  # fmt: skip
        settings = settings_for(tmp_path, [conn])
        settings = settings.model_copy(
            update={"api": settings.api.model_copy(update={"port": port})}
        )
        store = open_store(settings.database_url)
        try:
            _process(settings, store)
            [note] = notes_of(
                ehr_resources(sekmet, "DocumentReference", {"subject": alex.patient}),
                alex.encounters[0],
            )
            ehr = DevEhr(
                f"{base}/dev-ehr",
                write_export(clinic_resources(sekmet, clinic), tmp_path / "ehr-export"),
                DevClient(CLIENT_ID, secret, redirect),
                fhir_base=sekmet.base_url,
                clinician={"id": alex.practitioner.split("/")[1], "name": CLINICIAN_NAME},
            )
            service = build_service(settings, [dev_ehr_router(ehr)])
            launch = launch_link(
                base,
                sekmet.base_url,
                encode_launch(alex.patient.split("/")[1], alex.encounters[0].split("/")[1]),
            )
            with serving(service.app, port, "the app"):
                yield Launched(sekmet, clinic, store, base, launch, note)
        finally:
            store.close()


def _written_back(store: Store) -> None:
    """Waits until the outbox of the connection has nothing pending; fails on a failed write."""
    deadline = time.monotonic() + WRITE_BACK_S
    while True:
        with store.session() as session:
            statuses = list(
                session.scalars(select(OutboxRow.status).where(OutboxRow.connection == CONNECTION))
            )
        assert OutboxStatus.FAILED not in statuses, statuses
        if statuses and OutboxStatus.PENDING not in statuses:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the write-back did not finish in {WRITE_BACK_S} s: {statuses}")
        time.sleep(0.25)


def test_launch_to_sekmet(launched: Launched, watched: Watched, tmp_path: Path) -> None:
    sekmet, store, page = launched.sekmet, launched.store, watched.page
    alex = launched.clinic.patients["alex"]
    encounter = alex.encounters[0]
    drafted = {str(t["code"]["coding"][0]["code"]): t for t in stored(store, "Task")}
    assert set(drafted) == {"practice", "journal"}
    practice, journal = drafted["practice"]["id"], drafted["journal"]["id"]
    # care_plan_store = "ehr": the drafts are in sekmet too, as drafts.
    before = {t["id"]: t for t in ehr_resources(sekmet, "Task", {"patient": alex.patient})}
    assert {t["status"] for t in before.values()} == {"draft"}

    # The EHR launch: iss = sekmet's base; sign-in and consent at the authorization server.
    page.goto(launched.launch)
    page.wait_for_selector("#dev-ehr")
    assert "/dev-ehr/authorize?" in page.url
    assert page.locator("#clinician").inner_text() == CLINICIAN_NAME
    page.click("#allow")
    page.wait_for_url(re.compile(r".*/smart/review$"))
    assert page.locator("#patient").inner_text() == alex.patient
    assert page.locator("#encounter").inner_text() == encounter
    assert page.locator("#user").inner_text() == f"{sekmet.base_url}/{alex.practitioner}"
    shown = page.locator("#drafts > li.draft").evaluate_all("l => l.map(e => e.dataset.task)")
    assert sorted(shown) == sorted([practice, journal])

    # Linked evidence: the transcript read from sekmet's DocumentReference.
    page.click(f"#drafts li[data-task='{practice}'] a.evidence-link")
    page.wait_for_url(re.compile(rf".*/smart/review/tasks/{practice}#quoted$"))
    assert page.locator("#evidence-problem").count() == 0
    quoted = " ".join(page.locator("#transcript li.turn.quoted .text").inner_text().split())
    quote = next(i["valueString"] for i in drafted["practice"]["input"]
                 if any(c.get("code") == P_THERAPIST_QUOTE
                        for c in i["type"].get("coding", [])))  # fmt: skip
    assert " ".join(quote.split()) in quoted
    page.click("#back")
    page.wait_for_selector("main#review")

    # Edit, reject, add, approve: the real forms.
    edit_item(page, practice, EDITED, DUE)
    page.fill(f"#reason-{journal}", REASON)
    page.locator(f"#reason-{journal}").press("Enter")
    saved(page, "reject", "rejected")
    page.select_option("#add-category", "journal")
    page.fill("#add-description", ADDED)
    page.click("#add-item button[type=submit]")
    saved(page, "add", "added")
    page.click("#approve-plan button[type=submit]")
    saved(page, "approve", "approved")
    page.screenshot(path=tmp_path / "approved-sekmet.png", full_page=True)

    _written_back(store)

    # Our store.
    ours = {t["id"]: t for t in stored(store, "Task", encounter=encounter)}
    [added] = [t["id"] for t in ours.values() if t["description"] == ADDED]
    assert (ours[practice]["status"], ours[practice]["intent"]) == ("requested", "plan")
    assert ours[journal]["status"] == "rejected"
    [our_plan] = stored(store, "CarePlan", encounter=encounter)
    assert (our_plan["status"], our_plan["intent"]) == ("active", "plan")
    clinician = [p for p in stored(store, "Provenance")
                 if p["agent"][0]["who"]["reference"] == alex.practitioner]  # fmt: skip
    assert clinician
    audit = stored(store, "AuditEvent", patient=alex.patient)
    assert sorted(a["subtype"][1]["code"] for a in audit) == ["add", "approve", "edit", "reject"]

    # sekmet: the same decisions, one resource each.
    theirs = {t["id"]: t for t in ehr_resources(sekmet, "Task", {"patient": alex.patient})}
    assert set(theirs) == {practice, journal, added}
    for task_id, task in theirs.items():
        assert task["status"] == ours[task_id]["status"], task_id
        assert _security(task) == _security(ours[task_id]), task_id
    assert (theirs[practice]["status"], theirs[practice]["intent"]) == ("requested", "plan")
    assert theirs[practice]["description"] == EDITED
    assert theirs[practice]["restriction"]["period"]["end"] == DUE
    assert _security(theirs[practice]) == {CLINAST_AIRPT}
    assert theirs[journal]["status"] == "rejected"
    assert theirs[journal]["statusReason"]["text"] == REASON
    assert AIAST in _security(theirs[journal])  # the clinician asserted none of it
    assert theirs[added]["status"] == "requested" and theirs[added]["description"] == ADDED
    assert not _security(theirs[added]) & {AIAST, CLINAST_AIRPT}
    [plan] = ehr_resources(sekmet, "CarePlan", {"subject": alex.patient})
    assert (plan["status"], plan["intent"]) == ("active", "plan")
    assert {a["reference"]["reference"] for a in plan["activity"]} >= {
        f"Task/{practice}",
        f"Task/{added}",
    }
    for system, found in ((SID_TASK, theirs.values()), (SID_CAREPLAN, [plan])):
        values = [identifier_of(r, system) for r in found]
        assert len(values) == len(set(values)), (system, values)
    for prov in clinician:
        [there] = ehr_resources(sekmet, "Provenance", {"_id": prov["id"]})
        assert there["agent"][0]["who"]["reference"] == alex.practitioner
        # Ours name the versions written in our store; the care-plan store's copy, whose
        # versions are its own, the resources only.
        assert {t["reference"] for t in there["target"]} == {
            t["reference"].split("/_history/")[0] for t in prov["target"]
        }
    written = launched.written_note
    [note] = notes_of(ehr_resources(sekmet, "DocumentReference", {"subject": alex.patient}),
                      encounter)  # fmt: skip
    assert note["id"] == written["id"]
    assert int(note["meta"]["versionId"]) > int(written["meta"]["versionId"])
    assert "reviewed by clinician" in note["description"]
    for body in [*theirs.values(), plan, note]:
        assert problems(body) == [], (body["resourceType"], problems(body))
    assert watched.problems == [], watched.problems
