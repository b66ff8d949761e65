"""The deployment pre-flight: every rule of docs/azure.md ("What a deployment needs"), checked
from the inventory before any provider call. The wizard shows the list live as fields change;
submitting checks it again.
"""

from dataclasses import dataclass

from django.db.models import Sum

from opsportal.inventory.models import (
    Endpoint,
    MarketplaceSubscription,
    Offering,
    Provider,
    Workspace,
)
from opsportal.providers import for_workspace
from opsportal.providers.base import ENDPOINT_NAME_RE, ComputeSnapshot

# What subscribing needs, in the words of each family's document: the Mistral one asks for one
# role on the resource group, the Llama one lists the custom-role permissions.
MARKETPLACE_PERMISSIONS = {
    "Mistral": ("Subscribing needs the Azure AI Developer role on the workspace's resource group."),
    "Meta": (
        "Subscribing needs subscription-level rights: Owner or Contributor on the Azure "
        "subscription, or a custom role with Microsoft.MarketplaceOrdering/agreements/offers/"
        "plans/read and .../plans/sign/action, Microsoft.MarketplaceOrdering/offerTypes/"
        "publishers/offers/plans/agreements/read, Microsoft.Marketplace/offerTypes/publishers/"
        "offers/plans/agreements/read and Microsoft.SaaS/register/action; Microsoft.SaaS/"
        "resources/read and write on the resource group; and marketplaceModelSubscriptions/* and "
        "serverlessEndpoints/* on the workspace (the Azure ML Data Scientist role has the last "
        "two)."
    ),
}
GENERIC_PERMISSIONS = (
    "Subscribing needs rights to accept Marketplace terms on the Azure subscription (Owner or "
    "Contributor) and to create SaaS resources in the resource group."
)
INACTIVE = {
    MarketplaceSubscription.State.SUSPENDED: "Azure suspends a subscription whose payment "
    "failed: fix the Azure subscription's payment method, then sync.",
    MarketplaceSubscription.State.UNSUBSCRIBED: "Delete it in Azure ML studio, then deploy "
    "again to subscribe anew.",
    MarketplaceSubscription.State.PENDING: "Azure is still setting it up: wait a few minutes "
    "and sync.",
    MarketplaceSubscription.State.FAILED: "Delete it in Azure ML studio and subscribe again.",
}
LOCAL_LICENCE_NOTE = (
    "On the local runtime, subscribing means accepting the model's licence for this workspace; "
    "operators of the workspace's team may do it."
)


@dataclass(frozen=True)
class Check:
    key: str
    title: str
    status: str  # ok | fail | warn | todo (needs the user: e.g. accept the terms)
    detail: str = ""
    link: str = ""
    link_text: str = ""
    field: str = ""  # the form field the failure belongs to


@dataclass
class DeploySpec:
    workspace: Workspace | None = None
    offering: Offering | None = None
    kind: str = Endpoint.Kind.SERVERLESS
    name: str = ""
    accept_terms: bool = False
    vm_sku: str = ""
    instance_count: int = 1
    endpoint_mode: str = "new"  # new | existing
    existing_endpoint: Endpoint | None = None
    deployment_name: str = "default"
    traffic_percent: int = 100
    data_collection: bool = False


def compute_facts(workspace: Workspace) -> ComputeSnapshot:
    """The region's instance types and core quota, from the workspace's back end (live for the
    local runtime, the sync's stored snapshot for Azure: never a cloud call during a request)."""
    return for_workspace(workspace).compute_snapshot()


def preflight(spec: DeploySpec, *, facts: ComputeSnapshot | None = None) -> list[Check]:
    checks: list[Check] = []
    ws, offering = spec.workspace, spec.offering
    if ws is None or offering is None:
        return [
            Check(
                "choose",
                "Choose a workspace and a model",
                "todo",
                "The checks run as soon as both are chosen.",
            )
        ]
    checks.append(_where(spec, ws, offering))
    if spec.kind == Endpoint.Kind.SERVERLESS:
        checks.append(_marketplace(spec, ws, offering))
        checks.append(_one_per_model(ws, offering))
    checks.append(_name(spec, ws))
    if spec.kind == Endpoint.Kind.MANAGED:
        checks.extend(_managed(spec, ws, facts if facts is not None else compute_facts(ws)))
    return checks


