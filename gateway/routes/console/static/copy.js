// Copy buttons: a button with `data-copy="<selector>"` copies that element's text to the clipboard and says so
// on the button for a moment. Where the Clipboard API is absent (plain HTTP away from localhost) it copies the
// selection with the older execCommand; where that is refused too, the text is left selected for Ctrl+C.
// Works for buttons added later.
"use strict";
(function () {
  const select = (element) => {
    const range = document.createRange();
    range.selectNodeContents(element);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    return selection;
  };
  document.addEventListener("click", async (event) => {
    const button = event.target instanceof Element ? event.target.closest("[data-copy]") : null;
    const source = button && document.querySelector(button.dataset.copy);
    if (!source) return;
    const label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    try {
      if (navigator.clipboard && window.isSecureContext) await navigator.clipboard.writeText(source.textContent.trim());
      else {
        select(source);
        if (!document.execCommand("copy")) throw new Error("copy refused");
        window.getSelection().removeAllRanges();
      }
      button.textContent = "Copied";
    } catch (error) {
      select(source);
      button.textContent = "Selected: press Ctrl+C";
    }
    setTimeout(() => { button.textContent = label; }, 2000);
  });
})();
