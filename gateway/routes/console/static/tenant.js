// The operator's page of one tenant: quotas and weight, prices, keys (issue one, shown once; change a key's
// budgets; revoke), suspend or resume, delete. Everything through the admin API (/console/api/admin/v1), as the
// CLI and scripts do; destructive buttons ask first (confirm.js).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const tenant = $("tenant").dataset.tenantId;
  const admin = (path, method, body) => llmaas.call(`/admin/v1/tenants/${tenant}${path}`, { method, body });
  const shown = (error) => { $("tenant-error").textContent = error.message; };
  // A form's fields as the API takes them: empty is null (unlimited), USD as a decimal string, the rest numbers.
  const fieldsOf = (form) => {
    const body = {};
    for (const input of form.querySelectorAll("input[name]")) {
      if (input.type === "checkbox") { body[input.name] = input.checked; continue; }
      const value = input.value.trim();
      if (value === "") body[input.name] = null;
      else body[input.name] = "decimal" in input.dataset || input.type !== "number" ? value : Number(value);
    }
    return body;
  };
  const saved = (id) => { $(id).textContent = "Saved."; setTimeout(() => { $(id).textContent = ""; }, 3000); };

  const act = (id, run) => { const button = $(id); if (button) button.addEventListener("click", () => run().catch(shown)); };
  act("suspend", async () => { await admin("/suspend", "POST"); location.reload(); });
  act("resume", async () => { await admin("/resume", "POST"); location.reload(); });
  act("delete", async () => { await admin("", "DELETE"); location.assign("/console/admin/tenants"); });

  $("limits-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try { await admin("", "PATCH", fieldsOf(event.target)); saved("limits-saved"); } catch (error) { shown(error); }
  });

  $("prices-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const prices = {};
    for (const row of document.querySelectorAll("#prices tbody tr")) {
      const price = fieldsOf(row);
      if (price.input === null && price.output === null) continue;  // not priced here
      prices[row.dataset.model] = Object.fromEntries(Object.entries(price).filter(([, v]) => v !== null));
    }
    try { await admin("", "PATCH", { model_prices: prices }); saved("prices-saved"); } catch (error) { shown(error); }
  });

  $("create-key").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = Object.fromEntries(Object.entries(fieldsOf(event.target)).filter(([, v]) => v !== null));
    if (body.expires_in_days !== undefined) body.expires_in_days = Number(body.expires_in_days);
    try {
      const key = await admin("/keys", "POST", body);
      $("new-key").textContent = key.key;  // shown here, once: the page never has it again
      $("created").hidden = false;
      $("created").dataset.keyId = key.id;
      event.target.reset();
      $("tenant-error").textContent = "";
    } catch (error) { shown(error); }
  });

  let editing = null;
  $("keys").addEventListener("click", async (event) => {
    const button = event.target instanceof Element ? event.target.closest("button") : null;
    const row = button && button.closest("tr[data-key-id]");
    if (!row) return;
    if (button.classList.contains("revoke")) {
      try { await admin(`/keys/${row.dataset.keyId}`, "DELETE"); location.reload(); } catch (error) { shown(error); }
    } else if (button.classList.contains("budgets")) {
      editing = row.dataset.keyId;
      $("key-budgets-name").textContent = row.dataset.name || row.querySelector("code").textContent;
      const form = $("key-budgets-form");
      for (const cell of row.querySelectorAll("[data-field]")) {
        const value = cell.textContent.trim().replace(/,/g, "");
        form.elements[cell.dataset.field].value = value === "\u2013" ? "" : value;
      }
      $("key-budgets-error").textContent = "";
      $("key-budgets").showModal();
    }
  });
  $("key-budgets-form").addEventListener("submit", async (event) => {
    if (event.submitter && event.submitter.value !== "save") return;
    event.preventDefault();
    try { await admin(`/keys/${editing}`, "PATCH", fieldsOf(event.target)); location.reload(); }
    catch (error) { $("key-budgets-error").textContent = error.message; }
  });
})();