def blocking(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status in ("fail", "todo")]


def _where(spec: DeploySpec, ws: Workspace, offering: Offering) -> Check:
    title = "Offered in this workspace's region"
    if offering.provider_scope != ws.provider:
        where = "the local runtime" if offering.provider_scope == Provider.LOCAL else "Azure"
        return Check(
            "region",
            title,
            "fail",
            f"{offering.display_name} runs on {where} only; {ws.name} is a "
            f"{ws.get_provider_display()} workspace.",
            field="offering",
        )
    if spec.kind == Endpoint.Kind.SERVERLESS:
        if not offering.serverless:
            return Check(
                "region",
                title,
                "fail",
                f"{offering.display_name} is not offered as a serverless (pay-as-you-go) "
                "deployment; choose managed compute.",
                field="kind",
            )
        if not offering.serverless_allowed_in(ws.region):
            allowed = " and ".join(
                [", ".join(offering.serverless_regions[:-1]), offering.serverless_regions[-1]]
                if len(offering.serverless_regions) > 1
                else offering.serverless_regions
            )
            return Check(
                "region",
                title,
                "fail",
                f"{offering.display_name} is offered as serverless in {allowed} only; "
                f"{ws.name} is in {ws.region}. Choose a workspace in one of those regions.",
                field="workspace",
            )
        return Check(
            "region",
            title,
            "ok",
            f"{ws.region} is one of the {offering.family} serverless regions.",
        )
    if not offering.managed_compute:
        stated = "does not say" if offering.managed_compute is None else "says it cannot"
        return Check(
            "region",
            title,
            "fail",
            f"The catalog {stated} that {offering.display_name} can run on managed compute.",
            field="kind",
        )
    return Check("region", title, "ok", f"{offering.display_name} can run on managed compute.")


def _marketplace(spec: DeploySpec, ws: Workspace, offering: Offering) -> Check:
    title = "Marketplace subscription"
    state = (
        MarketplaceSubscription.objects.alive()
        .filter(workspace=ws, offering=offering)
        .values_list("state", flat=True)
        .first()
    )
    if state == MarketplaceSubscription.State.SUCCEEDED:
        return Check(
            "marketplace",
            title,
            "ok",
            f"{ws.name} is subscribed to {offering.display_name}: continue to deploy.",
        )
    if state is not None:
        label = MarketplaceSubscription.State(state).label
        return Check(
            "marketplace",
            title,
            "fail",
            f"{ws.name}'s Marketplace subscription to {offering.display_name} is {label}, and "
            f"Azure does not deploy on it. {INACTIVE.get(state, '')}",
            link=offering.terms_url,
            link_text="Terms and pricing",
            field="offering",
        )
    if ws.provider == Provider.LOCAL:
        permissions = LOCAL_LICENCE_NOTE
    else:
        permissions = MARKETPLACE_PERMISSIONS.get(offering.family, GENERIC_PERMISSIONS)
    return Check(
        "marketplace",
        title,
        "ok" if spec.accept_terms else "todo",
        f"The first deployment of {offering.display_name} in {ws.name} subscribes the workspace "
        f"to the offer. {permissions}"
        + ("" if spec.accept_terms else " Read the terms and tick the acceptance box below."),
        link=offering.terms_url,
        link_text="Terms and pricing",
        field="accept_terms",
    )


def _one_per_model(ws: Workspace, offering: Offering) -> Check:
    title = "One serverless deployment per model per workspace"
    existing = (
        Endpoint.objects.alive()
        .filter(workspace=ws, offering=offering, kind=Endpoint.Kind.SERVERLESS)
        .first()
    )
    if existing is not None:
        return Check(
            "one_per_model",
            title,
            "fail",
            f"{ws.name} already has a serverless deployment of {offering.display_name}: "
            f"{existing.name}. Use it, or delete it first.",
            link=existing.get_absolute_url(),
            link_text=f"Open {existing.name}",
            field="offering",
        )
    return Check("one_per_model", title, "ok", f"No serverless {offering.display_name} here yet.")


