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
  // The percentiles are since start; a chart of them sampled every 2 s shows where they go.
  const samples = [[], [], [], []];
  let chart = null;
  function plot(s) {
    samples[0].push(Date.now() / 1000);
    samples[1].push(s.latency_p50_seconds === null ? null : s.latency_p50_seconds * 1000);
    samples[2].push(s.latency_p99_seconds === null ? null : s.latency_p99_seconds * 1000);
    samples[3].push(s.ttft_p50_seconds === null ? null : s.ttft_p50_seconds * 1000);
    if (samples[0].length > 300) samples.forEach((series) => series.shift());
    const box = $("latency-chart");
    if (!chart) {
      chart = new uPlot({
        width: Math.max(280, box.clientWidth), height: 220,
        series: [{}, { label: "latency p50 (ms)", stroke: "#1f6feb", width: 2 },
                 { label: "latency p99 (ms)", stroke: "#cf222e", width: 2 }, { label: "TTFT p50 (ms)", stroke: "#2da44e", width: 2 }],
        axes: [{}, { size: 60 }],
      }, samples, box);
    } else {
      chart.setData(samples);
    }
  }
  async function refresh() {
    const response = await fetch("/console/admin/service.json");
    if (!response.ok) return;
    const s = await response.json();
    $("running").textContent = s.engine.requests_running ?? "–";
    $("waiting").textContent = s.engine.requests_waiting ?? "–";
    $("kv").textContent = s.engine.kv_cache_usage === undefined ? "–" : `${(s.engine.kv_cache_usage * 100).toFixed(1)} %`;
    $("requests").textContent = s.generation_requests;
    $("error-rate").textContent = `${(s.error_rate * 100).toFixed(2)} % (${s.server_errors})`;
    $("latency").textContent = [s.latency_p50_seconds, s.latency_p95_seconds, s.latency_p99_seconds].map(ms).join(" / ");
    $("ttft").textContent = [s.ttft_p50_seconds, s.ttft_p95_seconds, s.ttft_p99_seconds].map(ms).join(" / ");
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
    plot(s);
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  }
  refresh();
  setInterval(refresh, 2000);
})();
