"""Small helpers shared by the console's forms."""

from typing import Any

from django import forms


def plain_selects(form: forms.Form, names: list[str]) -> list[dict[str, Any]]:
    """Select fields as plain data for templates that write the options themselves: Django's
    per-option widget templates cost milliseconds at 500 workspaces. The selected option is
    the field's valid value; an invalid one shows its error and selects nothing."""
    cleaned = getattr(form, "cleaned_data", {})
    selects = []
    for name in names:
        field = form.fields[name]
        value = "" if cleaned.get(name) in (None, "") else str(cleaned[name])
        selects.append(
            {
                "name": name,
                "id": f"id_{name}",
                "label": field.label or name.capitalize(),
                "options": [(str(v), text, str(v) == value) for v, text in field.choices],
                "errors": form.errors.get(name, []) if form.is_bound else [],
            }
        )
    return selects
