// The PHQ-9 / GAD-7 trend on the review screen (data from #trend-data; no inline script).
(function () {
  "use strict";
  const data = document.getElementById("trend-data");
  const canvas = document.getElementById("trend-chart");
  if (!data || !canvas || typeof Chart === "undefined") return;
  const series = JSON.parse(data.textContent);
  const dates = Array.from(new Set(Object.values(series).flat().map((p) => p.date))).sort();
  const colours = { "PHQ-9": "#1a5fb4", "GAD-7": "#c64600" };
  new Chart(canvas, {
    type: "line",
    data: {
      labels: dates,
      datasets: Object.entries(series).map(([name, points]) => ({
        label: name,
        data: dates.map((d) => { const p = points.find((q) => q.date === d); return p ? p.value : null; }),
        borderColor: colours[name], backgroundColor: colours[name], spanGaps: true,
      })),
    },
    options: { maintainAspectRatio: false, animation: false, scales: { y: { beginAtZero: true, suggestedMax: 27 } } },
  });
  canvas.dataset.state = "ready";
})();
