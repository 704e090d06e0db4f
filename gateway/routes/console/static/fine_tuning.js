// Fine-tuning: upload a file (its validation result), start a job (from a base model, or continuing a fine-tuned
// one), and watch it live: status, its lineage (base -> parents -> job -> checkpoints), the loss curve from its
// metrics events, checkpoints, the eval runs on its models, cancel. Everything through the OpenAI APIs.
"use strict";
(function () {
  const api = (path, init) => llmaas.call("/v1" + path, init);
  const $ = (id) => document.getElementById(id);
  const cell = (row, text) => { const td = row.insertCell(); td.textContent = text; return td; };
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);
  let watched = null, timer = null, chart = null;

  async function loadChoices() {
    const models = await api("/models");
    $("base-model").replaceChildren(...models.data.map((m) => new Option(m.id, m.id)));
    const files = await api("/files?purpose=fine-tune");
    $("training-file").replaceChildren(...files.data.map((f) => new Option(`${f.filename} (${f.id})`, f.id)));
  }

  async function loadJobs() {
    const jobs = await api("/fine_tuning/jobs?limit=20");
    const body = $("jobs").tBodies[0];
    body.replaceChildren();
    $("jobs-empty").hidden = jobs.data.length > 0;
    $("jobs").hidden = jobs.data.length === 0;
    for (const job of jobs.data) {
      const row = body.insertRow();
      row.dataset.jobId = job.id;
      const link = document.createElement("a");
      link.href = "#"; link.textContent = job.id;
      link.addEventListener("click", (event) => { event.preventDefault(); watch(job.id); });
      row.insertCell().appendChild(link);
      cell(row, job.status); cell(row, job.model); cell(row, job.fine_tuned_model || "–");
      cell(row, new Date(job.created_at * 1000).toISOString().slice(0, 16).replace("T", " "));
    }
  }

  // Why a job has no loss curve, said instead of an empty chart.
  const NO_STEPS = {
    cancelled: "The job was cancelled before its first training step: there is no loss curve.",
    failed: "The job failed before its first training step: there is no loss curve (the events say why).",
  };

  function drawLoss(points, status) {
    const steps = points.map((p) => p.step);
    const series = [{ label: "step" }, { label: "training loss", stroke: "#1f6feb", width: 2 }];
    const values = [steps, points.map((p) => p.train_loss)];
    if (points.some((p) => p.valid_loss !== undefined)) {
      series.push({ label: "validation loss", stroke: "#cf222e", width: 2 });
      values.push(points.map((p) => (p.valid_loss === undefined ? null : p.valid_loss)));
    }
    const box = $("loss-chart");
    if (chart) chart.destroy();
    chart = null;
    box.replaceChildren();
    box.hidden = !points.length;
    $("no-steps").hidden = points.length > 0;
    $("no-steps").textContent = NO_STEPS[status] || "No training steps yet: the curve starts with the first one.";
    if (!points.length) return;
    chart = new uPlot({ width: Math.max(280, box.clientWidth), height: 240, series,
      scales: { x: { time: false } }, axes: [{ label: "step" }, { size: 60 }] }, values, box);
  }

  function showLineage(job, checkpoints) {
    const lineage = job.lineage || { base_model: job.model, parents: [] };
    const chain = [lineage.base_model, ...lineage.parents.slice().reverse(), job.id];
    if (job.fine_tuned_model) chain.push(job.fine_tuned_model);
    if (checkpoints.length) chain.push(`${checkpoints.length} checkpoint${checkpoints.length > 1 ? "s" : ""}`);
    $("job-lineage").textContent = chain.join(" → ");
  }

  async function showEvalRuns(models) {
    const rows = [];
    if (models.size) {
      for (const evaluation of (await api("/evals?limit=20")).data) {
        for (const run of (await api(`/evals/${evaluation.id}/runs?limit=100`)).data) {
          if (!models.has(run.model)) continue;
          const row = document.createElement("tr");
          const c = run.result_counts;
          cell(row, evaluation.name || evaluation.id); cell(row, run.name || run.id); cell(row, run.model);
          cell(row, c.total ? `${((100 * c.passed) / c.total).toFixed(1)} %` : "–").className = "num";
          rows.push(row);
        }
      }
    }
    $("job-evals").tBodies[0].replaceChildren(...rows);
  }

  async function refresh() {
    if (!watched) return;
    const job = await api(`/fine_tuning/jobs/${watched}`);
    $("job-status").textContent = job.status;
    $("cancel").hidden = FINAL.has(job.status);
    const events = await api(`/fine_tuning/jobs/${watched}/events?limit=100`);
    const ordered = events.data.slice().reverse();
    $("events").replaceChildren(...ordered.map((e) => {
      const item = document.createElement("li");
      item.textContent = `${new Date(e.created_at * 1000).toISOString().slice(11, 19)} ${e.message}`;
      return item;
    }));
    const points = ordered.filter((e) => e.type === "metrics" && e.data).map((e) => e.data);
    drawLoss(points, job.status);
    const last = points[points.length - 1];
    $("job-progress").textContent = last ? `step ${last.step} of ${last.total_steps}` : "";
    const checkpoints = await api(`/fine_tuning/jobs/${watched}/checkpoints`);
    $("checkpoints").tBodies[0].replaceChildren(...checkpoints.data.map((c) => {
      const row = document.createElement("tr");
      cell(row, c.step_number); cell(row, c.fine_tuned_model_checkpoint);
      cell(row, c.metrics.train_loss !== undefined ? c.metrics.train_loss.toFixed(4) : "–").className = "num";
      cell(row, c.metrics.valid_loss !== undefined ? c.metrics.valid_loss.toFixed(4) : "–").className = "num";
      return row;
    }));
    showLineage(job, checkpoints.data);
    document.body.dataset.jobStatus = job.status;
    document.body.dataset.lossPoints = String(points.length);
    if (FINAL.has(job.status)) {
      clearInterval(timer); timer = null; loadJobs();
      const models = new Set(checkpoints.data.map((c) => c.fine_tuned_model_checkpoint));
      if (job.fine_tuned_model) models.add(job.fine_tuned_model);
      await showEvalRuns(models);
    }
  }

  function watch(jobId) {
    watched = jobId;
    $("job").hidden = false;
    $("job-id").textContent = jobId;
    if (timer) clearInterval(timer);
    timer = setInterval(() => refresh().catch((e) => ($("job-progress").textContent = e.message)), 1000);
    refresh();
  }

  $("upload").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", $("file").files[0]);
    try {
      const file = await api("/files", { method: "POST", body: form });
      await loadChoices();
      $("training-file").value = file.id;
      // Said once the file can be chosen: a click on "start" right after it trains this file.
      $("upload-result").className = "";
      $("upload-result").textContent = `${file.filename}: valid, ${file.bytes} bytes (${file.id})`;
      $("jobs-empty-job").textContent = $("jobs-empty-job").textContent.replace(/"file-[^"]*"|"FILE_ID"/, `"${file.id}"`);
    } catch (error) {
      $("upload-result").className = "error";
      $("upload-result").textContent = error.message;
    }
    document.body.dataset.uploaded = "true";
  });

  $("start").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("start-result").textContent = "";
    const body = { model: $("base-model").value, training_file: $("training-file").value };
    if ($("suffix").value) body.suffix = $("suffix").value;
    if ($("epochs").value) body.hyperparameters = { n_epochs: Number($("epochs").value) };
    try {
      const job = await api("/fine_tuning/jobs", { method: "POST", body });
      await loadJobs();
      watch(job.id);
    } catch (error) {
      $("start-result").textContent = error.message;
    }
  });

  $("cancel").addEventListener("click", async () => {
    try {
      if (watched) $("job-status").textContent = (await api(`/fine_tuning/jobs/${watched}/cancel`, { method: "POST" })).status;
    } catch (error) { $("job-progress").textContent = error.message; }
    refresh();
  });

  Promise.all([loadChoices(), loadJobs()]).then(() => (document.body.dataset.ready = "true"));
})();
