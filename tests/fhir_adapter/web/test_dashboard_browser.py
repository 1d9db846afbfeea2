"""The dashboard in a real browser: Debian's Chromium, driven by Playwright, against the API
served by uvicorn over a store the real pipeline filled.

The store: the bundled sample export backfilled by `homework-fhir demo` (the model and the
pipeline, nothing faked), except that one patient's sessions are held at a second clinic, so
the clinic filter changes the figures. The browser logs in (a bad token, a token without the
scopes, then a good one), reads the figures and checks them against `evaluate_measure` for the
same filters, changes the period and clinic, drills down from a therapist's bar and from a
category row and checks the Tasks listed against a FHIR search of the store, and logs out.

`HOMEWORK_FHIR_DASHBOARD_SCREENSHOT=docs/dashboard.png` also saves the README's picture (the
sample data, all time, one therapist's tasks opened).

Chromium comes from Debian (`apt-get install chromium`); Playwright's own browser download is
not used. Without it this test fails, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from joserfc.jwk import KeySet, RSAKey
from playwright.sync_api import Browser, Page, sync_playwright

from fhir_adapter.api import ApiDeps, create_app
from fhir_adapter.api.search import parse_query
from fhir_adapter.api.security import TokenVerifier, issue_token
from fhir_adapter.quality import MeasureRequest, evaluate_measure
from fhir_adapter.samples import sample_export_dir
from fhir_adapter.store import Store, open_store, resources
from fhir_adapter.web.data import Filters, measure_figures
from inference_server.triton_server import free_port

pytestmark = pytest.mark.integration

CHROMIUM = Path(os.environ.get("HOMEWORK_FHIR_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOT = os.environ.get("HOMEWORK_FHIR_DASHBOARD_SCREENSHOT")
ISSUER, AUDIENCE = "https://issuer.test", "https://homework.test/fhir"
KEY = RSAKey.generate_key(2048, parameters={"kid": "browser-rsa"})
# pat-2's sessions are moved to this clinic; the others stay at the sample's clinic-1.
CLINIC_1, CLINIC_2 = "Organization/clinic-1", "Organization/clinic-2"
MOVED_PATIENT = "Patient/pat-2"
OKAFOR, REYES = "Practitioner/prac-1", "Practitioner/prac-2"
REVIEW, ASSIGNMENT = "homework-review-rate", "homework-assignment-rate"


def token(scopes: str = "system/*.rs") -> str:
    return issue_token(KEY, ISSUER, AUDIENCE, scopes, subject="quality-lead", lifetime_s=600)


def _second_clinic(export: Path) -> set[str]:
    """Hold MOVED_PATIENT's encounters at CLINIC_2; returns those encounters."""
    path = export / "Encounter.ndjson"
    moved, lines = set(), []
    for line in path.read_text(encoding="utf-8").splitlines():
        encounter = json.loads(line)
        if encounter["subject"]["reference"] == MOVED_PATIENT:
            encounter["serviceProvider"] = {
                "reference": CLINIC_2,
                "display": "Lakeside Family Practice",
            }
            moved.add(f"Encounter/{encounter['id']}")
        lines.append(json.dumps(encounter))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert moved, f"the sample export has no encounters of {MOVED_PATIENT}"
    return moved


