// Every table.sortable sorts by a column when its header is clicked, or focused and Enter or Space pressed
// (numbers as numbers).
"use strict";
for (const table of document.querySelectorAll("table.sortable")) {
  const headers = Array.from(table.tHead.rows[0].cells);
  for (const th of headers) {
    th.tabIndex = 0;
    th.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); th.click(); }
    });
  }
  headers.forEach((th, column) => th.addEventListener("click", () => {
    const ascending = th.getAttribute("aria-sort") !== "ascending";
    headers.forEach((h) => h.removeAttribute("aria-sort"));
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    const body = table.tBodies[0];
    const rows = Array.from(body.rows).filter((row) => row.cells.length === headers.length);
    const value = (row) => {
      const text = row.cells[column].textContent.trim();
      const number = Number(text.replace(/,/g, ""));
      return text !== "" && !Number.isNaN(number) ? number : text;
    };
    rows.sort((a, b) => {
      const x = value(a), y = value(b);
      const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return ascending ? order : -order;
    });
    rows.forEach((row) => body.appendChild(row));
  }));
}
