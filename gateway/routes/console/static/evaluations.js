// Evaluations (the Evals API): an eval's runs side by side, with the accuracy of each model.
"use strict";
(function () {
  const api = (path) => llmaas.call("/v1" + path);
  const $ = (id) => document.getElementById(id);
  let chart = null;
  const percent = (passed, total) => (total ? (100 * passed) / total : 0);

  async function showRuns(evalId) {
    const runs = (await api(`/evals/${evalId}/runs?limit=100&order=asc`)).data;
    $("runs").tBodies[0].replaceChildren(...runs.map((run) => {
      const row = document.createElement("tr");
      const c = run.result_counts;
      const perCriterion = run.per_testing_criteria_results
        .map((r) => `${r.testing_criteria} ${Math.round(percent(r.passed, r.passed + r.failed))} %`).join(", ");
      for (const text of [run.name || run.id, run.model, run.status, `${percent(c.passed, c.total).toFixed(1)} %`,
                          c.passed, c.failed, c.errored, perCriterion]) row.insertCell().textContent = text;
      row.cells[3].className = row.cells[4].className = row.cells[5].className = row.cells[6].className = "num";
      return row;
    }));
    const box = $("accuracy-chart");
    if (chart) chart.destroy();
    box.replaceChildren();
    $("runs-empty").hidden = runs.length > 0;
    box.hidden = $("runs").hidden = runs.length === 0;
    const call = $("runs-empty-call");
    call.textContent = call.textContent.replace(/\/v1\/evals\/[^/]*\/runs/, `/v1/evals/${evalId}/runs`);
    document.body.dataset.runsShown = String(runs.length);
    if (!runs.length) return;
    const x = runs.map((_, i) => i + 1);
    chart = new uPlot({
      width: Math.max(280, box.clientWidth), height: 220,
      scales: { x: { time: false, range: [0.5, runs.length + 0.5] }, y: { range: [0, 100] } },
      series: [{}, { label: "accuracy %", stroke: "#1f6feb", fill: "#1f6feb88", paths: uPlot.paths.bars({ size: [0.5, 80] }) }],
      axes: [{ splits: () => x, values: (_, ticks) => ticks.map((t) => (runs[t - 1] ? `${runs[t - 1].name || runs[t - 1].id} · ${runs[t - 1].model}` : "")) }, { size: 50 }],
    }, [x, runs.map((r) => percent(r.result_counts.passed, r.result_counts.total))], box);
  }

  api("/evals?limit=100").then(async (evals) => {
    $("eval-empty").hidden = evals.data.length > 0;
    $("eval-picker").hidden = $("runs-card").hidden = evals.data.length === 0;
    $("eval").replaceChildren(...evals.data.map((e) => new Option(e.name || e.id, e.id)));
    $("eval").addEventListener("change", () => showRuns($("eval").value));
    if (evals.data.length) await showRuns(evals.data[0].id);
    document.body.dataset.ready = "true";
  });
})();
