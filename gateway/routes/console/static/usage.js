// The usage page's charts (uPlot): tokens per day by model, and this month's running total against the budget.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("usage-data").textContent);
  const rows = data.by_model;
  const days = [];  // every day of the month so far, with or without requests
  for (let t = Date.parse(data.first_day + "T00:00:00Z"); t <= Date.parse(data.last_day + "T00:00:00Z"); t += 864e5) {
    days.push(new Date(t).toISOString().slice(0, 10));
  }
  const models = Array.from(new Set(rows.map((r) => r.model))).sort();
  const daily = document.getElementById("chart-daily");
  const cumulative = document.getElementById("chart-cumulative");
  const costBox = document.getElementById("chart-cost");
  if (!rows.length) {
    daily.textContent = cumulative.textContent = costBox.textContent = "No requests yet this month.";
    return;
  }
  const x = days.map((d) => Date.parse(d + "T00:00:00Z") / 1000);
  const perModel = models.map((m) => days.map((d) => {
    const row = rows.find((r) => r.period_start === d && r.model === m);
    return row ? row.total_tokens : 0;
  }));
  const colors = ["#1f6feb", "#2da44e", "#d4a72c", "#cf222e", "#8250df", "#1b7c83"];
  const width = () => Math.max(280, daily.clientWidth);
  const bars = uPlot.paths.bars({ size: [0.6, 60] });
  const dailyPlot = new uPlot({
    width: width(), height: 240,
    series: [{}, ...models.map((m, i) => ({ label: m, stroke: colors[i % colors.length],
      fill: colors[i % colors.length] + "88", paths: bars }))],
    axes: [{}, { size: 70 }],
  }, [x, ...perModel], daily);
  let running = 0;
  const totals = days.map((d, i) => (running += perModel.reduce((sum, series) => sum + series[i], 0)));
  const series = [{}, { label: "tokens", stroke: "#1f6feb", width: 2 }];
  const values = [x, totals];
  if (data.budget) {
    series.push({ label: "budget", stroke: "#cf222e", dash: [6, 4] });
    values.push(days.map(() => data.budget));
  }
  const cumulativePlot = new uPlot({ width: width(), height: 240, series, axes: [{}, { size: 70 }] }, values, cumulative);
  let spent = 0;
  const costs = days.map((d) => (spent += rows.filter((r) => r.period_start === d).reduce((sum, r) => sum + Number(r.cost), 0)));
  const costSeries = [{}, { label: "cost (USD)", stroke: "#2da44e", width: 2 }];
  const costValues = [x, costs];
  if (data.cost_budget !== null) {
    costSeries.push({ label: "budget (USD)", stroke: "#cf222e", dash: [6, 4] });
    costValues.push(days.map(() => data.cost_budget));
  }
  const costPlot = new uPlot({ width: width(), height: 240, series: costSeries, axes: [{}, { size: 70 }] }, costValues, costBox);
  window.addEventListener("resize", () => {
    for (const plot of [dailyPlot, cumulativePlot, costPlot]) plot.setSize({ width: width(), height: 240 });
  });
  document.body.dataset.chartsDrawn = "true";
})();
