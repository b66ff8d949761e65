"""The deployment wizard's form: fields, then the pre-flight checks as field errors."""

from typing import Any

from django import forms

from opsportal.accounts.models import Role
from opsportal.accounts.permissions import team_ids_with_role
from opsportal.deployments.preflight import (
    Check,
    DeploySpec,
    blocking,
    compute_facts,
    preflight,
)
from opsportal.inventory.models import Endpoint, Offering, Workspace
from opsportal.inventory.selectors import visible_workspaces
from opsportal.providers.base import ComputeSnapshot


def deployable_workspaces(user: Any) -> Any:
    """Workspaces where the user may deploy: operator or better on the owning team."""
    qs = visible_workspaces(user).select_related("account").order_by("name")
    teams = team_ids_with_role(user, Role.OPERATOR)
    return qs if teams is None else qs.filter(team_id__in=teams)


class DeployForm(forms.Form):
    workspace = forms.ModelChoiceField(queryset=Workspace.objects.none(), empty_label="Choose…")
    offering = forms.ModelChoiceField(
        queryset=Offering.objects.all(), empty_label="Choose…", label="Model"
    )
    kind = forms.ChoiceField(
        choices=Endpoint.Kind.choices, initial=Endpoint.Kind.SERVERLESS, widget=forms.RadioSelect
    )
    name = forms.CharField(
        max_length=32,
        required=False,
        label="Endpoint name",
        help_text="3-32 letters, digits or hyphens; part of the URL, so unique in the region.",
    )
    accept_terms = forms.BooleanField(
        required=False, label="I accept the Marketplace terms and the purchase policy"
    )
    # Managed compute only.
    endpoint_mode = forms.ChoiceField(
        choices=[("new", "New endpoint"), ("existing", "Add to an existing endpoint")],
        initial="new",
        required=False,
        widget=forms.RadioSelect,
        label="Endpoint",
    )
    existing = forms.ModelChoiceField(
        queryset=Endpoint.objects.none(), required=False, label="Existing endpoint"
    )
    deployment_name = forms.CharField(max_length=32, required=False, initial="default")
    vm_sku = forms.ChoiceField(required=False, label="VM size")
    instance_count = forms.IntegerField(min_value=1, max_value=20, initial=1, required=False)
    traffic_percent = forms.IntegerField(
        min_value=0, max_value=100, initial=100, required=False, label="Traffic %"
    )
    data_collection = forms.BooleanField(
        required=False,
        label="Collect inference data (preview)",
        help_text="Azure ML's data collector keeps the deployment's inputs and outputs.",
    )

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["workspace"].queryset = deployable_workspaces(user)
        self.fields["existing"].queryset = (
            Endpoint.objects.alive()
            .filter(workspace__in=self.fields["workspace"].queryset, kind=Endpoint.Kind.MANAGED)
            .select_related("workspace")
        )
        self.checks: list[Check] = []
        self.facts: ComputeSnapshot | None = None
        workspace = self._chosen_workspace()
        if workspace is not None:
            self.facts = compute_facts(workspace)
            self.fields["existing"].queryset = self.fields["existing"].queryset.filter(
                workspace=workspace
            )
        if self.facts is not None and self.facts.known:
            self.fields["vm_sku"].choices = [("", "Choose…")] + [
                (name, f"{name} ({cores} cores, {family})")
                for name, (cores, family) in sorted(self.facts.sizes.items())
            ]
        else:
            # Sizes not known here: the name is typed, and the job checks it with the provider.
            self.fields["vm_sku"] = forms.CharField(
                required=False,
                max_length=64,
                label="VM size",
                help_text="For example Standard_NC24ads_A100_v4.",
            )

    def _chosen_workspace(self) -> Workspace | None:
        raw = self.data.get("workspace") if self.is_bound else self.initial.get("workspace")
        if isinstance(raw, Workspace):
            return raw
        try:
            return self.fields["workspace"].queryset.filter(pk=int(raw)).first() if raw else None
        except (TypeError, ValueError):
            return None

    def spec(self) -> DeploySpec:
        data = self.cleaned_data
        kind = data.get("kind") or Endpoint.Kind.SERVERLESS
        managed = kind == Endpoint.Kind.MANAGED
        return DeploySpec(
            workspace=data.get("workspace"),
            offering=data.get("offering"),
            kind=kind,
            name=(data.get("name") or "").strip(),
            accept_terms=bool(data.get("accept_terms")),
            vm_sku=data.get("vm_sku") or "",
            instance_count=data.get("instance_count") or 1,
            endpoint_mode=(data.get("endpoint_mode") or "new") if managed else "new",
            existing_endpoint=data.get("existing"),
            deployment_name=(data.get("deployment_name") or "default").strip(),
            traffic_percent=100 if data.get("traffic_percent") is None else data["traffic_percent"],
            data_collection=bool(data.get("data_collection")) if managed else False,
        )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.errors:
            return cleaned
        spec = self.spec()
        if spec.kind == Endpoint.Kind.MANAGED and spec.endpoint_mode == "existing":
            spec.name = spec.existing_endpoint.name if spec.existing_endpoint else ""
        self.checks = preflight(spec, facts=self.facts)
        for check in blocking(self.checks):
            target = check.field if check.field in self.fields else None
            self.add_error(target, check.detail)
        return cleaned

    def run_checks(self) -> list[Check]:
        """The checklist for the live pre-flight: the form's checks, or why none ran yet."""
        self.is_valid()
        if self.checks:
            return self.checks
        missing = [
            Check(name, self.fields[name].label or name, "todo", " ".join(errors), field=name)
            for name, errors in self.errors.items()
            if name in self.fields
        ]
        return missing or preflight(DeploySpec())

    def params(self) -> dict[str, Any]:
        """What the deploy job needs, as plain data (no secrets, no model instances)."""
        spec = self.spec()
        managed = spec.kind == Endpoint.Kind.MANAGED
        name = spec.name
        if managed and spec.endpoint_mode == "existing" and spec.existing_endpoint:
            name = spec.existing_endpoint.name
        return {
            "workspace_id": spec.workspace.pk,
            "offering": spec.offering.slug,
            "kind": spec.kind,
            "name": name,
            "terms_accepted": spec.accept_terms,
            **(
                {
                    "endpoint_mode": spec.endpoint_mode,
                    "deployment_name": spec.deployment_name,
                    "vm_sku": spec.vm_sku,
                    "instance_count": spec.instance_count,
                    "traffic_percent": spec.traffic_percent,
                    "data_collection": spec.data_collection,
                }
                if managed
                else {}
            ),
        }
