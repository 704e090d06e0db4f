// The operator's view of the service, polled every 2 s from /console/admin/service.json.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const ms = (s) => (s === null || s === undefined ? "–" : `${Math.round(s * 1000)} ms`);
  const row = (table, cells) => {
    const tr = document.createElement("tr");
    for (const text of cells) tr.insertCell().textContent = text;
    return tr;
  };
  const trio = (w, kind) => [50, 95, 99].map((q) => ms(w[`${kind}_p${q}_seconds`])).join(" / ");
  const count = (n, requests) => (requests ? `${n} (${((n / requests) * 100).toFixed(1)} %)` : String(n));
  // Each of the last 15 minutes (every gateway), charted per minute: ticks read as clock times.
  let chart = null;
  function plot(minutes) {
    const box = $("latency-chart");
    const x = minutes.map((m) => m.minute);
    const inMs = (field) => minutes.map((m) => (m[field] === null ? null : m[field] * 1000));
    const data = [x, inMs("latency_p50_seconds"), inMs("latency_p99_seconds"), inMs("ttft_p50_seconds")];
    if (chart) {
      chart.setData(data);
      return;
    }
    const charts = window.consoleCharts;
    chart = charts.draw(box, {
      height: 220,
      series: [{}, { label: "latency p50 (ms)", stroke: "#1f6feb", width: 2 },
               { label: "latency p99 (ms)", stroke: "#cf222e", width: 2 }, { label: "TTFT p50 (ms)", stroke: "#2da44e", width: 2 }],
      axes: [charts.minuteAxis(box), { size: 60 }],
    }, data);
  }
  async function refresh() {
    const response = await fetch("/console/admin/service.json");
    if (!response.ok) return;
    const s = await response.json();
    $("running").textContent = s.engine.requests_running ?? "–";
    $("waiting").textContent = s.engine.requests_waiting ?? "–";
    $("kv").textContent = s.engine.kv_cache_usage === undefined ? "–" : `${(s.engine.kv_cache_usage * 100).toFixed(1)} %`;
    $("windows").tBodies[0].replaceChildren(...s.recent.windows.map((w) => row("windows", [
      `${w.minutes} min`, w.requests, w.answered, count(w.refused, w.requests), count(w.server_error, w.requests),
      count(w.disconnected, w.requests), trio(w, "latency"), trio(w, "ttft"),
    ])));
    $("tokens").textContent = `${s.tokens.prompt} / ${s.tokens.completion}`;
    $("replicas-card").hidden = s.replicas.length === 0;
    $("replicas").tBodies[0].replaceChildren(...s.replicas.map((r) => row("replicas", [
      r.url, r.available ? "yes" : "no", r.requests_in_flight, r.requests_waiting,
      `${((r.kv_cache_usage || 0) * 100).toFixed(1)} %`, r.adapters_loaded,
    ])));
    $("fair-queue").tBodies[0].replaceChildren(...s.queue.map((q) => row("fair-queue", [
      q.priority_class, q.waiting, ms(q.wait_p50_seconds), ms(q.wait_p99_seconds),
    ])));
    $("queue").tBodies[0].replaceChildren(...s.fine_tuning_queue.map((j) => row("queue", [
      j.id, j.tenant_name, j.status, j.model, new Date(j.created_at * 1000).toISOString().slice(0, 16).replace("T", " "),
    ])));
    plot(s.recent.minutes);
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  }
  refresh();
  setInterval(refresh, 2000);
})();
