// Copy buttons: a button with `data-copy="<selector>"` copies that element's text to the clipboard and says so
// on the button for a moment (with the older selection-and-execCommand way where the Clipboard API is absent,
// as on plain HTTP away from localhost). Works for buttons added later.
"use strict";
(function () {
  const viaSelection = (element) => {
    const range = document.createRange();
    range.selectNodeContents(element);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    const done = document.execCommand("copy");
    selection.removeAllRanges();
    if (!done) throw new Error("copy refused");
  };
  document.addEventListener("click", async (event) => {
    const button = event.target instanceof Element ? event.target.closest("[data-copy]") : null;
    const source = button && document.querySelector(button.dataset.copy);
    if (!source) return;
    const label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    try {
      if (navigator.clipboard && window.isSecureContext) await navigator.clipboard.writeText(source.textContent.trim());
      else viaSelection(source);
      button.textContent = "Copied";
    } catch (error) {
      button.textContent = "Select and copy by hand";
    }
    setTimeout(() => { button.textContent = label; }, 2000);
  });
})();
