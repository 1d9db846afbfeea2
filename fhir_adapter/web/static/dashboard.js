// The fidelity dashboard: reads /dashboard/api/* and draws the figures with Chart.js.
// Every number is also written as text into a table (screen readers, copying, tests), and all
// text goes in through textContent: task descriptions and quotes are never parsed as HTML.
"use strict";

(function () {
  const main = document.getElementById("dashboard");
  const base = main.dataset.base;
  const form = document.getElementById("filters");
  const statusLine = document.getElementById("status");
  const COLORS = { assignment: "#2563eb", review: "#059669", funnel: "#64748b",
                   phq9: "#7c3aed", gad7: "#d97706" };
  const STATUS_TEXT = { "reviewed": "reviewed", "not-reviewed": "not reviewed",
                        "awaiting-review": "awaiting review" };
  const charts = {};
  let current = null; // the last report

  Chart.defaults.animation = false;
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;

  function $(id) { return document.getElementById(id); }

  function percent(score) {
    return score === null || score === undefined ? "–" : (score * 100).toFixed(0) + "%";
  }

  function fraction(figure, noun) {
    return figure.numerator + " of " + figure.denominator + " " + noun;
  }

  function cell(row, text, header) {
    const td = document.createElement(header ? "th" : "td");
    if (header) td.scope = "row";
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function drillButton(row, label, spec) {
    const td = document.createElement("td");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "drill";
    button.textContent = "Tasks";
    button.setAttribute("aria-label", "Show the tasks: " + label);
    button.addEventListener("click", () => drill(spec));
    td.appendChild(button);
    row.appendChild(td);
  }

  function filterParams() {
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(form)) {
      if (value) params.set(name, value);
    }
    return params;
  }

  async function getJSON(path, params) {
    const response = await fetch(base + path + "?" + params.toString(), {
      headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (response.status === 401) {
      window.location.assign(base + "/login");
      throw new Error("the session has ended; log in again");
    }
    const body = await response.json();
    if (!response.ok) {
      const issue = (body.issue || [])[0] || {};
      throw new Error(issue.diagnostics || ("request failed: " + response.status));
    }
    return body;
  }

  function chart(id, config) {
    if (charts[id]) {
      charts[id].data = config.data;
      charts[id].update();
      return charts[id];
    }
    config.options = Object.assign({ responsive: true, maintainAspectRatio: false }, config.options);
    charts[id] = new Chart($(id), config);
    return charts[id];
  }

  const rateAxis = { min: 0, max: 1, ticks: { callback: (v) => percent(v) } };
  const rateTooltip = { callbacks: { label: (c) => c.dataset.label + ": " + percent(c.raw) } };

  function fillTable(id, rows, build) {
    const body = $(id).tBodies[0];
    body.replaceChildren();
    for (const item of rows) {
      const row = document.createElement("tr");
      build(row, item);
      body.appendChild(row);
    }
  }

  // Strata of both measures, joined by code: [{code, display, assignment, review}].
  function joined(report, name) {
    const byCode = new Map();
    for (const [measure, key] of [["assignment", "assignment"], ["review", "review"]]) {
      for (const s of report[measure].strata[name] || []) {
        const entry = byCode.get(s.code) || { code: s.code, display: s.display };
        entry[key] = s;
        byCode.set(s.code, entry);
      }
    }
    return Array.from(byCode.values());
  }

  function figureText(figure, noun) {
    return figure ? percent(figure.score) + " (" + fraction(figure, noun) + ")" : "–";
  }

  function renderTiles(report) {
    $("assignment-rate").textContent = percent(report.assignment.score);
    $("assignment-counts").textContent =
      fraction(report.assignment, "sessions set homework");
    $("review-rate").textContent = percent(report.review.score);
    $("review-counts").textContent =
      fraction(report.review, "tasks with a next session were reviewed there");
    const phq9 = report.outcomes.association.phq9;
    $("phq9-rho").textContent = phq9.rho === null ? "–" : "ρ " + phq9.rho.toFixed(2);
    $("phq9-interval").textContent = associationText("Spearman", phq9) + "; observational";
  }

  // "ρ -0.40 (95% interval -0.90 to 0.50), n = 12 patients", or why there is no rho or interval.
  function associationText(name, a) {
    const n = "n = " + a.n + (a.n === 1 ? " patient" : " patients");
    if (a.rho === null) {
      return name + ": not computable, " + n +
        " (rho needs 3 patients with scores, and review rates and changes that vary)";
    }
    let interval = " (no interval: ρ is ±1)";
    if (a.low !== null && a.high !== null) {
      interval = " (95% interval " + a.low.toFixed(2) + " to " + a.high.toFixed(2) + ")";
    } else if (a.n < 4) {
      interval = " (no interval: it needs 4 patients)";
    }
    return name + ": ρ " + a.rho.toFixed(2) + interval + ", " + n;
  }

  function renderMonths(report) {
    const months = joined(report, "month").sort((a, b) => a.code.localeCompare(b.code));
    chart("chart-month", {
      type: "line",
      data: {
        labels: months.map((m) => m.code),
        datasets: [
          { label: "Assignment rate", data: months.map((m) => m.assignment ? m.assignment.score : null),
            borderColor: COLORS.assignment, backgroundColor: COLORS.assignment, spanGaps: true,
            pointRadius: 5, clip: 8 },
          { label: "Review rate", data: months.map((m) => m.review ? m.review.score : null),
            borderColor: COLORS.review, backgroundColor: COLORS.review, spanGaps: true,
            pointRadius: 5, clip: 8 },
        ],
      },
      options: { scales: { y: rateAxis }, plugins: { tooltip: rateTooltip },
                 onClick: (event, elements) => {
                   if (elements.length) {
                     const m = months[elements[0].index];
                     drill({ month: m.code, label: "set in " + m.code });
                   }
                 } },
    });
    fillTable("table-month", months, (row, m) => {
      row.dataset.code = m.code;
      cell(row, m.code, true);
      cell(row, figureText(m.assignment, "sessions"));
      cell(row, figureText(m.review, "tasks"));
    });
  }

  function renderStrata(report, name, chartId, tableId, what) {
    const strata = joined(report, name);
    const spec = (s, dataset) => {
      const key = name === "practitioner" ? { practitioner: s.code } : { category: s.code };
      if (name === "practitioner" && !s.code.startsWith("Practitioner/")) return null;
      return dataset === 1
        ? Object.assign(key, { status: "followed-up", label: s.display + ", tasks with a next session" })
        : Object.assign(key, { label: s.display + ", all tasks set" });
    };
    chart(chartId, {
      type: "bar",
      data: {
        labels: strata.map((s) => s.display),
        datasets: [
          { label: "Assignment rate", data: strata.map((s) => s.assignment ? s.assignment.score : null),
            backgroundColor: COLORS.assignment },
          { label: "Review rate", data: strata.map((s) => s.review ? s.review.score : null),
            backgroundColor: COLORS.review },
        ],
      },
      options: { scales: { y: rateAxis }, plugins: { tooltip: rateTooltip },
                 onClick: (event, elements) => {
                   if (!elements.length) return;
                   const target = spec(strata[elements[0].index], elements[0].datasetIndex);
                   if (target) drill(target);
                 } },
    });
    fillTable(tableId, strata, (row, s) => {
      row.dataset.code = s.code;
      cell(row, s.display, true);
      cell(row, figureText(s.assignment, "sessions"));
      cell(row, figureText(s.review, "tasks"));
      const target = spec(s, 0);
      if (target) drillButton(row, s.display + " (" + what + ")", target);
      else cell(row, "");
    });
  }

  function renderFunnel(report) {
    const stages = report.funnel;
    chart("chart-funnel", {
      type: "bar",
      data: {
        labels: stages.map((s) => s.label),
        datasets: [{ label: "Count", data: stages.map((s) => s.count),
                     backgroundColor: COLORS.funnel }],
      },
      options: { indexAxis: "y", plugins: { legend: { display: false } },
                 scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } },
    });
    fillTable("table-funnel", stages, (row, s) => {
      row.dataset.stage = s.stage;
      cell(row, s.label, true);
      cell(row, String(s.count));
    });
  }

  function scoreText(score) {
    if (!score) return "–";
    const sign = score.change > 0 ? "+" : "";
    return score.first.value + " → " + score.last.value + " (" + sign + score.change + "; " +
      score.first.date + " to " + score.last.date + ")";
  }

  function renderOutcomes(report) {
    const outcomes = report.outcomes;
    const points = (key) => outcomes.courses
      .filter((c) => c.review_rate !== null && c[key])
      .map((c) => ({ x: c.review_rate, y: c[key].change, patient: c.patient }));
    chart("chart-outcome", {
      type: "scatter",
      data: { datasets: [
        { label: "PHQ-9 change", data: points("phq9"), backgroundColor: COLORS.phq9,
          pointRadius: 6, clip: 8 },
        { label: "GAD-7 change", data: points("gad7"), backgroundColor: COLORS.gad7,
          pointRadius: 6, pointStyle: "rectRot", clip: 8 },
      ] },
      options: {
        layout: { padding: { right: 8 } },
        scales: {
          x: Object.assign({ title: { display: true, text: "Share of tasks reviewed" } }, rateAxis),
          y: { grace: 1, ticks: { precision: 0 },
               title: { display: true, text: "Change in score, first to last (lower is better)" } },
        },
        plugins: { tooltip: { callbacks: { label: (c) =>
          c.raw.patient + ": reviewed " + percent(c.raw.x) + ", " + c.dataset.label + " " + c.raw.y } } },
      },
    });
    const list = $("association");
    list.replaceChildren();
    for (const [key, name] of [["phq9", "PHQ-9"], ["gad7", "GAD-7"]]) {
      const a = outcomes.association[key];
      const item = document.createElement("li");
      item.dataset.instrument = key;
      item.textContent = associationText(name + " change vs review rate, Spearman", a);
      list.appendChild(item);
    }
    $("caveats").textContent = outcomes.caveats;
    fillTable("table-outcome", outcomes.courses, (row, c) => {
      row.dataset.patient = c.patient;
      cell(row, c.patient, true);
      cell(row, c.tasks_reviewable ? c.tasks_reviewed + " of " + c.tasks_reviewable : "–");
      cell(row, scoreText(c.phq9));
      cell(row, scoreText(c.gad7));
    });
  }

  function periodText(params) {
    const from = params.get("from"), to = params.get("to");
    if (!from && !to) return "all time";
    return (from || "the first session") + " to " + (to || "the last session");
  }

  async function load() {
    const params = filterParams();
    main.dataset.state = "loading";
    statusLine.textContent = "Loading…";
    $("drill").hidden = true;
    history.replaceState(null, "", params.toString() ? "?" + params.toString() : base);
    try {
      const report = await getJSON("/api/report", params);
      current = report;
      $("period").textContent = periodText(params);
      renderTiles(report);
      renderMonths(report);
      renderStrata(report, "practitioner", "chart-practitioner", "table-practitioner",
                   "therapist");
      renderStrata(report, "category", "chart-category", "table-category", "category");
      renderFunnel(report);
      renderOutcomes(report);
      statusLine.textContent = "";
      main.dataset.state = "ready";
    } catch (error) {
      statusLine.textContent = "Could not load the figures: " + error.message;
      main.dataset.state = "error";
    }
  }

  async function drill(spec) {
    const section = $("drill");
    const params = filterParams();
    for (const key of ["practitioner", "category", "status", "month"]) {
      if (spec[key]) params.set(key, spec[key]);
    }
    section.hidden = false;
    section.dataset.state = "loading";
    $("drill-title").textContent = "Tasks: " + spec.label;
    $("drill-summary").textContent = "Loading…";
    try {
      const found = await getJSON("/api/tasks", params);
      fillTable("drill-table", found.tasks, (row, t) => {
        row.dataset.task = t.id;
        cell(row, t.date);
        cell(row, t.practitioner);
        cell(row, t.patient);
        cell(row, t.category_display);
        cell(row, t.description);
        cell(row, STATUS_TEXT[t.status] || t.status).className = "status-" + t.status;
        cell(row, t.review_quote);
      });
      $("drill-summary").textContent = found.total === found.tasks.length
        ? found.total + (found.total === 1 ? " task" : " tasks") + ", " + periodText(params)
        : "The first " + found.tasks.length + " of " + found.total + " tasks";
      $("drill-search").textContent = found.search;
      section.dataset.state = "ready";
      $("drill-title").focus();
    } catch (error) {
      $("drill-summary").textContent = "Could not load the tasks: " + error.message;
      section.dataset.state = "error";
    }
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); load(); });
  $("reset").addEventListener("click", () => { form.reset(); load(); });
  $("drill-all").addEventListener("click", () => drill({ label: "all tasks set" }));
  $("drill-followed-up").addEventListener("click",
    () => drill({ status: "followed-up", label: "tasks with a next session" }));

  // Filters in the address (a reload or a shared link shows the same view).
  const given = new URLSearchParams(window.location.search);
  for (const name of ["from", "to", "clinic", "practitioner"]) {
    if (given.get(name) && form.elements[name]) form.elements[name].value = given.get(name);
  }
  load();
})();
