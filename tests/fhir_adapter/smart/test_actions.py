"""The clinician's actions over TestClient after a real SMART launch against the development
EHR, on a store filled by the real pipeline (`homework-fhir demo`, work filed under `local`:
our store only). The EHR/care-plan store round trip through the outbox is not covered here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from authlib.integrations.httpx_client._compat import httpx2 as oauth_http
from fastapi.testclient import TestClient
from joserfc.jwk import KeySet
from sqlalchemy import func, select

from fhir_adapter.api import ApiDeps, create_app
from fhir_adapter.api.security import TokenVerifier
from fhir_adapter.samples import sample_export_dir
from fhir_adapter.settings import EhrConnection
from fhir_adapter.smart import SmartApp
from fhir_adapter.smart.devserver import DevClient, DevEhr, dev_ehr_router
from fhir_adapter.store import Store, resources
from fhir_adapter.store.models import FeedbackRow, OutboxRow, ResourceVersionRow
from fhir_adapter.store.resources import Query
from mapping.fhir.codes import AIAST
from mapping.fhir.context import ModelInfo
from mapping.fhir.validate import problems
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

    def every_action() -> list[httpx.Response]:
        return [
            _post(app, f"/tasks/{first}/edit", csrf=csrf, description="Walk 10 minutes daily",
                  category="take-action", due="2099-01-01"),
            _post(app, f"/tasks/{second}/reject", csrf=csrf, reason="Not homework: small talk"),
            _post(app, "/approve", csrf=csrf, all="1"),
            _post(app, "/add", csrf=csrf, category="journal",
                  description="Write down one good thing each evening"),
        ]  # fmt: skip

    done = every_action()
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
    assert {t["reference"] for p in clinician for t in p["target"]} >= {
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

    # A rerun of every action changes nothing: same versions, no outbox rows, no feedback.
    before = _state(store)
    again = every_action()
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
        assert _post(app, f"/tasks/{target['id']}/reject", csrf=csrf,
                     reason="Small talk").status_code == 303  # fmt: skip
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
    rejected = _post(app, f"/tasks/{mine[0]}/reject", csrf=csrf, reason="not homework")
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
