import uuid

from django import forms
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from opsportal.accounts.models import Role
from opsportal.accounts.permissions import has_role, mutation, require_role, team_ids_with_role
from opsportal.chat import services
from opsportal.chat.forms import ChatForm
from opsportal.chat.grants import grant_issue
from opsportal.chat.models import ChatTurn
from opsportal.inventory.models import Endpoint, ProvisioningState
from opsportal.inventory.selectors import endpoint_for, visible_endpoints
from opsportal.providers import ProviderError


def tab_context(request: HttpRequest, endpoint: Endpoint) -> dict[str, object]:
    """What the test-chat tab of the endpoint page needs."""
    return {
        "form": ChatForm(endpoint=endpoint),
        "turns": services.chat_history(user=request.user, endpoint=endpoint),
        "can_chat": has_role(request.user, endpoint.workspace.team_id, Role.OPERATOR),
        "ready": endpoint.provisioning_state == ProvisioningState.SUCCEEDED,
    }


def _grant(request: HttpRequest, turn: ChatTurn) -> None:
    """Resolve the turn's target now, so its stream can start without a database round trip
    (see opsportal.chat.grants). Without a key, the stream reports why, as before."""
    try:
        target = services.relay_target(turn)
    except ProviderError:
        return
    grant_issue(session_key=request.session.session_key, turn=turn, target=target)


@mutation(Role.OPERATOR)
def turn_create(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = endpoint_for(request, pk, Role.OPERATOR)
    form = ChatForm(request.POST, endpoint=endpoint)
    if not form.is_valid():
        # 422 with the form and its field errors; htmx swaps it in place (see base.html).
        response = render(
            request, "chat/_composer.html", {"form": form, "endpoint": endpoint}, status=422
        )
        response["HX-Retarget"] = "#composer"
        response["HX-Reswap"] = "outerHTML"
        return response
    turn = services.chat_turn_create(user=request.user, endpoint=endpoint, form=form)
    _grant(request, turn)
    if not request.htmx:
        return HttpResponseRedirect(reverse("endpoint_detail", args=[pk]) + "?tab=chat")
    return render(request, "chat/_turn.html", {"turn": turn})


@mutation(Role.OPERATOR)
def chat_clear(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = endpoint_for(request, pk, Role.OPERATOR)
    services.chat_clear(user=request.user, endpoint=endpoint)
    if request.htmx:
        return HttpResponse("")
    return HttpResponseRedirect(reverse("endpoint_detail", args=[pk]) + "?tab=chat")


@require_GET
def chat_export(request: HttpRequest, pk: int) -> JsonResponse:
    endpoint = endpoint_for(request, pk)
    response = JsonResponse(
        services.transcript_export(user=request.user, endpoint=endpoint),
        json_dumps_params={"indent": 2},
    )
    response["Content-Disposition"] = f'attachment; filename="chat-{endpoint.name}.json"'
    return response


def turn_stream(request: HttpRequest, turn_id: int) -> HttpResponse:
    """Names the stream URL. The stream itself is served by opsportal.asgi (see
    opsportal/chat/stream.py) before a request reaches Django; getting here means the console
    runs without its ASGI entry point, which test chat needs."""
    return HttpResponse(
        "Test chat streams need the ASGI server (opsportal.asgi:application).",
        status=501,
        content_type="text/plain",
    )


class CompareForm(forms.Form):
    left = forms.TypedChoiceField(coerce=int, label="Left endpoint")
    right = forms.TypedChoiceField(coerce=int, label="Right endpoint")
    message = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=50_000)
    max_tokens = forms.IntegerField(required=False, min_value=1)
    temperature = forms.FloatField(required=False)

    def __init__(self, *args: object, endpoints: list[Endpoint], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        choices = [
            (e.pk, f"{e.name} ({e.offering.model_name if e.offering else '?'})") for e in endpoints
        ]
        self.fields["left"].choices = self.fields["right"].choices = choices
        self.endpoints = {e.pk: e for e in endpoints}


def _chat_endpoints(request: HttpRequest, *, operator_only: bool = True) -> list[Endpoint]:
    candidates = (
        visible_endpoints(request.user)
        .filter(provisioning_state=ProvisioningState.SUCCEEDED, offering__isnull=False)
        .select_related("workspace", "offering")
        .order_by("name")[:500]
    )
    if not operator_only:
        return list(candidates)
    teams = team_ids_with_role(request.user, Role.OPERATOR)
    return [e for e in candidates if teams is None or e.workspace.team_id in teams]


@require_GET
def compare(request: HttpRequest) -> HttpResponse:
    endpoints = _chat_endpoints(request)
    initial = {k: request.GET.get(k) for k in ("left", "right") if request.GET.get(k)}
    form = CompareForm(initial=initial, endpoints=endpoints)
    return render(request, "chat/compare.html", {"form": form, "endpoints": endpoints})


@mutation(Role.OPERATOR)
def compare_create(request: HttpRequest) -> HttpResponse:
    # Any visible endpoint validates; the role is checked on the two chosen (403 otherwise).
    endpoints = _chat_endpoints(request, operator_only=False)
    form = CompareForm(request.POST, endpoints=endpoints)
    turns, errors = [], []
    if form.is_valid():
        for side in ("left", "right"):
            endpoint = form.endpoints[form.cleaned_data[side]]
            require_role(request.user, endpoint.workspace.team_id, Role.OPERATOR)
        group = uuid.uuid4()
        for side in ("left", "right"):
            endpoint = form.endpoints[form.cleaned_data[side]]
            data = {
                "mode": "chat",
                "route_style": "native",
                "message": form.cleaned_data["message"],
            }
            for name in ("max_tokens", "temperature"):
                if form.cleaned_data.get(name) is not None:
                    data[name] = form.cleaned_data[name]
            chat_form = ChatForm(data, endpoint=endpoint)
            if chat_form.is_valid():
                turns.append(
                    services.chat_turn_create(
                        user=request.user, endpoint=endpoint, form=chat_form, compare_group=group
                    )
                )
            else:
                errors += [f"{endpoint.name}: {e}" for e in _flat_errors(chat_form)]
        if errors:
            ChatTurn.objects.filter(compare_group=group).delete()
            turns = []
        for turn in turns:
            _grant(request, turn)
    status = 200 if turns else 422
    return render(
        request,
        "chat/_compare_result.html",
        {"form": form, "turns": turns, "errors": errors},
        status=status,
    )


def _flat_errors(form: forms.Form) -> list[str]:
    return [
        f"{name}: {msg}" if name != "__all__" else msg
        for name, msgs in form.errors.items()
        for msg in msgs
    ]
