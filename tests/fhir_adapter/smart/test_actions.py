"""The clinician's actions over TestClient after a real SMART launch against the development
EHR, on a store filled by the real pipeline (`homework-fhir demo`, work filed under `local`:
our store only). The EHR/care-plan store round trip through the outbox is not covered here."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from authlib.integrations.httpx_client._compat import httpx2 as oauth_http
from fastapi.testclient import TestClient
from joserfc.jwk import KeySet
from sqlalchemy import func, select

from fhir_adapter.api import ApiDeps, create_app
from fhir_adapter.api.security import TokenVerifier
from fhir_adapter.pipeline.jobs import LOCAL
from fhir_adapter.pipeline.steps import Step
from fhir_adapter.samples import sample_export_dir
from fhir_adapter.settings import EhrConnection
from fhir_adapter.smart import SmartApp, actions
from fhir_adapter.smart.devserver import DevClient, DevEhr, dev_ehr_router
from fhir_adapter.smart.routes import MAX_FORM_BODY
from fhir_adapter.store import Store, open_store, resources, work
from fhir_adapter.store.models import FeedbackRow, OutboxRow, ResourceVersionRow
from fhir_adapter.store.resources import Query
from mapping.fhir.approval import MAX_DESCRIPTION
from mapping.fhir.audit import LaunchContext, clinician_provenance
from mapping.fhir.codes import AIAST
from mapping.fhir.context import ModelInfo, Ref
from mapping.fhir.validate import as_json, problems
from tests.fhir_adapter.smart.test_launch import (
    BASE,
    ISS,
    KEY,
    SECRET,
    App,
    Tamper,
    launch,
    store,
    tasks,
)

__all__ = ["store"]  # the module-scoped demo store fixture

MODEL = ModelInfo("homework-detector", "test", "https://example.org/model-card")


@pytest.fixture
def app(store: Store) -> Iterator[App]:
    redirect = f"{BASE}/smart/callback"
    ehr = DevEhr(f"{BASE}/dev-ehr", sample_export_dir(), DevClient("demo", SECRET, redirect))
    conn = EhrConnection(
        name="dev_ehr",
        base_url=ISS,
        smart_app={"client_id": "demo", "client_secret": SECRET, "redirect_uri": redirect},
    )
    kicked: list[str] = []

    async def write_back(name: str) -> None:
        kicked.append(name)

    deps = ApiDeps(store=store, verifier=TokenVerifier(KeySet([KEY]), "i", "a"), model=MODEL,
                   write_back=write_back)  # fmt: skip
    made = create_app(deps, public_routers=[dev_ehr_router(ehr)])
    transport = Tamper(oauth_http.ASGITransport(app=made))
    deps.smart = SmartApp(
        {"dev_ehr": conn}, transport=httpx.ASGITransport(app=made), oauth_transport=transport
    )
    with TestClient(made, base_url=BASE) as client:
        yield App(client, transport, ehr)


def _csrf(app: App) -> str:
    page = app.client.get("/smart/review")
    assert page.status_code == 200, page.text[-500:]
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found
    return found.group(1)


def _versions(app: App) -> dict[str, str]:
    """The review page's `version-<task id>` fields, as its forms send them."""
    page = app.client.get("/smart/review")
    assert page.status_code == 200, page.text[-500:]
    fields = re.findall(r'name="version-([^"]+)" value="([^"]*)"', page.text)
    return {f"version-{task}": version for task, version in fields}


def _post(app: App, path: str, **form: Any) -> httpx.Response:
    return app.client.post(f"/smart/review{path}", data=form, headers={"origin": BASE},
                           follow_redirects=False)  # fmt: skip


def _state(store: Store) -> tuple[int, int, int]:
    with store.session() as session:
        return (
            session.scalar(select(func.count()).select_from(ResourceVersionRow)) or 0,
            session.scalar(select(func.count()).select_from(OutboxRow)) or 0,
            session.scalar(select(func.count()).select_from(FeedbackRow)) or 0,
        )


def _drafts(store: Store) -> list[dict[str, Any]]:
    return sorted((t for t in tasks(store, "Patient/pat-1")
                   if t["encounter"]["reference"] == "Encounter/enc-1-3"),
                  key=lambda t: t["id"])  # fmt: skip


