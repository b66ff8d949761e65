// Filter forms send only the fields that are set, so URLs stay short and bookmarkable.
document.addEventListener("htmx:configRequest", (event) => {
  if (!event.detail.elt.closest("form.filters")) return;
  for (const [name, value] of Object.entries(event.detail.parameters)) {
    if (value === "") delete event.detail.parameters[name];
  }
});

// Revealed keys: copy to the clipboard, hide again. The key is never put anywhere else.
document.addEventListener("click", (event) => {
  const copy = event.target.closest("[data-copy]");
  if (copy) {
    const input = document.querySelector(copy.dataset.copy);
    if (input) {
      input.select();
      const done = () => { copy.textContent = "Copied"; setTimeout(() => (copy.textContent = "Copy"), 1500); };
      if (navigator.clipboard) navigator.clipboard.writeText(input.value).then(done, () => document.execCommand("copy") && done());
      else if (document.execCommand("copy")) done();
    }
  }
  const hide = event.target.closest("[data-hide]");
  if (hide) document.querySelector(hide.dataset.hide)?.remove();
});

// Forms that change something important ask first (data-confirm: the question).
document.addEventListener("submit", (event) => {
  const question = event.target.dataset && event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
}, true);

// Gauges: the bar's width comes from data-bar (percent); no inline style (the page's CSP).
function drawBars(root) {
  root.querySelectorAll("[data-bar]").forEach((bar) => {
    bar.style.width = `${Math.max(0, Math.min(100, parseFloat(bar.dataset.bar) || 0))}%`;
  });
}
document.addEventListener("DOMContentLoaded", () => drawBars(document));
document.addEventListener("htmx:load", (event) => drawBars(event.detail.elt));
