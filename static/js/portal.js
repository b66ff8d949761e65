// Filter forms send only the fields that are set, so URLs stay short and bookmarkable.
document.addEventListener("htmx:configRequest", (event) => {
  if (!event.detail.elt.closest("form.filters")) return;
  for (const [name, value] of Object.entries(event.detail.parameters)) {
    if (value === "") delete event.detail.parameters[name];
  }
});