def test_actions_end_to_end_and_idempotent(app: App, store: Store) -> None:
    assert launch(app).status_code == 303
    csrf = _csrf(app)
    drafted = _drafts(store)
    assert len(drafted) >= 2 and all(t["status"] == "draft" for t in drafted)
    first, second = drafted[0]["id"], drafted[1]["id"]
    loaded = _versions(app)

    def every_action(seen: Callable[[], dict[str, str]]) -> list[httpx.Response]:
        return [
            _post(app, f"/tasks/{first}/edit", csrf=csrf, description="Walk 10 minutes daily",
                  category="take-action", due="2099-01-01", **seen()),
            _post(app, f"/tasks/{second}/reject", csrf=csrf, reason="Not homework: small talk",
                  **seen()),
            _post(app, "/approve", csrf=csrf, all="1", **seen()),
            _post(app, "/add", csrf=csrf, category="journal",
                  description="Write down one good thing each evening"),
        ]  # fmt: skip

    # Each form as the page shows it after the decision before (the 303 reloads it).
    done = every_action(lambda: _versions(app))
    assert [r.status_code for r in done] == [303] * 4, [r.text[-300:] for r in done]
    assert done[0].headers["location"] == "/smart/review?done=edit"
    after = {t["id"]: t for t in tasks(store, "Patient/pat-1")
             if t["encounter"]["reference"] == "Encounter/enc-1-3"}  # fmt: skip
    assert after[first]["status"] == "requested" and after[first]["intent"] == "plan"
    assert after[first]["description"] == "Walk 10 minutes daily"
    assert [s["code"] for s in after[first]["meta"]["security"]] == ["CLINAST_AIRPT"]
    assert after[second]["status"] == "rejected"
    assert after[second]["statusReason"]["text"] == "Not homework: small talk"
    added = [t for t in after.values() if t["description"].startswith("Write down")]
    assert len(added) == 1 and added[0]["status"] == "requested"
    assert AIAST not in {s.get("code") for s in added[0].get("meta", {}).get("security", [])}
    with store.session() as session:
        [plan], _ = resources.search(session, Query("CarePlan", encounter="Encounter/enc-1-3"))
        audit, _ = resources.search(session, Query("AuditEvent", patient="Patient/pat-1"))
        provenance, _ = resources.search(session, Query("Provenance", count=500))
    assert (plan["status"], plan["intent"]) == ("active", "plan")
    assert {a["subtype"][1]["code"] for a in audit} == {"edit", "reject", "approve", "add"}
    assert all(a["agent"][0]["who"]["reference"] == "Practitioner/prac-1" for a in audit)
    clinician = [p for p in provenance
                 if p["agent"][0]["who"]["reference"] == "Practitioner/prac-1"]  # fmt: skip
    targets = [t["reference"] for p in clinician for t in p["target"]]
    assert all("/_history/" in t for t in targets), targets  # the versions each decision wrote
    assert {t.split("/_history/")[0] for t in targets} >= {
        f"Task/{first}",
        f"Task/{second}",
        f"Task/{added[0]['id']}",
        f"CarePlan/{plan['id']}",
    }
    for body in [plan, *after.values(), *audit, *clinician]:
        assert problems(body) == [], body["resourceType"]
    with store.session() as session:
        [note], _ = resources.search(
            session, Query("DocumentReference", encounter="Encounter/enc-1-3")
        )
    assert note["masterIdentifier"] and "reviewed by clinician" in note["description"]

    # A rerun of every action changes nothing: same versions, no outbox rows, no feedback; even
    # resent from the page as first loaded (every version since changed), it is no error.
    before = _state(store)
    again = every_action(lambda: loaded)
    assert [r.status_code for r in again] == [303] * 4, [r.text[-300:] for r in again]
    assert _state(store) == before


def test_other_patients_task_is_404_and_csrf_is_checked(app: App, store: Store) -> None:
    assert launch(app).status_code == 303
    csrf = _csrf(app)
    other = tasks(store, "Patient/pat-2")[0]["id"]
    before = _state(store)
    assert _post(app, f"/tasks/{other}/reject", csrf=csrf, reason="x").status_code == 404
    assert _post(app, "/approve", csrf=csrf, task=other).status_code == 404
    mine = _drafts(store)[-1]["id"]
    assert _post(app, f"/tasks/{mine}/reject", reason="x").status_code == 403
    assert _post(app, f"/tasks/{mine}/reject", csrf="wrong", reason="x").status_code == 403
    evil = app.client.post(
        f"/smart/review/tasks/{mine}/reject",
        data={"csrf": csrf, "reason": "x"},
        headers={"origin": "https://evil.example"},
    )
    assert evil.status_code == 403
    assert _state(store) == before


