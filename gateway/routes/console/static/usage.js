// Both usage pages' charts (the tenant's by model, the operator's by tenant), from the page's usage-data: tokens
// per day per series, and the month's running tokens and cost against the budgets — every day from the 1st to
// today. A month whose requests were all billed at no price shows no cost chart (the page's note says why).
"use strict";
(function () {
  const charts = window.consoleCharts;
  const data = JSON.parse(document.getElementById("usage-data").textContent);
  const rows = data.series;
  const daily = document.getElementById("chart-daily");
  const cumulative = document.getElementById("chart-cumulative");
  const costBox = document.getElementById("chart-cost");
  if (!rows.length) {
    daily.textContent = cumulative.textContent = costBox.textContent = "No requests yet this month.";
    return;
  }
  const x = charts.days(data.first_day, data.last_day);
  const days = x.map((t) => new Date(t * 1000).toISOString().slice(0, 10));
  const labels = Array.from(new Set(rows.map((r) => r.label))).sort();
  const sumOf = (day, label, field) => rows.filter((r) => r.period_start === day && (label === null || r.label === label))
    .reduce((sum, r) => sum + Number(r[field]), 0);
  const perSeries = labels.map((label) => days.map((d) => sumOf(d, label, "total_tokens")));
  const dayChart = (box, series, values) => charts.draw(box, {
    scales: { x: charts.dayScale(x) }, series: [{}, ...series], axes: [charts.dayAxis(box), { size: 70 }],
  }, [x, ...values]);
  const bars = uPlot.paths.bars({ size: [0.6, 60] });
  dayChart(daily, labels.map((label, i) => ({ label, stroke: charts.colors[i % charts.colors.length],
    fill: charts.colors[i % charts.colors.length] + "88", paths: bars })), perSeries);
  const running = (field) => { let total = 0; return days.map((d) => (total += sumOf(d, null, field))); };
  const flat = (value) => days.map(() => value);
  const tokens = [running("total_tokens")];
  const tokenSeries = [{ label: "tokens", stroke: "#1f6feb", width: 2 }];
  if (data.budget) {
    tokenSeries.push({ label: "budget", stroke: "#cf222e", dash: [6, 4] });
    tokens.push(flat(data.budget));
  }
  dayChart(cumulative, tokenSeries, tokens);
  const cost = running("cost");
  if (cost[cost.length - 1] === 0 && data.unpriced.length) {
    costBox.textContent = "Nothing to chart: every request this month was billed at no price.";
  } else {
    const costSeries = [{ label: "cost (USD)", stroke: "#2da44e", width: 2 }];
    const costs = [cost];
    if (data.cost_budget !== null) {
      costSeries.push({ label: "budget (USD)", stroke: "#cf222e", dash: [6, 4] });
      costs.push(flat(data.cost_budget));
    }
    dayChart(costBox, costSeries, costs);
  }
  document.body.dataset.chartsDrawn = "true";
})();
