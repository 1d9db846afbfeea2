"""The clinician's approve path in a real browser: Debian's Chromium, driven by Playwright,
against the demo's app over a store the real pipeline filled (the fixtures of
test_launch_browser.py; this module gets its own demo store, since it changes it).

From the EHR launch link (pat-1, session enc-1-3) through the dev EHR's sign-in and consent to
the review screen; then, by clicking the real forms: edit one draft (description and due
date), reject another with a reason (keyboard only: Tab to the reason, type, Enter), add an
item the model missed, approve the whole plan. Launch to approved is timed (printed; the
issue's "under a minute"). Then our store: the CarePlan active/plan, the approved Tasks
requested/plan labelled CLINAST_AIRPT, the rejected one with its reason, the added one with no
AI label, the clinician's Provenance and the AuditEvents, all valid R4B. Going back and
submitting again (and replaying every action's POST with the page's own cookies and form)
changes nothing. The approved screen is saved as a screenshot in the test's tmp_path.

The demo files its work under `local` (our store only): the write-back of the same decisions
to a real FHIR server is tests/fhir_adapter/pipeline/test_e2e_clinician_writeback.py.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from fhir_adapter.store import Store, resources
from fhir_adapter.store.models import FeedbackRow, OutboxRow, ResourceVersionRow
from fhir_adapter.store.resources import Query
from mapping.fhir.codes import AIAST, CLINAST_AIRPT
from mapping.fhir.validate import problems
from tests.fhir_adapter.smart.test_launch_browser import (
    ENCOUNTER,
    PATIENT,
    Served,
    Watched,
    browser,
    edit_item,
    saved,
    served,
    tasks,
    watched,
)

__all__ = ["browser", "served", "watched"]  # fixtures (module-scoped ones: this module's own)

LIMIT_S = 60.0
EDITED = "Walk for ten minutes every morning before work"
DUE = "2099-01-15"
REASON = "Not homework: small talk about the weekend"
ADDED = "Write down one thing that went well each evening"


def _state(store: Store) -> tuple[int, int, int]:
    """Resource versions, outbox rows, feedback rows: what any write would change."""
    with store.session() as session:
        return (
            session.scalar(select(func.count()).select_from(ResourceVersionRow)) or 0,
            session.scalar(select(func.count()).select_from(OutboxRow)) or 0,
            session.scalar(select(func.count()).select_from(FeedbackRow)) or 0,
        )


def _search(store: Store, rtype: str, **query: Any) -> list[dict[str, Any]]:
    with store.session() as session:
        found, _ = resources.search(session, Query(rtype, count=500, **query))
    return found


def _security(resource: dict[str, Any]) -> set[str]:
    return {str(s.get("code")) for s in (resource.get("meta") or {}).get("security") or ()}


def test_launch_edit_reject_add_approve(
    served: Served, watched: Watched, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    page = watched.page
    mine = [t for t in tasks(served.store, PATIENT) if t["encounter"]["reference"] == ENCOUNTER]
    drafted = sorted(mine, key=lambda t: t["id"])
    assert len(drafted) >= 2 and {t["status"] for t in drafted} == {"draft"}
    edited, rejected = drafted[0]["id"], drafted[1]["id"]

    started = time.monotonic()
    page.goto(served.launch)
    page.wait_for_selector("#dev-ehr")
    page.click("#allow")
    page.wait_for_url(re.compile(r".*/smart/review$"))

    # Edit: open the item's Edit, change the description and the due date, save.
    edit_item(page, edited, EDITED, DUE)

    # Reject, keyboard only: Tab to the reason field, type it, Enter submits the form.
    page.locator("body").focus()
    for _ in range(80):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == f"reason-{rejected}":
            break
    else:
        raise AssertionError("Tab never reached the reject reason")
    page.keyboard.type(REASON)
    page.keyboard.press("Enter")
    saved(page, "reject", "rejected")

    # Add what the model missed.
    page.select_option("#add-category", "journal")
    page.fill("#add-description", ADDED)
    page.click("#add-item button[type=submit]")
    saved(page, "add", "added")

    # Approve the whole plan.
    before_approve = page.url
    page.click("#approve-plan button[type=submit]")
    saved(page, "approve", "approved")
    elapsed = time.monotonic() - started
    print(f"\nEHR launch to approved CarePlan in the browser: {elapsed:.1f} s")
    assert elapsed < LIMIT_S, f"launch to approval took {elapsed:.1f} s"
    page.screenshot(path=tmp_path / "approved.png", full_page=True)
    assert (tmp_path / "approved.png").stat().st_size > 0

    # The screen shows the decisions: no drafts left, nothing labelled an AI draft.
    shown = {
        li.get_attribute("data-task"): li.locator(".status").inner_text()
        for li in page.locator("#drafts > li.draft").all()
    }
    assert shown[edited] == "requested" and shown[rejected] == "rejected"
    assert "draft" not in shown.values()
    # Every item the model drafted keeps an AI label saying what became of it; the
    # clinician's own item has none.
    labels = dict(page.locator("#drafts > li.draft").evaluate_all(
        "l => l.map(e => [e.dataset.task, e.querySelector('.ai-label')?.innerText ?? null])"
    ))  # fmt: skip
    assert labels[rejected] == "AI draft, rejected"
    assert labels[edited] == "AI-drafted, clinician-approved"
    assert list(labels.values()).count(None) == 1  # the added item

    # The store.
    now = {t["id"]: t for t in tasks(served.store, PATIENT)
           if t["encounter"]["reference"] == ENCOUNTER}  # fmt: skip
    [plan] = _search(served.store, "CarePlan", encounter=ENCOUNTER)
    assert (plan["status"], plan["intent"]) == ("active", "plan")
    added = [t for t in now.values() if t["description"] == ADDED]
    assert len(added) == 1
    approved = [t for t in now.values() if t["id"] not in (rejected, added[0]["id"])]
    assert {t["id"] for t in approved} >= {edited}
    for task in approved:
        assert (task["status"], task["intent"]) == ("requested", "plan"), task["id"]
        assert _security(task) == {CLINAST_AIRPT}, task["id"]
    assert now[edited]["description"] == EDITED
    assert now[edited]["restriction"]["period"]["end"] == DUE
    assert now[rejected]["status"] == "rejected"
    assert now[rejected]["statusReason"]["text"] == REASON
    assert (added[0]["status"], added[0]["intent"]) == ("requested", "plan")
    assert not _security(added[0]) & {AIAST, CLINAST_AIRPT}
    assert f"Task/{added[0]['id']}" in {a["reference"]["reference"] for a in plan["activity"]}

    clinician = "Practitioner/prac-1"
    provenance = [p for p in _search(served.store, "Provenance")
                  if p["agent"][0]["who"]["reference"] == clinician]  # fmt: skip
    # Each decision's Provenance names the versions it wrote ("Task/x/_history/n").
    targets = {t["reference"].split("/_history/")[0] for p in provenance for t in p["target"]}
    assert targets >= {*(f"Task/{t}" for t in now), f"CarePlan/{plan['id']}"}
    audit = _search(served.store, "AuditEvent", patient=PATIENT)
    kinds = sorted(a["subtype"][1]["code"] for a in audit)
    assert kinds == ["add", "approve", "edit", "reject"], kinds
    assert all(a["agent"][0]["who"]["reference"] == clinician for a in audit)
    [note] = _search(served.store, "DocumentReference", encounter=ENCOUNTER)
    assert "reviewed by clinician" in note["description"]
    for body in [plan, *now.values(), *provenance, *audit, note]:
        assert problems(body) == [], (body["resourceType"], body["id"], problems(body))

    # Submitting again changes nothing: back to the page before approving, approve again;
    # and each action's POST replayed with the page's cookies, CSRF token and origin.
    settled = _state(served.store)
    page.go_back()
    page.wait_for_url(before_approve)
    page.click("#approve-plan button[type=submit]")
    saved(page, "approve", "approved")
    csrf = page.locator("#approve-plan input[name=csrf]").get_attribute("value")
    assert csrf
    replay = {
        f"/smart/review/tasks/{edited}/edit": {"description": EDITED, "due": DUE},
        f"/smart/review/tasks/{rejected}/reject": {"reason": REASON},
        "/smart/review/add": {"category": "journal", "description": ADDED},
        "/smart/review/approve": {"all": "1"},
    }
    for path, form in replay.items():
        answer = page.request.post(f"{served.url}{path}", form={"csrf": csrf, **form},
                                   headers={"origin": served.url}, max_redirects=0)  # fmt: skip
        assert answer.status == 303, (path, answer.status, answer.text()[-300:])
    assert _state(served.store) == settled
    assert len(_search(served.store, "AuditEvent", patient=PATIENT)) == len(audit)
    assert watched.problems == [], watched.problems
    # The demo's work is filed under `local`: nothing queued, no write-back tried (and failed)
    # against the dev EHR, which takes no writes.
    failed = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert failed == [], failed
