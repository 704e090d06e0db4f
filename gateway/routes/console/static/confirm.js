// The console's one confirmation for destructive actions: any button (or link) with a `data-confirm="question"`
// attribute asks in the page's #confirm dialog before it acts; `data-confirm-action` names the confirming button
// (default: the button's own text). Works for form submit buttons and for buttons a page's script listens to
// (the click is held in the capture phase and replayed once confirmed), including buttons added later.
"use strict";
(function () {
  const dialog = document.getElementById("confirm");
  if (!dialog) return;
  const message = document.getElementById("confirm-message");
  const yes = document.getElementById("confirm-yes");
  let pending = null;
  document.addEventListener("click", (event) => {
    const target = event.target instanceof Element ? event.target.closest("[data-confirm]") : null;
    if (!target || dialog.contains(target)) return;
    if (target.dataset.confirmed === "yes") { delete target.dataset.confirmed; return; }
    event.preventDefault();
    event.stopImmediatePropagation();
    pending = target;
    message.textContent = target.dataset.confirm;
    yes.textContent = target.dataset.confirmAction || target.textContent.trim() || "Confirm";
    dialog.returnValue = "";
    dialog.showModal();
  }, true);
  dialog.addEventListener("close", () => {
    const target = pending;
    pending = null;
    if (target && dialog.returnValue === "yes") {
      target.dataset.confirmed = "yes";
      target.click();
    } else if (target) {
      target.focus();
    }
  });
})();