def _name(spec: DeploySpec, ws: Workspace) -> Check:
    if spec.kind == Endpoint.Kind.MANAGED and spec.endpoint_mode == "existing":
        ep = spec.existing_endpoint
        if ep is None:
            return Check("name", "Endpoint", "todo", "Choose the endpoint.", field="existing")
        if ep.deployments.alive().filter(name=spec.deployment_name).exists():
            return Check(
                "name",
                "Deployment name",
                "fail",
                f"{ep.name} already has a deployment named {spec.deployment_name}.",
                field="deployment_name",
            )
        return Check("name", "Deployment name", "ok", f"{spec.deployment_name} is free.")
    title = "Name follows Azure's rules and is free in the region"
    name = spec.name
    if not name:
        return Check("name", title, "todo", "Choose a name.", field="name")
    if not ENDPOINT_NAME_RE.match(name):
        return Check(
            "name",
            title,
            "fail",
            f"{name!r} is not a valid endpoint name: 3 to 32 letters, digits or hyphens, "
            "starting with a letter and not ending with a hyphen.",
            field="name",
        )
    # The name is part of the endpoint URL, so it must be unique in the whole region.
    taken = (
        Endpoint.objects.alive()
        .filter(name__iexact=name)
        .filter(region=ws.region)
        .select_related("workspace")
        .first()
    )
    if taken is not None:
        where = "this workspace" if taken.workspace_id == ws.pk else f"region {ws.region}"
        return Check(
            "name",
            title,
            "fail",
            f"{name} is taken in {where}; the name becomes part of the endpoint URL, so it "
            "must be unique in the region.",
            field="name",
        )
    return Check("name", title, "ok", f"{name} is free in {ws.region}.")


def _managed(spec: DeploySpec, ws: Workspace, facts: ComputeSnapshot) -> list[Check]:
    checks = []
    if not ENDPOINT_NAME_RE.match(spec.deployment_name):
        checks.append(
            Check(
                "deployment_name",
                "Deployment name",
                "fail",
                f"{spec.deployment_name!r} is not a valid deployment name: 3 to 32 letters, "
                "digits or hyphens, starting with a letter.",
                field="deployment_name",
            )
        )
    if spec.endpoint_mode == "existing" and spec.existing_endpoint is not None:
        others = spec.existing_endpoint.deployments.alive().aggregate(t=Sum("traffic_percent"))["t"]
        if (others or 0) + spec.traffic_percent > 100:
            checks.append(
                Check(
                    "traffic",
                    "Traffic",
                    "fail",
                    f"The other deployments of {spec.existing_endpoint.name} take {others}% of "
                    f"its traffic; this one can take at most {100 - others}%.",
                    field="traffic_percent",
                )
            )
    if not facts.known:
        checks.append(
            Check(
                "quota",
                "VM size and core quota",
                "warn",
                f"The VM sizes and core quota of {ws.region} are not in the inventory yet (the "
                "Azure sync stores them). The deploy job checks both with Azure before it "
                "creates anything.",
            )
        )
    elif not spec.vm_sku:
        checks.append(Check("sku", "VM size", "todo", "Choose a VM size.", field="vm_sku"))
    elif spec.vm_sku not in facts.sizes:
        checks.append(
            Check(
                "sku",
                "VM size offered in the region",
                "fail",
                f"{spec.vm_sku} is not offered in {ws.region}; choose one of "
                f"{', '.join(sorted(facts.sizes))}.",
                field="vm_sku",
            )
        )
    else:
        cores, family = facts.sizes[spec.vm_sku]
        needed = cores * spec.instance_count
        used, limit = facts.usage.get(family, (0, 0))
        headroom = max(0, limit - used)
        ok = needed <= headroom
        checks.append(
            Check(
                "quota",
                "Cores within quota",
                "ok" if ok else "fail",
                f"{spec.vm_sku} x {spec.instance_count} needs {needed} {family} cores; "
                f"{headroom} of {limit} are free in {ws.region}"
                + ("." if ok else ". Choose fewer instances or a smaller size, or ask for quota."),
                field="" if ok else "instance_count",
            )
        )
    if spec.data_collection:
        local = ws.provider == Provider.LOCAL
        checks.append(
            Check(
                "data_collection",
                "Inference data collection (preview)",
                "fail" if local else "warn",
                "The local runtime does not collect inference data; untick the option."
                if local
                else "The deployment's inputs and outputs are collected into the workspace's "
                "default blob storage (Azure ML's data collector); mind what your prompts contain.",
                field="data_collection" if local else "",
            )
        )
    return checks
