"""The clinician app in a real browser: Debian's Chromium, driven by Playwright, against the app
`homework-fhir demo` serves (`build_service` with the development EHR mounted under /dev-ehr)
on a free loopback port, over a store the real pipeline filled (`homework-fhir demo
--no-serve`: the bundled samples, the model, nothing faked).

- The EHR launch `make run` prints (pat-1, session enc-1-3): the dev EHR's sign-in and consent,
  the callback, the review screen. The drafts shown are the store's Tasks of that session, each
  labelled as an AI draft; the evidence link opens the transcript with the quoted turn
  highlighted; earlier homework carries its review status; the PHQ-9/GAD-7 chart is drawn and
  its numbers are also on the page as text.
- A standalone launch (no `iss`, no `launch`): the clinician picks the patient at the EHR.
- No session: a page opened without one starts a launch and lands at the EHR's sign-in.
- Keyboard only: Tab to the evidence link, Enter opens it; focus is visible.
- axe-core (vendored in ./vendor): no serious or critical violations on the review screen, the
  evidence page, the dev EHR's consent page, a launch error page and the dashboard.

No console error and no Content-Security-Policy violation on any page of the launch (checked in
browser contexts that keep the CSP; only the axe run bypasses it, to inject axe).

Screenshots go to the test's tmp_path; `HOMEWORK_FHIR_REVIEW_SCREENSHOT=docs/review.png` also
saves the README's picture of the review screen.

Chromium comes from Debian (`apt-get install chromium`); Playwright's own browser download is
not used. Without it these tests fail, saying so.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, sync_playwright

from fhir_adapter.api.search import parse_query
from fhir_adapter.commands.demo import demo_launch_link, demo_settings, dev_ehr_setup
from fhir_adapter.samples import sample_export_dir
from fhir_adapter.service import build_service, dev_token
from fhir_adapter.settings import Settings
from fhir_adapter.store import Store, open_store, resources
from inference_server.triton_server import free_port
from mapping.fhir.codes import P_THERAPIST_QUOTE

pytestmark = pytest.mark.integration

CHROMIUM = Path(os.environ.get("HOMEWORK_FHIR_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOT = os.environ.get("HOMEWORK_FHIR_REVIEW_SCREENSHOT")
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
PATIENT, ENCOUNTER = "Patient/pat-1", "Encounter/enc-1-3"
HIDDEN = ("cancelled", "entered-in-error")
# Chromium reports a CSP violation on the console; this makes sure of it for every document
# (Playwright's init scripts run outside the page's CSP).
REPORT_CSP = """document.addEventListener("securitypolicyviolation", (e) =>
    console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI}`));"""


@dataclass
class Served:
    url: str
    launch: str  # the EHR launch URL `homework-fhir demo` prints
    store: Store
    token: str  # a development API token, as the demo prints


def demo_store(root: Path) -> None:
    """`homework-fhir demo --no-serve` into `root`: the samples backfilled with the model."""
    done = subprocess.run(
        [sys.executable, "-c", "from fhir_adapter.cli import main; main()", "demo",
         "--data-dir", str(root), "--no-serve"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@contextmanager
def serving(app: Any, port: int, what: str) -> Iterator[None]:
    """`app` under uvicorn on 127.0.0.1:`port` until the block ends."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120  # start-up opens the runtime (the in-process model)
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail(f"uvicorn did not start {what}")
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@contextmanager
def serve_demo(
    root: Path, configure: Callable[[Settings, str], Settings] | None = None
) -> Iterator[Served]:
    """The demo's app with the development EHR over a demo store in `root`; `configure`
    changes its settings (given the settings and the app's base URL) before it starts."""
    demo_store(root)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = demo_settings(root, port)
    if configure is not None:
        settings = configure(settings, base)
    service = build_service(*dev_ehr_setup(settings, base, sample_export_dir()))
    store = open_store(settings.database_url)
    try:
        with serving(service.app, port, "the demo's app"):
            yield Served(base, demo_launch_link(base), store, dev_token(settings, "system/*.read"))
    finally:
        store.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_demo(tmp_path_factory.mktemp("clinician")) as found:
        yield found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: the clinician app's browser tests need Debian's "
            "Chromium (apt-get install chromium), or HOMEWORK_FHIR_CHROMIUM=/path/to/chromium"
        )
    if not AXE.is_file():
        pytest.fail(f"axe-core is missing at {AXE}; see {AXE.parent / 'README.md'}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Watched:
    context: BrowserContext
    page: Page
    problems: list[str]  # console errors (CSP violations among them) and uncaught exceptions


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    """A fresh browser (no cookies) with the app's CSP in force, and what went wrong in it."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(REPORT_CSP)
    page = context.new_page()
    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        where = message.location.get("url", "")
        # Chromium asks every origin for /favicon.ico by itself; no page of ours links one.
        if message.type == "error" and not where.endswith("/favicon.ico"):
            problems.append(f"{message.text} ({where})")

    page.on("console", console)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on(
        "response",
        lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    try:
        yield Watched(context, page, problems)
    finally:
        context.close()


def tasks(store: Store, patient: str) -> list[dict[str, Any]]:
    """The patient's homework Tasks in the store (what a FHIR search would return)."""
    with store.session() as session:
        found, _ = resources.search(
            session, parse_query("Task", [("patient", patient), ("_count", "500")])
        )
    return [t for t in found if t["status"] not in HIDDEN]


def business(task: dict[str, Any]) -> str:
    return str(task["businessStatus"]["coding"][0]["code"])


def therapist_quote(task: dict[str, Any]) -> str:
    for entry in task.get("input", []):
        if "valueString" in entry and any(
            c.get("code") == P_THERAPIST_QUOTE for c in entry["type"].get("coding", [])
        ):
            return str(entry["valueString"])
    raise AssertionError(f"Task/{task['id']} has no therapist quote")


def launch_and_consent(page: Page, url: str, patient: str | None = None) -> None:
    """Open a launch URL and sign in at the development EHR (choosing `patient` when it asks);
    ends on the review screen."""
    page.goto(url)
    page.wait_for_selector("#dev-ehr")
    assert "/dev-ehr/authorize?" in page.url
    assert page.locator("#clinician").inner_text() == "Dr. Amara Okafor"
    if patient is not None:
        page.select_option("#patient", patient)
    page.click("#allow")
    page.wait_for_url(re.compile(r".*/smart/review$"))
    page.wait_for_selector("main#review")


def saved(page: Page, kind: str, what: str) -> None:
    """A decision's redirect landed on the review screen, saying what was saved."""
    page.wait_for_url(re.compile(rf".*/smart/review\?done={kind}$"))
    assert page.locator("#done").inner_text().startswith(f"Saved: {what}.")


def edit_item(page: Page, task: str, description: str, due: str) -> None:
    """Open the item's Edit, change description and due date, save (the real form)."""
    item = page.locator(f"#drafts li[data-task='{task}']")
    item.locator("details.edit summary").click()
    page.fill(f"#description-{task}", description)
    page.fill(f"#due-{task}", due)
    item.locator("details.edit button[type=submit]").click()
    saved(page, "edit", "edited")


def chart_ready(page: Page) -> None:
    page.wait_for_selector("canvas#trend-chart[data-state=ready]", timeout=15_000)


def test_ehr_launch_review_and_evidence(served: Served, watched: Watched, tmp_path: Path) -> None:
    page = watched.page
    launch_and_consent(page, served.launch)
    assert page.url == f"{served.url}/smart/review"
    assert page.locator("#patient").inner_text() == PATIENT
    assert page.locator("#encounter").inner_text() == ENCOUNTER
    assert page.locator("#user").inner_text().endswith("/Practitioner/prac-1")

    # This session's drafts: exactly the store's Tasks of enc-1-3, each labelled an AI draft.
    everything = tasks(served.store, PATIENT)
    session = sorted(
        (t for t in everything if t["encounter"]["reference"] == ENCOUNTER), key=lambda t: t["id"]
    )
    assert session, "the pipeline drafted no homework for enc-1-3"
    drafts = page.locator("#drafts > li.draft")
    shown = {
        drafts.nth(i).get_attribute("data-task"): drafts.nth(i).locator(".description").inner_text()
        for i in range(drafts.count())
    }
    assert shown == {t["id"]: t["description"] for t in session}
    for i in range(drafts.count()):
        label = drafts.nth(i).locator(".ai-label")
        assert label.is_visible() and label.inner_text() == "AI draft"
    assert all(any(c.get("code") == "AIAST" for c in t["meta"]["security"]) for t in session), (
        "the store's drafts should carry the AI-asserted security label"
    )

    # Earlier homework: the patient's Tasks of earlier sessions, with their review status.
    date = min(str(t["authoredOn"])[:10] for t in session)
    earlier = {
        t["id"]: business(t)
        for t in everything
        if t["encounter"]["reference"] != ENCOUNTER and str(t["authoredOn"])[:10] <= date
    }
    rows = page.locator("#earlier tbody tr")
    listed = {
        rows.nth(i).get_attribute("data-task"): rows.nth(i).locator(".review-status").inner_text()
        for i in range(rows.count())
    }
    assert listed == earlier
    assert "reviewed" in listed.values(), listed

    # The PHQ-9 / GAD-7 trend: a drawn chart, and the same numbers as text.
    chart_ready(page)
    assert page.locator("canvas#trend-chart").get_attribute("role") == "img"
    points = page.evaluate(
        "() => Chart.getChart(document.getElementById('trend-chart'))"
        ".data.datasets.map(d => [d.label, d.data.filter(v => v !== null)])"
    )
    table = page.locator("#trend-table tbody tr")
    as_text: dict[str, list[int]] = {}
    for i in range(table.count()):
        cells = table.nth(i).locator("th, td").all_inner_texts()
        as_text.setdefault(cells[0], []).append(int(cells[2]))
    assert as_text == {label: values for label, values in points if values}
    assert set(as_text) == {"PHQ-9", "GAD-7"}
    page.screenshot(path=tmp_path / "review.png", full_page=True)
    if SCREENSHOT:
        page.screenshot(path=SCREENSHOT, full_page=True)

    # The evidence link: the transcript around the quoted turn, that turn highlighted.
    first = session[0]
    page.click(f"#drafts li[data-task='{first['id']}'] a.evidence-link")
    page.wait_for_url(re.compile(rf".*/smart/review/tasks/{first['id']}#quoted$"))
    quoted = page.locator("#transcript li.turn.quoted")
    assert quoted.count() == 1 and quoted.get_attribute("id") == "quoted"
    said = " ".join(quoted.locator(".text").inner_text().split())
    assert " ".join(therapist_quote(first).split()) in said
    assert page.locator("#transcript li.turn").count() > 1  # with its context
    assert quoted.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(255, 243, 196)"
    assert quoted.is_visible() and page.locator("#evidence-problem").count() == 0
    page.screenshot(path=tmp_path / "evidence.png", full_page=True)

    page.click("#back")
    page.wait_for_selector("main#review")
    assert watched.problems == [], watched.problems


def test_standalone_launch(served: Served, watched: Watched, tmp_path: Path) -> None:
    page = watched.page
    # No iss, no launch: the connection marked standalone_default; the EHR asks for a patient.
    launch_and_consent(page, f"{served.url}/smart/launch", patient="pat-2")
    assert page.locator("#patient").inner_text() == "Patient/pat-2"
    mine = tasks(served.store, "Patient/pat-2")
    latest = max(mine, key=lambda t: (str(t["authoredOn"])[:10], t["id"]))
    encounter = latest["encounter"]["reference"]
    assert page.locator("#encounter").inner_text() == encounter  # the latest session
    shown = page.locator("#drafts > li.draft").evaluate_all("l => l.map(e => e.dataset.task)")
    assert sorted(shown) == sorted(
        t["id"] for t in mine if t["encounter"]["reference"] == encounter
    )
    chart_ready(page)
    page.screenshot(path=tmp_path / "standalone.png", full_page=True)
    assert watched.problems == [], watched.problems


def test_no_session_goes_to_launch(served: Served, watched: Watched, tmp_path: Path) -> None:
    """A page opened without a session (a bookmark, an expired session) starts a launch: the
    browser arrives at the EHR's sign-in, and signing in there brings it to the review."""
    page = watched.page
    for path in ("/smart/review/tasks/anything", "/smart/review"):
        page.goto(f"{served.url}{path}")
        page.wait_for_selector("#dev-ehr")
        assert "/dev-ehr/authorize?" in page.url
    page.screenshot(path=tmp_path / "no-session.png")
    page.select_option("#patient", "pat-2")
    page.click("#allow")
    page.wait_for_url(re.compile(r".*/smart/review$"))
    assert page.locator("#patient").inner_text() == "Patient/pat-2"
    assert watched.problems == [], watched.problems


def focusable_before_main(page: Page) -> int:
    return int(
        page.evaluate(
            """() => {
            const main = document.querySelector("main");
            const all = document.querySelectorAll(
                "a[href], button, input, select, textarea, [tabindex]");
            return Array.from(all).filter((e) => e.tabIndex >= 0 &&
                (main.compareDocumentPosition(e) & Node.DOCUMENT_POSITION_PRECEDING)).length;
        }"""
        )
    )


def test_keyboard_only(served: Served, watched: Watched, tmp_path: Path) -> None:
    page = watched.page
    launch_and_consent(page, served.launch)
    chart_ready(page)
    # Little before the main content (no skip link needed): sign-out alone, or a skip link.
    assert focusable_before_main(page) <= 2
    first_link = page.locator("#drafts a.evidence-link").first
    target = first_link.get_attribute("href")
    page.locator("body").focus()
    for presses in range(1, 30):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            """() => { const e = document.activeElement; const s = getComputedStyle(e);
                return { href: e.getAttribute("href"), visible: e.matches(":focus-visible"),
                         outline: s.outlineStyle, width: parseFloat(s.outlineWidth) }; }"""
        )
        # Every stop shows where the focus is.
        assert focused["visible"] and focused["outline"] != "none" and focused["width"] >= 2, (
            presses,
            focused,
        )
        if focused["href"] == target:
            break
    else:
        pytest.fail("Tab never reached the first evidence link")
    page.screenshot(path=tmp_path / "focus.png")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/smart/review/tasks/.+#quoted$"))
    quoted = page.locator("#quoted")
    assert quoted.is_visible() and quoted.evaluate(
        "e => { const r = e.getBoundingClientRect(); return r.top >= 0 && r.top < innerHeight; }"
    )
    # Back to the review by keyboard too.
    page.keyboard.press("Tab")
    back = page.evaluate("() => document.activeElement.id")
    if back != "back":  # focus starts after the quoted turn: go round once
        page.locator("body").focus()
        page.keyboard.press("Tab")
        back = page.evaluate("() => document.activeElement.id")
    assert back == "back"
    page.keyboard.press("Enter")
    page.wait_for_selector("main#review")
    assert watched.problems == [], watched.problems


def serious(page: Page) -> list[str]:
    """axe-core's serious and critical violations on the page, one line each."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document)")
    assert result["passes"], "axe checked nothing"
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + "; ".join(" ".join(n["target"]) for n in v["nodes"][:5])
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_accessibility_axe(
    served: Served, browser: Browser, watched: Watched, tmp_path: Path
) -> None:
    # The launch in a context that keeps the CSP; its cookies then go to an axe context.
    launch_and_consent(watched.page, served.launch)
    task = watched.page.locator("#drafts a.evidence-link").first.get_attribute("href")
    # bypass_csp for the axe run only: the CSP (script-src 'self') would refuse the injected
    # axe script. Everything above and in the other tests runs with the CSP in force.
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        found: dict[str, list[str]] = {}

        def check(name: str, url: str, ready: Callable[[Page], None] | None = None) -> None:
            page.goto(url)
            if ready is not None:
                ready(page)
            found[name] = serious(page)

        check("consent", served.launch, lambda p: p.wait_for_selector("#dev-ehr"))
        check("launch-error", f"{served.url}/smart/launch?iss=https%3A%2F%2Fother.example%2Ffhir")
        context.add_cookies(watched.context.cookies())
        check("review", f"{served.url}/smart/review", chart_ready)
        check("evidence", f"{served.url}{task}")
        check("dashboard-login", f"{served.url}/dashboard/login")
        page.fill("#token", served.token)
        page.click("button[type=submit]")
        page.wait_for_url(f"{served.url}/dashboard")
        page.wait_for_selector("#dashboard[data-state=ready]", timeout=15_000)
        found["dashboard"] = serious(page)
        page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
    finally:
        context.close()
    assert {k: v for k, v in found.items() if v} == {}
