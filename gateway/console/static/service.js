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
    $("queue").tBodies[0].replaceChildren(...s.fine_tuning_queue.map((j) => row("queue", [
      j.id, j.tenant_name, j.status, j.model, new Date(j.created_at * 1000).toISOString().slice(0, 16).replace("T", " "),
    ])));
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  }
  refresh();
  setInterval(refresh, 2000);
})();
