// A tenant's model aliases (ours: /v1/aliases, or the operator's /admin/v1/tenants/{id}/aliases): each alias with
// its targets and gate, and the history of the one clicked.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const tenantSelect = $("alias-tenant");
  const base = () => $("aliases").dataset.api.replace("{tenant}", tenantSelect ? tenantSelect.value : "");
  const targets = (list) => list.map((t) => `${t.model} ${t.weight} %`).join(", ");
  const when = (seconds) => new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19);
  const cells = (row, texts) => texts.forEach((text) => { row.insertCell().textContent = text; });

  async function showHistory(name) {
    $("history-name").textContent = name;
    const versions = (await llmaas.call(`${base()}/${encodeURIComponent(name)}/history`)).data;
    const body = $("history").tBodies[0];
    body.replaceChildren();
    for (const v of versions) cells(body.insertRow(), [v.version, v.action, targets(v.targets), v.actor, when(v.created_at)]);
    document.body.dataset.historyShown = name;
  }

  async function load() {
    $("aliases-error").textContent = "";
    const body = $("aliases").tBodies[0];
    body.replaceChildren();
    try {
      const aliases = (await llmaas.call(base())).data;
      $("aliases-empty").hidden = aliases.length > 0;
      for (const alias of aliases) {
        const row = body.insertRow();
        row.dataset.alias = alias.name;
        const gate = alias.gate ? `${alias.gate.eval_id} ≥ ${alias.gate.min_score}` : "–";
        cells(row, [alias.name, targets(alias.targets), gate, alias.version, when(alias.updated_at)]);
        row.cells[3].className = "num";
        row.tabIndex = 0;  // Enter on a focused row shows its history, as a click does
        row.addEventListener("click", () => showHistory(alias.name));
        row.addEventListener("keydown", (event) => { if (event.key === "Enter") showHistory(alias.name); });
      }
      if (aliases.length) await showHistory(aliases[0].name);
    } catch (error) { $("aliases-error").textContent = error.message; }
    document.body.dataset.aliasesLoaded = "true";
  }
  if (tenantSelect) tenantSelect.addEventListener("change", load);
  load();
})();
