// Keyboard use of every page: a wide table's scrolling box takes the focus (the arrow keys scroll it) and is named
// after its card's heading; a `button[data-copy]` copies the text of the element whose id it names, and says so.
// Where the clipboard is not offered (a page served over plain HTTP from another host), the text is selected.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const box of document.querySelectorAll(".scroll")) {
    const heading = box.closest("section") && box.closest("section").querySelector("h1, h2, h3");
    box.tabIndex = 0;
    box.setAttribute("role", "region");
    box.setAttribute("aria-label", heading ? `${heading.textContent.trim()} (table)` : "table");
  }
});
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  if (!source) return;
  const label = button.textContent;
  try {
    await navigator.clipboard.writeText(source.textContent);
    button.textContent = "Copied";
  } catch {
    const range = document.createRange();
    range.selectNodeContents(source);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    button.textContent = "Selected: press Ctrl+C";
  }
  setTimeout(() => (button.textContent = label), 2000);
});
