// Keyboard use of every page: a wide table's scrolling box takes the focus (the arrow keys scroll it) and is named
// after its card's heading (copy buttons: copy.js).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const box of document.querySelectorAll(".scroll")) {
    const heading = box.closest("section") && box.closest("section").querySelector("h1, h2, h3");
    box.tabIndex = 0;
    box.setAttribute("role", "region");
    box.setAttribute("aria-label", heading ? `${heading.textContent.trim()} (table)` : "table");
  }
});
