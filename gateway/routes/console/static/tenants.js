// The operator's tenants: create (then its page), change quotas, suspend and resume, through the admin API.
"use strict";
(function () {
  const admin = (path, method, body) => llmaas.call("/admin/v1" + path, { method, body });
  const $ = (id) => document.getElementById(id);
  const number = (value) => (value === "" ? null : Number(value));

  $("create-tenant").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: $("tenant-name").value };
    for (const [id, field] of [["new-rpm", "requests_per_minute"], ["new-tpm", "tokens_per_minute"], ["new-budget", "monthly_token_budget"]]) {
      if ($(id).value !== "") body[field] = Number($(id).value);
    }
    try {  // on to its page: prices, weight and its first key
      const tenant = await admin("/tenants", "POST", body);
      location.assign(`/console/admin/tenants/${tenant.id}`);
    }
    catch (error) { $("tenant-error").textContent = error.message; }
  });

  let editing = null;
  for (const row of document.querySelectorAll("#tenants tbody tr")) {
    const id = row.dataset.tenantId;
    const act = (selector, path) => {
      const button = row.querySelector(selector);
      if (button) button.addEventListener("click", async () => { await admin(`/tenants/${id}/${path}`, "POST"); location.reload(); });
    };
    act(".suspend", "suspend");
    act(".resume", "resume");
    row.querySelector(".edit").addEventListener("click", () => {
      editing = id;
      $("quota-tenant").textContent = row.dataset.name;
      for (const cell of row.querySelectorAll("[data-field]")) {
        const value = cell.textContent.trim();
        $("quota-form").elements[cell.dataset.field].value = value === "–" ? "" : value;
      }
      $("quota-error").textContent = "";
      $("quotas").showModal();
    });
  }
  $("quota-form").addEventListener("submit", async (event) => {
    if (event.submitter && event.submitter.value !== "save") return;
    event.preventDefault();
    const body = {};
    for (const input of $("quota-form").querySelectorAll("input")) body[input.name] = number(input.value);
    try { await admin(`/tenants/${editing}`, "PATCH", body); location.reload(); }
    catch (error) { $("quota-error").textContent = error.message; }
  });
})();