@dataclass
class Served:
    url: str
    store: Store
    at_clinic_2: set[str]  # encounters


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("dashboard")
    export = root / "export"
    shutil.copytree(sample_export_dir(), export)
    moved = _second_clinic(export)
    done = subprocess.run(
        [sys.executable, "-c", "from fhir_adapter.cli import main; main()", "demo",
         "--data-dir", str(root / "data"), "--export", str(export), "--no-serve"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    store = open_store(f"sqlite:///{root / 'data' / 'demo.sqlite3'}")
    verifier = TokenVerifier(KeySet([KEY]), ISSUER, AUDIENCE)
    port = free_port()
    config = uvicorn.Config(
        create_app(ApiDeps(store=store, verifier=verifier)),
        host="127.0.0.1",
        port=port,
        log_config=None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start the API")
        time.sleep(0.05)
    try:
        yield Served(f"http://127.0.0.1:{port}", store, moved)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: the dashboard's browser test needs Debian's Chromium "
            "(apt-get install chromium), or HOMEWORK_FHIR_CHROMIUM=/path/to/chromium"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield launched
        finally:
            launched.close()


def expected(store: Store, filters: Filters) -> dict[str, Any]:
    """Both measures' figures, computed without the dashboard."""
    request: MeasureRequest = filters.request()
    return {
        "assignment": measure_figures(evaluate_measure(store, ASSIGNMENT, request)),
        "review": measure_figures(evaluate_measure(store, REVIEW, request)),
    }


def searched(store: Store, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Tasks a FHIR search of the store finds (`GET /fhir/Task?...`)."""
    with store.session() as session:
        found, total = resources.search(session, parse_query("Task", [*params, ("_count", "500")]))
    assert total == len(found)
    return [t for t in found if t["status"] not in ("cancelled", "entered-in-error")]


def wait_ready(page: Page, selector: str = "#dashboard") -> None:
    page.wait_for_selector(f"{selector}[data-state=ready]", timeout=15_000)


def text(page: Page, selector: str) -> str:
    return page.locator(selector).inner_text().strip()


NONE = "\u2013"  # the en dash the dashboard shows where there is no figure


def figure(f: dict[str, Any] | None, noun: str) -> str:
    if f is None:
        return NONE
    rate = NONE if f["score"] is None else f"{f['score'] * 100:.0f}%"
    return f"{rate} ({f['numerator']} of {f['denominator']} {noun})"


def assert_shows(page: Page, want: dict[str, Any]) -> None:
    """The tiles and the therapist, category and funnel tables show `want`'s numbers."""
    a, r = want["assignment"], want["review"]
    assert text(page, "#assignment-counts") == (
        f"{a['numerator']} of {a['denominator']} sessions set homework"
    )
    assert text(page, "#review-counts") == (
        f"{r['numerator']} of {r['denominator']} tasks with a next session were reviewed there"
    )
    assert text(page, "#review-rate") == f"{r['score'] * 100:.0f}%"
    for name in ("practitioner", "category"):
        rows = page.locator(f"#table-{name} tbody tr")
        codes = {s["code"] for s in a["strata"][name]} | {s["code"] for s in r["strata"][name]}
        assert rows.count() == len(codes), name
        for code in codes:
            cells = page.locator(f"#table-{name} tbody tr[data-code='{code}'] > *")
            by_a = next((s for s in a["strata"][name] if s["code"] == code), None)
            by_r = next((s for s in r["strata"][name] if s["code"] == code), None)
            assert cells.nth(1).inner_text() == figure(by_a, "sessions"), (name, code)
            assert cells.nth(2).inner_text() == figure(by_r, "tasks"), (name, code)
    funnel = [a["denominator"], a["numerator"], r["initial"], r["denominator"], r["numerator"]]
    shown = page.locator("#table-funnel tbody tr td").all_inner_texts()
    assert [int(n) for n in shown] == funnel


def click_bar(page: Page, canvas: str, label: str, dataset: int) -> None:
    """Click the middle of one bar of a Chart.js bar chart, as a person would."""
    where = page.evaluate(
        """([id, label, dataset]) => {
            const chart = Chart.getChart(document.getElementById(id));
            const index = chart.data.labels.indexOf(label);
            if (index < 0) return null;
            const bar = chart.getDatasetMeta(dataset).data[index];
            const box = chart.canvas.getBoundingClientRect();
            return { x: box.left + bar.x, y: box.top + (bar.y + bar.base) / 2 };
        }""",
        [canvas, label, dataset],
    )
    assert where is not None, f"no bar {label!r} in #{canvas}"
    page.mouse.click(where["x"], where["y"])


def listed(page: Page) -> list[str]:
    wait_ready(page, "#drill")
    return page.locator("#drill-table tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.task)"
    )


def test_login_filters_drill_down_and_logout(served: Served, browser: Browser) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []  # console errors (a CSP violation is one) and uncaught exceptions
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    # Without a session the dashboard sends to the login page.
    page.goto(f"{served.url}/dashboard")
    assert page.url == f"{served.url}/dashboard/login"

    # A bad token, then one that lacks the scopes: refused, saying why.
    page.fill("#token", "not-a-token")
    page.click("button[type=submit]")
    assert "This token was not accepted" in text(page, "#login-error")
    page.fill("#token", token("system/Task.rs"))
    page.click("button[type=submit]")
    assert "does not open the dashboard" in text(page, "#login-error")
    assert "DocumentReference" in text(page, "#login-error")
    problems.clear()  # the browser logs the 401 and 403 answers of the refused logins

    # The right token: the dashboard, with the sample's numbers for all time.
    page.fill("#token", token())
    page.click("button[type=submit]")
    page.wait_for_url(f"{served.url}/dashboard")
    wait_ready(page)
    assert text(page, "#subject") == "quality-lead"
    everything = expected(served.store, Filters())
    assert everything["assignment"]["denominator"] == 9  # the sample's nine sessions
    assert_shows(page, everything)
    assert "Observational and confounded" in text(page, "#caveats")
    assert page.locator("#table-outcome tbody tr").count() == 3  # three patients
    assert page.locator("#association li").count() == 2  # PHQ-9 and GAD-7

    if SCREENSHOT:
        click_bar(page, "chart-practitioner", "Daniel Reyes", 0)
        listed(page)
        page.screenshot(path=SCREENSHOT, full_page=True)

    # A period and a clinic: the numbers follow.
    page.fill("#from", "2025-02-10")
    page.fill("#to", "2025-02-20")
    page.select_option("#clinic", CLINIC_1)
    page.click("#apply")
    wait_ready(page)
    chosen = Filters(date(2025, 2, 10), date(2025, 2, 20), clinic=CLINIC_1)
    narrowed = expected(served.store, chosen)
    assert narrowed["assignment"]["denominator"] < everything["assignment"]["denominator"]
    assert narrowed["review"]["initial"] < everything["review"]["initial"]
    assert_shows(page, narrowed)
    assert "from=2025-02-10" in page.url and "clinic=Organization%2Fclinic-1" in page.url
    # The other clinic alone: its own numbers (the moved patient's sessions only).
    page.select_option("#clinic", CLINIC_2)
    page.click("#apply")
    wait_ready(page)
    other = expected(served.store, Filters(date(2025, 2, 10), date(2025, 2, 20), clinic=CLINIC_2))
    assert other["assignment"]["denominator"] > 0
    assert_shows(page, other)
    page.select_option("#clinic", CLINIC_1)
    page.click("#apply")
    wait_ready(page)

    # Drill-down from a bar: Dr. Okafor's tasks with a next session, in the period, at clinic 1.
    click_bar(page, "chart-practitioner", "Dr. Amara Okafor", 1)
    shown = listed(page)
    search = [("requester", OKAFOR), ("authored-on", "ge2025-02-10"),
              ("authored-on", "le2025-02-20"),
              ("business-status", "reviewed,not-reviewed")]  # fmt: skip
    want = [t for t in searched(served.store, search)
            if t["encounter"]["reference"] not in served.at_clinic_2]  # fmt: skip
    assert want, "the drill-down should list some tasks"
    assert sorted(shown) == sorted(t["id"] for t in want)
    okafor = next(s for s in narrowed["review"]["strata"]["practitioner"] if s["code"] == OKAFOR)
    assert len(shown) == okafor["denominator"]  # the bar's own denominator
    statuses = page.locator("#drill-table tbody tr td:nth-child(6)").all_inner_texts()
    assert statuses.count("reviewed") == okafor["numerator"]
    assert "Dr. Amara Okafor" in text(page, "#drill-title")
    assert text(page, "#drill-search").startswith("/fhir/Task?requester=Practitioner%2Fprac-1")

    # Drill-down from a category row's button: every task of that category in the filters.
    page.click("#table-category tbody tr[data-code='practice'] button")
    shown = listed(page)
    search = [("code", "practice"), ("authored-on", "ge2025-02-10"),
              ("authored-on", "le2025-02-20")]  # fmt: skip
    want = [t for t in searched(served.store, search)
            if t["encounter"]["reference"] not in served.at_clinic_2]  # fmt: skip
    assert sorted(shown) == sorted(t["id"] for t in want)
    categories = page.locator("#drill-table tbody tr td:nth-child(4)").all_inner_texts()
    assert set(categories) == {"Practise a skill"}

    assert problems == [], problems

    # Logout: back to the login page, and the dashboard no longer opens.
    page.click("#logout")
    page.wait_for_url(f"{served.url}/dashboard/login")
    page.goto(f"{served.url}/dashboard")
    assert page.url == f"{served.url}/dashboard/login"
    page.close()