def test_feedback_export(app: App, store: Store, tmp_path: Any) -> None:
    import json

    from fhir_adapter.smart.feedback import export

    assert launch(app).status_code == 303
    csrf = _csrf(app)
    target = _drafts(store)[-1]
    if target["status"] == "draft":
        assert _post(app, f"/tasks/{target['id']}/reject", csrf=csrf, reason="Small talk",
                     **_versions(app)).status_code == 303  # fmt: skip
    out = tmp_path / "feedback.jsonl"
    count = export(store, out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert count == len(lines) >= 1
    assert any(r["decision"] == "reject" and r["reason"] for r in lines)
    assert "pat-1" not in out.read_text() and "Patient/" not in out.read_text()


def test_a_refused_decision_is_audited(app: App, store: Store) -> None:
    """Approving a rejected item is refused (409) and leaves an AuditEvent saying so (another
    patient than the other tests', whose decisions share this module's store)."""
    assert launch(app, "pat-2", "enc-2-3").status_code == 303
    csrf = _csrf(app)
    mine = sorted(t["id"] for t in tasks(store, "Patient/pat-2")
                  if t["encounter"]["reference"] == "Encounter/enc-2-3")  # fmt: skip
    rejected = _post(app, f"/tasks/{mine[0]}/reject", csrf=csrf, reason="not homework",
                     **_versions(app))  # fmt: skip
    assert rejected.status_code == 303
    refused = _post(app, "/approve", csrf=csrf, task=mine[0])
    assert refused.status_code == 409 and "rejected" in refused.text
    with store.session() as session:
        audit, _ = resources.search(session, Query("AuditEvent", patient="Patient/pat-2"))
    failures = [a for a in audit if a["outcome"] == "4"]
    assert len(failures) == 1
    assert failures[0]["subtype"][1]["code"] == "approve"
    assert {e["what"].get("reference") for e in failures[0]["entity"]} >= {f"Task/{mine[0]}"}
    assert problems(failures[0]) == []


def _task(store: Store, task_id: str) -> dict[str, Any]:
    with store.session() as session:
        found = resources.get(session, "Task", task_id)
    assert found is not None
    return found


def _session_drafts(store: Store, patient: str, encounter: str) -> list[dict[str, Any]]:
    return sorted((t for t in tasks(store, f"Patient/{patient}")
                   if t["encounter"]["reference"] == f"Encounter/{encounter}"
                   and t["status"] == "draft"), key=lambda t: t["id"])  # fmt: skip


def test_a_long_edit_is_kept_whole_or_refused_whole(app: App, store: Store) -> None:
    """The longest description the form allows, in a script of 3 UTF-8 bytes a character
    (9 percent-encoded), arrives whole with the fields after it; a longer one is refused with
    what to do, and a body over the limit is refused, never cut (it was: the text ended in
    U+FFFD and the category and due date were lost)."""
    assert launch(app, "pat-1", "enc-1-1").status_code == 303
    csrf = _csrf(app)
    assert f'maxlength="{MAX_DESCRIPTION}"' in app.client.get("/smart/review").text
    task = _session_drafts(store, "pat-1", "enc-1-1")[0]["id"]
    text = "宿" * MAX_DESCRIPTION
    done = _post(app, f"/tasks/{task}/edit", csrf=csrf, description=text, category="journal",
                 due="2099-01-01", **_versions(app))  # fmt: skip
    assert done.status_code == 303, done.text[-500:]
    after = _task(store, task)
    assert after["description"] == text
    assert after["code"]["coding"][0]["code"] == "journal"
    assert after["restriction"]["period"]["end"] == "2099-01-01"

    before = _state(store)
    over = _post(app, f"/tasks/{task}/edit", csrf=csrf, description="a" * 20_000,
                 category="learn", **_versions(app))  # fmt: skip
    assert over.status_code == 400
    assert "20000 characters long; shorten it to 2000" in over.text
    huge = _post(app, f"/tasks/{task}/edit", csrf=csrf, description="宿" * (MAX_FORM_BODY // 9),
                 category="learn", **_versions(app))  # fmt: skip
    assert huge.status_code == 413 and "Nothing was saved" in huge.text
    logout = app.client.post("/smart/logout", data={"csrf": csrf, "pad": "a" * MAX_FORM_BODY},
                             headers={"origin": BASE})  # fmt: skip
    assert logout.status_code == 413
    assert _state(store) == before
    assert _task(store, task)["description"] == text


def test_a_stale_page_cannot_undo_another_decision(app: App, store: Store) -> None:
    """A page loaded before someone else's decision (another clinician, another tab) sends
    its prefilled values: refused (409, reload), never a silent undo; a rejection is not
    rejected again for another reason; the same decision resent stands."""
    assert launch(app, "pat-3", "enc-3-2").status_code == 303
    csrf = _csrf(app)
    edited, rejected = _session_drafts(store, "pat-3", "enc-3-2")[:2]
    category = edited["code"]["coding"][0]["code"]
    loaded = _versions(app)
    reworded = "Walk for ten minutes after lunch"
    assert _post(app, f"/tasks/{edited['id']}/edit", csrf=csrf, description=reworded,
                 category=category, **_versions(app)).status_code == 303  # fmt: skip

    # The stale page changes only the category; its form still carries the old wording.
    stale = _post(app, f"/tasks/{edited['id']}/edit", csrf=csrf,
                  description=edited["description"], category="learn", **loaded)  # fmt: skip
    assert stale.status_code == 409
    assert "changed by someone else" in stale.text and "reload the page" in stale.text
    now = _task(store, edited["id"])
    assert now["description"] == reworded and now["code"]["coding"][0]["code"] == category
    # Approving the plan from it would approve wording the clinician never saw.
    assert _post(app, "/approve", csrf=csrf, all="1", **loaded).status_code == 409
    assert _task(store, edited["id"])["status"] == "draft"

    path = f"/tasks/{rejected['id']}/reject"
    assert _post(app, path, csrf=csrf, reason="Not homework", **loaded).status_code == 303
    again = _post(app, path, csrf=csrf, reason="Small talk", **_versions(app))
    assert again.status_code == 409 and "rejected again" in again.text
    assert _post(app, path, csrf=csrf, reason="Not homework", **loaded).status_code == 303
    assert _task(store, rejected["id"])["statusReason"]["text"] == "Not homework"
    with store.session() as session:
        labels = session.scalars(
            select(FeedbackRow.decision).where(FeedbackRow.task == f"Task/{rejected['id']}")
        ).all()
    assert labels == ["reject"]

    # From the page as it is now, the plan is approved.
    assert _post(app, "/approve", csrf=csrf, all="1", **_versions(app)).status_code == 303
    assert _task(store, edited["id"])["status"] == "requested"


def test_each_decision_has_its_own_provenance(app: App, store: Store) -> None:
    """The same clinician editing the same Task twice: two Provenances, each naming the
    version it wrote (they shared one id, the second overwriting the first, or, within the
    same second, not written at all); the second resent writes none."""
    assert launch(app, "pat-3", "enc-3-1").status_code == 303
    csrf = _csrf(app)
    task = _session_drafts(store, "pat-3", "enc-3-1")[0]["id"]
    version = int(_task(store, task)["meta"]["versionId"])
    path = f"/tasks/{task}/edit"
    for text in ("Breathe slowly for five minutes", "Breathe slowly for ten minutes"):
        assert _post(app, path, csrf=csrf, description=text, **_versions(app)).status_code == 303
    before = _state(store)
    assert _post(app, path, csrf=csrf, description="Breathe slowly for ten minutes",
                 **_versions(app)).status_code == 303  # fmt: skip
    assert _state(store) == before
    with store.session() as session:
        every, _ = resources.search(session, Query("Provenance", count=500))
    mine = [
        p for p in every if any(t["reference"].startswith(f"Task/{task}/") for t in p["target"])
    ]
    assert sorted(t["reference"] for p in mine for t in p["target"]) == [
        f"Task/{task}/_history/{version + 1}",
        f"Task/{task}/_history/{version + 2}",
    ]
    assert all(p["meta"]["versionId"] == "1" for p in mine)  # neither overwrote the other
    assert all(problems(p) == [] for p in mine)


def test_the_care_plan_store_gets_the_provenance_targets_unversioned(tmp_path: Path) -> None:
    """Our versions are not the care-plan store's (it counts its own writes, and queued
    writes of one resource coalesce): the copy queued for it names the resources only."""
    fresh = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    conn = EhrConnection(name="ehr1", base_url="https://ehr.example/fhir",
                         write={"care_plan_store": "ehr"})  # fmt: skip
    actor = actions.Actor(conn, "Patient/pat-1", None, Ref("Practitioner/prac-1"),
                          LaunchContext("audit-key"), MODEL)  # fmt: skip
    now = datetime(2024, 5, 3, 9, 30, tzinfo=UTC)
    provenance = as_json(clinician_provenance(["Task/t1/_history/3"], actor.clinician, "edit",
                                              now=now, launch=actor.launch))  # fmt: skip
    try:
        with fresh.session() as session:
            assert actions._Writes(session, actor, now).put(provenance)
        with fresh.session() as session:
            [row] = session.scalars(select(OutboxRow)).all()
            ours = resources.get(session, "Provenance", provenance["id"])
        assert ours is not None and ours["target"] == [{"reference": "Task/t1/_history/3"}]
        assert row.payload["target"] == [{"reference": "Task/t1"}]
        assert row.payload["id"] == provenance["id"]
    finally:
        fresh.close()


def test_add_to_a_session_without_a_transcript(app: App, store: Store) -> None:
    """A session the pipeline skipped (no transcript) takes the clinician's own homework: it
    needs only the session, patient and practitioner (it was a 500). One still being
    processed is refused with why, since the draft step would then leave it without a note."""
    with store.session() as session:
        enc = work.source(session, LOCAL, "Encounter", "enc-3-3")
        assert enc is not None
        for bare, step, state in (
            ("enc-3-8", Step.DETECT, {}),
            ("enc-3-9", Step.SKIPPED, {"skipped": "no transcript"}),
            ("enc-3-7", Step.FAILED, {"failed_at": "fetch"}),
        ):
            reference = f"Encounter/{bare}"
            app.ehr.data["Encounter"][bare] = {**enc, "id": bare}  # so the EHR launches it
            work.stage_source(session, LOCAL, {**enc, "id": bare}, reference, "Patient/pat-3")
            row, _ = work.upsert_encounter(session, LOCAL, reference, "Patient/pat-3", None,
                                           None, step)  # fmt: skip
            row.state = state
    assert launch(app, "pat-3", "enc-3-9").status_code == 303
    csrf = _csrf(app)
    added = _post(app, "/add", csrf=csrf, category="learn", description="Read the sleep leaflet")
    assert added.status_code == 303, added.text[-500:]
    [task] = [t for t in tasks(store, "Patient/pat-3")
              if t["encounter"]["reference"] == "Encounter/enc-3-9"]  # fmt: skip
    assert (task["status"], task["description"]) == ("requested", "Read the sleep leaflet")
    with store.session() as session:
        [plan], _ = resources.search(session, Query("CarePlan", encounter="Encounter/enc-3-9"))
    assert plan["status"] == "active"
    assert plan["activity"] == [{"reference": {"reference": f"Task/{task['id']}"}}]
    assert problems(task) == [] and problems(plan) == []

    # Still processing; or failed before its drafts, where a retry puts it back at that step.
    for bare, why in (("enc-3-8", "still being processed"), ("enc-3-7", "work retry")):
        assert launch(app, "pat-3", bare).status_code == 303
        csrf = _csrf(app)
        refused = _post(app, "/add", csrf=csrf, category="learn", description="Read the leaflet")
        assert refused.status_code == 409 and why in refused.text
        assert not [t for t in tasks(store, "Patient/pat-3")
                    if t["encounter"]["reference"] == f"Encounter/{bare}"]  # fmt: skip


def test_two_decisions_at_the_same_moment_are_409_not_500(app: App, store: Store) -> None:
    """Both read the Task's current version and pass the version check; the second's new
    version then collides with the first's in the store. That is the state made here: the
    next version already written (the other decision, committed between this one's read and
    write). Nothing of the second is saved, and the clinician is told to reload."""
    assert launch(app, "pat-2", "enc-2-3").status_code == 303
    csrf = _csrf(app)
    draft = next(t for t in tasks(store, "Patient/pat-2")
                 if t["encounter"]["reference"] == "Encounter/enc-2-3"
                 and t["status"] == "draft")  # fmt: skip
    version = int(draft["meta"]["versionId"])
    with store.session() as session:
        other = {**draft, "description": "the other edit"}
        session.add(ResourceVersionRow(resource_type="Task", id=draft["id"],
                                       version_id=version + 1, last_updated=datetime.now(UTC),
                                       body=other))  # fmt: skip
    before = _state(store)
    answer = _post(app, f"/tasks/{draft['id']}/edit", csrf=csrf, description="Walk twice",
                   **{f"version-{draft['id']}": str(version)})  # fmt: skip
    assert answer.status_code == 409 and "at the same moment" in answer.text
    assert _state(store) == before
