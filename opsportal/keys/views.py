from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers

from opsportal.accounts.models import Role
from opsportal.accounts.permissions import (
    has_role,
    mutation,
    role_on,
    team_ids_with_role,
)
from opsportal.core.htmx import redirect
from opsportal.core.models import AuditEvent
from opsportal.dataplane.scoring import is_score
from opsportal.inventory import selectors
from opsportal.inventory.models import Endpoint
from opsportal.keys.models import KeySlot, RotationSchedule
from opsportal.keys.services import (
    key_reveal,
    rotation_active,
    rotation_request,
    rotation_schedule_set,
)
from opsportal.keys.store import secret_latest_by_slot
from opsportal.providers.base import ProviderError


class ScheduleForm(forms.Form):
    every_days = forms.IntegerField(
        min_value=1,
        max_value=365,
        required=False,
        label="Rotate every (days)",
        help_text="1 to 365; empty turns scheduled rotation off.",
    )


def keys_context(request: HttpRequest, endpoint: Endpoint) -> dict:
    """What the keys tab shows: fingerprints and versions, never a key."""
    latest = secret_latest_by_slot(endpoint=endpoint)
    # The key in use is the newest published version, whichever slot it is.
    current = max(latest.values(), key=lambda v: v.version, default=None)
    schedule = RotationSchedule.objects.filter(endpoint=endpoint).first()
    return {
        "slots": [(slot.value, slot.label, latest.get(slot.value)) for slot in KeySlot],
        "current": current,
        "schedule": schedule if schedule and schedule.enabled else None,
        "schedule_form": ScheduleForm(
            initial={"every_days": schedule.every_days if schedule and schedule.enabled else None}
        ),
        "rotation": rotation_active(endpoint=endpoint),
        "key_events": AuditEvent.objects.filter(
            endpoint=endpoint, action__startswith="key."
        ).select_related("actor")[:20],
        "can_operate": has_role(request.user, endpoint.workspace.team_id, Role.OPERATOR),
        "can_reveal": has_role(request.user, endpoint.workspace.team_id, Role.ADMIN),
        "score": is_score(endpoint.scoring_uri),
    }


@mutation(Role.OPERATOR)
def key_rotate(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = selectors.endpoint_for(request, pk, Role.OPERATOR)
    job, _ = rotation_request(endpoint=endpoint, user=request.user)
    return redirect(request, job.get_absolute_url())


@mutation(Role.OPERATOR)
def key_schedule(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = selectors.endpoint_for(request, pk, Role.OPERATOR)
    form = ScheduleForm(request.POST)
    status = 200
    if form.is_valid():
        rotation_schedule_set(
            endpoint=endpoint, every_days=form.cleaned_data["every_days"], user=request.user
        )
    else:
        status = 422
    context = {
        "endpoint": endpoint,
        "tab": "keys",
        "role": role_on(request.user, endpoint.workspace.team_id),
        **keys_context(request, endpoint),
    }
    if not form.is_valid():
        context["schedule_form"] = form
    return render(request, "keys/_tab.html", context, status=status)


@mutation(Role.ADMIN)
def key_reveal_view(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = selectors.endpoint_for(request, pk, Role.ADMIN)
    slot = request.POST.get("slot", "")
    if slot not in KeySlot.values:
        return render(
            request,
            "keys/_revealed.html",
            {"error": "Choose the primary or the secondary key."},
            status=422,
        )
    try:
        value = key_reveal(endpoint=endpoint, slot=slot, user=request.user)
    except ProviderError as exc:
        return render(request, "keys/_revealed.html", {"error": exc.message}, status=502)
    response = render(
        request, "keys/_revealed.html", {"value": value, "slot": slot, "endpoint": endpoint}
    )
    # The one response that carries a key: never cached, never kept by the browser.
    add_never_cache_headers(response)
    response["Cache-Control"] += ", no-store"
    return response


@mutation(Role.OPERATOR)
def keys_rotate_bulk(request: HttpRequest) -> HttpResponse:
    ids = [int(i) for i in request.POST.getlist("endpoint") if i.isdigit()]
    if not ids and team_ids_with_role(request.user, Role.OPERATOR) != set():
        messages.error(request, "Select the endpoints whose keys should rotate.")
        return redirect(request, reverse("endpoints"))
    endpoints = list(
        selectors.visible_endpoints(request.user).filter(pk__in=ids).select_related("workspace")
    )
    allowed = [e for e in endpoints if has_role(request.user, e.workspace.team_id, Role.OPERATOR)]
    if not allowed:
        raise PermissionDenied("Rotating keys needs the operator role on the endpoints' teams.")
    created = sum(rotation_request(endpoint=e, user=request.user)[1] for e in allowed)
    skipped = len(ids) - len(allowed)
    messages.success(
        request,
        f"Key rotation queued for {created} endpoint{'s' if created != 1 else ''}"
        + (f"; {len(allowed) - created} already rotating" if len(allowed) > created else "")
        + (f"; {skipped} skipped (no operator role or not found)" if skipped else "")
        + ".",
    )
    return redirect(request, reverse("jobs") + "?kind=key-rotation")
