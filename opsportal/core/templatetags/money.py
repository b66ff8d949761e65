"""Amounts of money as people read them: cents for normal sums, more digits for the tiny
per-token costs of small models (0.000151, not 0.00)."""

from decimal import Decimal, InvalidOperation

from django import template

register = template.Library()


@register.filter
def money(value: object) -> str:
    if value is None or value == "":
        return "—"
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return str(value)
    if amount == 0:
        return "0.00"
    if abs(amount) >= 1:
        return f"{amount:,.2f}"
    text = f"{amount:.6f}".rstrip("0")
    decimals = len(text.split(".")[1])
    return text if decimals >= 2 else f"{amount:.2f}"
