// The tenant's models (the OpenAI models API): base models, fine-tuned ones (what each was trained from, and
// by which job) that can be deleted, and aliases.
"use strict";
(function () {
  const api = (path, method = "GET") => llmaas.call("/v1" + path, { method });
  const body = document.querySelector("#models tbody");
  async function load() {
    const models = await api("/models");
    body.replaceChildren();
    for (const model of models.data) {
      const row = body.insertRow();
      row.dataset.model = model.id;
      const fineTuned = model.id.startsWith("ft:");
      const kind = model.targets ? `alias of ${model.targets.map((t) => `${t.model} ${t.weight} %`).join(", ")}` : fineTuned ? "fine-tuned" : "base";
      const created = new Date(model.created * 1000).toISOString().slice(0, 10);
      for (const text of [model.id, kind, model.parent || "–", model.fine_tuning_job_id || "–", created]) {
        row.insertCell().textContent = text;
      }
      const actions = row.insertCell();
      if (fineTuned) {
        const button = document.createElement("button");
        button.className = "danger"; button.textContent = "Delete";
        button.setAttribute("aria-label", `Delete ${model.id}`);
        button.dataset.confirm = `Delete ${model.id}? Its checkpoints go with it.`;
        button.addEventListener("click", async () => {
          try { await api(`/models/${encodeURIComponent(model.id)}`, "DELETE"); await load(); }
          catch (error) { document.getElementById("models-error").textContent = error.message; }
        });
        actions.appendChild(button);
      }
    }
    document.getElementById("models-empty").hidden = models.data.some((model) => model.id.startsWith("ft:"));
    document.body.dataset.modelsLoaded = "true";
  }
  load();
})();
