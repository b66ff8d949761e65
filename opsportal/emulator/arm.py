"""Azure Resource Manager: cloud metadata, subscriptions, resource groups, Machine Learning
workspaces, Marketplace model subscriptions (and the SaaS resources they create), serverless
endpoints, managed online endpoints and deployments, VM sizes, usages and quotas, and the
long-running operations behind them. BEHAVIOUR.md lists each rule with its source."""

import re
import uuid
from typing import Any

from starlette.responses import Response

from opsportal.emulator.routing import AUTH_NONE, Call, Router, arm_json, iso, retry_after
from opsportal.emulator.state import (
    MLS,
    ArmError,
    Deployment,
    MarketplaceSubscription,
    OnlineEndpoint,
    Operation,
    SaasResource,
    ServerlessEndpoint,
    State,
    Workspace,
    new_guid,
    new_key,
    not_found,
)

router = Router()
SUB = "/subscriptions/{sub}"
RG = SUB + "/resourceGroups/{rg}"
W = RG + f"/providers/{MLS}/workspaces/{{ws}}"
LOC = SUB + f"/providers/{MLS}/locations/{{loc}}"
PAGE = 50
NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{2,31}$")


def system_data(emu: Any, created: Any) -> dict[str, Any]:
    who = emu.state.world["clients"][0]["client_id"]
    return {
        "createdAt": iso(created),
        "createdBy": who,
        "createdByType": "Application",
        "lastModifiedAt": iso(created),
        "lastModifiedBy": who,
        "lastModifiedByType": "Application",
    }


def paged(call: Call, items: list[Any], path: str, emu: Any) -> dict[str, Any]:
    """One page of a list, with ARM's nextLink ($skip) when more remain."""
    try:
        skip = max(0, int(call.query.get("$skip", "0")))
    except ValueError:
        skip = 0
    body: dict[str, Any] = {"value": items[skip : skip + PAGE]}
    if skip + PAGE < len(items):
        body["nextLink"] = (
            f"{emu.state.base_url}{path}?api-version={call.api_version}&$skip={skip + PAGE}"
        )
    return body


def lro_headers(emu: Any, op: Operation, api_version: str, *, location: bool) -> dict[str, str]:
    base = (
        f"{emu.state.base_url}/subscriptions/{op.subscription}/providers/{MLS}"
        f"/locations/{op.location}"
    )
    query = f"?api-version={api_version or '2024-01-01-preview'}"
    headers = {
        "Azure-AsyncOperation": f"{base}/mfeOperationsStatus/{op.id}{query}",
        "Retry-After": retry_after(
            emu.state.clock.real_seconds(op.seconds_left(emu.state.clock.now()))
        ),
        "x-ms-async-operation-timeout": "PT1H",
    }
    if location:
        headers["Location"] = f"{base}/mfeOperationResults/{op.id}{query}"
    return headers


def ws_of(emu: Any, call: Call) -> Workspace:
    p = call.params
    return emu.state.workspace(p["sub"], p["rg"], p["ws"])


def check_name(name: str, what: str) -> None:
    if not NAME.match(name):
        raise ArmError(
            400,
            "BadArgument",
            f"{what} name '{name}' is invalid: 3 to 32 characters, letters, digits and hyphens, "
            "starting with a letter.",
        )


# --- cloud metadata -----------------------------------------------------------------------------


@router.add("GET", "/metadata/endpoints", "Metadata.Endpoints", auth=AUTH_NONE, throttle="")
def metadata_endpoints(emu: Any, call: Call) -> Response:
    return arm_json(emu.cloud_metadata())


# --- subscriptions and resource groups ----------------------------------------------------------


def subscription_json(emu: Any, sub: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"/subscriptions/{sub['id']}",
        "authorizationSource": "RoleBased",
        "managedByTenants": [],
        "subscriptionId": sub["id"],
        "tenantId": emu.state.tenant["id"],
        "displayName": sub["display_name"],
        "state": sub.get("state", "Enabled"),
        "subscriptionPolicies": {
            "locationPlacementId": "Public_2014-09-01",
            "quotaId": sub.get("quota_id", "PayAsYouGo_2014-09-01"),
            "spendingLimit": sub.get("spending_limit", "Off"),
        },
        "tags": sub.get("tags", {}),
    }


@router.add("GET", "/subscriptions", "Subscriptions.List", throttle="tenant-reads")
def subscriptions_list(emu: Any, call: Call) -> Response:
    subs = [subscription_json(emu, s) for s in emu.state.subscriptions.values()]
    return arm_json({"value": subs, "count": {"type": "Total", "value": len(subs)}})


@router.add("GET", SUB, "Subscriptions.Get")
def subscription_get(emu: Any, call: Call) -> Response:
    return arm_json(subscription_json(emu, emu.state.subscription(call.params["sub"])))


def rg_json(sub: str, rg: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"/subscriptions/{sub}/resourceGroups/{rg['name']}",
        "name": rg["name"],
        "type": "Microsoft.Resources/resourceGroups",
        "location": rg["location"],
        "tags": rg.get("tags", {}),
        "properties": {"provisioningState": "Succeeded"},
    }


@router.add("GET", SUB + "/resourceGroups", "ResourceGroups.List")
def resource_groups_list(emu: Any, call: Call) -> Response:
    sub = emu.state.subscription(call.params["sub"])
    return arm_json({"value": [rg_json(sub["id"], rg) for rg in sub.get("resource_groups", [])]})


@router.add("GET", RG, "ResourceGroups.Get")
def resource_group_get(emu: Any, call: Call) -> Response:
    sub = emu.state.subscription(call.params["sub"])
    return arm_json(rg_json(sub["id"], emu.state.resource_group(sub["id"], call.params["rg"])))


@router.add("GET", RG + "/resources", "Resources.ListByResourceGroup")
def resources_list(emu: Any, call: Call) -> Response:
    """The generic list (id, name, type, location, tags), with `$filter=resourceType eq '...'`."""
    state = emu.state
    sub = state.subscription(call.params["sub"])["id"]
    rg = state.resource_group(sub, call.params["rg"])["name"].lower()
    items: list[dict[str, Any]] = []
    for ws in state.workspaces.values():
        if (ws.subscription, ws.resource_group.lower()) == (sub, rg):
            items.append(
                {
                    "id": ws.id,
                    "name": ws.name,
                    "type": f"{MLS}/workspaces",
                    "location": ws.location,
                    "tags": ws.tags,
                }
            )
    for saas in state.saas.values():
        if (saas.subscription, saas.resource_group.lower()) == (sub, rg):
            items.append(
                {
                    "id": saas.id,
                    "name": saas.name,
                    "type": "Microsoft.SaaS/resources",
                    "location": "global",
                    "tags": {},
                }
            )
    for ep in state.online.values():
        if (ep.workspace.subscription, ep.workspace.resource_group.lower()) == (sub, rg):
            items.append(
                {
                    "id": ep.id,
                    "name": f"{ep.workspace.name}/{ep.name}",
                    "type": f"{MLS}/workspaces/onlineEndpoints",
                    "location": ep.workspace.location,
                    "tags": ep.tags,
                }
            )
    wanted = re.search(
        r"resourceType\s+eq\s+'([^']+)'", call.query.get("$filter", ""), re.IGNORECASE
    )
    if wanted:
        items = [i for i in items if i["type"].lower() == wanted.group(1).lower()]
    return arm_json({"value": items})


# --- workspaces ---------------------------------------------------------------------------------


def workspace_json(emu: Any, ws: Workspace) -> dict[str, Any]:
    rg_id = f"/subscriptions/{ws.subscription}/resourceGroups/{ws.resource_group}/providers"
    short = re.sub(r"[^a-z0-9]", "", ws.name.lower())[:14]
    return {
        "id": ws.id,
        "name": ws.name,
        "type": f"{MLS}/workspaces",
        "location": ws.location,
        "tags": ws.tags,
        "kind": "Default",
        "identity": {
            "type": "SystemAssigned",
            "principalId": ws.workspace_id,
            "tenantId": emu.state.tenant["id"],
        },
        "sku": {"name": "Basic", "tier": "Basic"},
        "systemData": system_data(emu, ws.created),
        "properties": {
            "friendlyName": ws.name,
            "description": "",
            "workspaceId": ws.workspace_id,
            "provisioningState": "Succeeded",
            "storageAccount": f"{rg_id}/Microsoft.Storage/storageAccounts/st{short}",
            "keyVault": f"{rg_id}/Microsoft.KeyVault/vaults/kv{short}",
            "applicationInsights": f"{rg_id}/Microsoft.insights/components/ai{short}",
            "hbiWorkspace": False,
            "publicNetworkAccess": "Enabled",
            "v1LegacyMode": False,
            "discoveryUrl": f"{emu.state.base_url}/discovery",
        },
    }


@router.add("GET", SUB + f"/providers/{MLS}/workspaces", "Workspaces.ListBySubscription")
def workspaces_by_subscription(emu: Any, call: Call) -> Response:
    sub = emu.state.subscription(call.params["sub"])["id"]
    found = [workspace_json(emu, w) for w in emu.state.workspaces.values() if w.subscription == sub]
    return arm_json(paged(call, found, call.path, emu))


@router.add("GET", RG + f"/providers/{MLS}/workspaces", "Workspaces.ListByResourceGroup")
def workspaces_by_group(emu: Any, call: Call) -> Response:
    sub = emu.state.subscription(call.params["sub"])["id"]
    rg = emu.state.resource_group(sub, call.params["rg"])["name"].lower()
    found = [
        workspace_json(emu, w)
        for w in emu.state.workspaces.values()
        if w.subscription == sub and w.resource_group.lower() == rg
    ]
    return arm_json(paged(call, found, call.path, emu))


@router.add("GET", W, "Workspaces.Get")
def workspace_get(emu: Any, call: Call) -> Response:
    return arm_json(workspace_json(emu, ws_of(emu, call)))


# --- Marketplace subscriptions and SaaS resources -----------------------------------------------


def marketplace_json(emu: Any, m: MarketplaceSubscription) -> dict[str, Any]:
    return {
        "id": m.id,
        "name": m.name,
        "type": f"{MLS}/workspaces/marketplaceSubscriptions",
        "systemData": system_data(emu, m.created),
        "properties": {
            "modelId": m.model_id,
            "marketplacePlan": {
                "publisherId": m.plan["publisher_id"],
                "offerId": m.plan["offer_id"],
                "planId": m.plan["plan_id"],
            },
            "marketplaceSubscriptionStatus": m.status,
            "provisioningState": m.provisioning_state,
        },
    }


def saas_json(emu: Any, s: SaasResource) -> dict[str, Any]:
    return {
        "id": s.id,
        "name": s.name,
        "type": "Microsoft.SaaS/resources",
        "location": "global",
        "tags": {},
        "properties": {
            "subscriptionId": s.saas_subscription_id,
            "description": f"{s.plan['offer_name']} for workspace {s.workspace.name}",
            "status": s.status,
            "statusReason": "None",
            "quantity": None,
            "publisherName": s.plan["publisher_id"],
            "planName": s.plan["plan_id"],
            "offerName": s.plan["offer_id"],
            "termUnit": "P1M",
            "billingPeriod": None,
            "termStartDate": iso(s.created),
            "termEndDate": None,
            "autoRenew": True,
            "isFreeTrial": False,
            "storeFront": "AzureMachineLearning",
            "purchaserEmail": None,
            "privateOfferId": None,
            "productCode": s.saas_subscription_id,
        },
        "systemData": system_data(emu, s.created),
    }


def marketplace_of(state: State, ws: Workspace, model_id: str) -> MarketplaceSubscription | None:
    for m in state.marketplace.values():
        if m.workspace is ws and m.model_id.lower() == model_id.lower():
            return m
    return None


@router.add("GET", W + "/marketplaceSubscriptions", "MarketplaceSubscriptions.List")
def marketplace_list(emu: Any, call: Call) -> Response:
    ws = ws_of(emu, call)
    found = [marketplace_json(emu, m) for m in emu.state.marketplace.values() if m.workspace is ws]
    return arm_json(paged(call, found, call.path, emu))


def marketplace_find(emu: Any, call: Call) -> MarketplaceSubscription:
    ws = ws_of(emu, call)
    found = emu.state.marketplace.get((ws.key, call.params["name"].lower()))
    if found is None:
        raise not_found(
            f"{MLS}/workspaces/{ws.name}/marketplaceSubscriptions",
            call.params["name"],
            ws.resource_group,
        )
    return found


@router.add("GET", W + "/marketplaceSubscriptions/{name}", "MarketplaceSubscriptions.Get")
def marketplace_get(emu: Any, call: Call) -> Response:
    return arm_json(marketplace_json(emu, marketplace_find(emu, call)))


@router.add(
    "PUT", W + "/marketplaceSubscriptions/{name}", "MarketplaceSubscriptions.CreateOrUpdate"
)
def marketplace_put(emu: Any, call: Call) -> Response:
    state = emu.state
    ws = ws_of(emu, call)
    name = call.params["name"]
    model_id = ((call.json().get("properties") or {}).get("modelId") or "").strip()
    existing = state.marketplace.get((ws.key, name.lower()))
    if existing is not None:
        if existing.model_id.lower() != model_id.lower():
            raise ArmError(
                400,
                "BadArgument",
                f"Marketplace subscription {name} is for {existing.model_id}; its model cannot "
                "change.",
            )
        return arm_json(marketplace_json(emu, existing), 200)
    model, version = state.model(model_id)
    if model is None or version:
        raise ArmError(
            400,
            "BadArgument",
            f"'{model_id}' is not an unversioned model id of a model offered through Azure "
            "Marketplace, e.g. azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct.",
        )
    if not model.get("marketplace"):
        raise ArmError(
            400,
            "BadArgument",
            f"{model['name']} is not sold through Azure Marketplace; no subscription is needed.",
        )
    other = marketplace_of(state, ws, model["id"])
    if other is not None:
        raise ArmError(
            409,
            "Conflict",
            f"Workspace {ws.name} already has Marketplace subscription {other.name} for "
            f"{model['name']}; one subscription per offering per workspace.",
        )
    now = state.clock.now()
    plan = model["marketplace"]
    saas = SaasResource(
        subscription=ws.subscription,
        resource_group=ws.resource_group,
        name=f"{plan['offer_name']}-{new_guid(state.rng)}",
        model_id=model["id"],
        plan=plan,
        status="PendingFulfillmentStart",
        created=now,
        workspace=ws,
        saas_subscription_id=new_guid(state.rng),
    )
    state.saas[(saas.subscription, saas.resource_group.lower(), saas.name.lower())] = saas
    sub = MarketplaceSubscription(
        workspace=ws,
        name=name,
        model_id=model["id"],
        plan=plan,
        provisioning_state="Creating",
        created=now,
        saas=saas,
    )
    state.marketplace[(ws.key, name.lower())] = sub

    def done() -> None:
        sub.provisioning_state = "Succeeded"
        if saas.status == "PendingFulfillmentStart":
            saas.status = "Subscribed"

    op = state.operation_start(
        subscription=ws.subscription, location=ws.location, kind="marketplace_create", apply=done
    )
    return arm_json(
        marketplace_json(emu, sub), 201, lro_headers(emu, op, call.api_version, location=False)
    )


@router.add("DELETE", W + "/marketplaceSubscriptions/{name}", "MarketplaceSubscriptions.Delete")
def marketplace_delete(emu: Any, call: Call) -> Response:
    state = emu.state
    ws = ws_of(emu, call)
    sub = state.marketplace.get((ws.key, call.params["name"].lower()))
    if sub is None:
        return Response(status_code=204)
    sub.provisioning_state = "Deleting"

    def done() -> None:
        state.marketplace.pop((ws.key, sub.name.lower()), None)
        sub.saas.status = "Unsubscribed"
        for ep in state.serverless.values():
            if ep.marketplace is sub:
                ep.endpoint_state = "Suspended"

    op = state.operation_start(
        subscription=ws.subscription,
        location=ws.location,
        kind="marketplace_delete",
        apply=done,
        result_status=204,
    )
    return Response(status_code=202, headers=lro_headers(emu, op, call.api_version, location=True))


SAAS = "/providers/Microsoft.SaaS/resources"


@router.add("GET", RG + SAAS + "/{name}", "SaaS.Get")
def saas_get(emu: Any, call: Call) -> Response:
    state = emu.state
    sub = state.subscription(call.params["sub"])["id"]
    state.resource_group(sub, call.params["rg"])
    found = state.saas.get((sub, call.params["rg"].lower(), call.params["name"].lower()))
    if found is None:
        raise not_found("Microsoft.SaaS/resources", call.params["name"], call.params["rg"])
    return arm_json(saas_json(emu, found))


@router.add("GET", RG + SAAS, "SaaS.ListByResourceGroup")
def saas_list_by_group(emu: Any, call: Call) -> Response:
    state = emu.state
    sub = state.subscription(call.params["sub"])["id"]
    state.resource_group(sub, call.params["rg"])
    rg = call.params["rg"].lower()
    items = [
        saas_json(emu, s)
        for s in state.saas.values()
        if (s.subscription, s.resource_group.lower()) == (sub, rg)
    ]
    return arm_json({"value": items, "nextLink": None})


@router.add("GET", SUB + SAAS, "SaaS.ListBySubscription")
def saas_list_by_subscription(emu: Any, call: Call) -> Response:
    sub = emu.state.subscription(call.params["sub"])["id"]
    items = [saas_json(emu, s) for s in emu.state.saas.values() if s.subscription == sub]
    return arm_json({"value": items, "nextLink": None})


# --- serverless endpoints -----------------------------------------------------------------------


def serverless_uri(emu: Any, ep: ServerlessEndpoint) -> str:
    return f"{emu.state.base_url}/endpoints/serverless/{ep.workspace.location}/{ep.name}"


def serverless_json(emu: Any, ep: ServerlessEndpoint) -> dict[str, Any]:
    return {
        "id": ep.id,
        "name": ep.name,
        "type": f"{MLS}/workspaces/serverlessEndpoints",
        "location": ep.workspace.location,
        "tags": ep.tags,
        "sku": {"name": "Consumption"},
        "systemData": system_data(emu, ep.created),
        "properties": {
            "authMode": "Key",
            "contentSafety": {"contentSafetyStatus": ep.content_safety},
            "endpointState": ep.endpoint_state,
            "inferenceEndpoint": {"uri": serverless_uri(emu, ep), "headers": {}},
            "marketplaceSubscriptionId": ep.marketplace.id if ep.marketplace else None,
            "modelSettings": {"modelId": ep.model["id"]},
            "provisioningState": ep.provisioning_state,
        },
    }


def serverless_find(emu: Any, call: Call) -> ServerlessEndpoint:
    ws = ws_of(emu, call)
    found = emu.state.serverless.get((ws.key, call.params["name"].lower()))
    if found is None:
        raise not_found(
            f"{MLS}/workspaces/{ws.name}/serverlessEndpoints",
            call.params["name"],
            ws.resource_group,
        )
    return found


@router.add("GET", W + "/serverlessEndpoints", "ServerlessEndpoints.List")
def serverless_list(emu: Any, call: Call) -> Response:
    ws = ws_of(emu, call)
    found = [serverless_json(emu, e) for e in emu.state.serverless.values() if e.workspace is ws]
    return arm_json(paged(call, found, call.path, emu))


@router.add("GET", W + "/serverlessEndpoints/{name}", "ServerlessEndpoints.Get")
def serverless_get(emu: Any, call: Call) -> Response:
    return arm_json(serverless_json(emu, serverless_find(emu, call)))


@router.add("PUT", W + "/serverlessEndpoints/{name}", "ServerlessEndpoints.CreateOrUpdate")
def serverless_put(emu: Any, call: Call) -> Response:
    state = emu.state
    ws = ws_of(emu, call)
    name = call.params["name"]
    body = call.json()
    props = body.get("properties") or {}
    model_id = ((props.get("modelSettings") or {}).get("modelId") or "").strip()
    location = (body.get("location") or ws.location).lower()
    existing = state.serverless.get((ws.key, name.lower()))
    if existing is not None:
        if model_id and model_id.lower() != existing.model["id"].lower():
            raise ArmError(
                400, "BadArgument", f"The model of serverless endpoint {name} cannot change."
            )
        if existing.provisioning_state not in ("Succeeded", "Failed"):
            raise ArmError(
                409,
                "Conflict",
                f"{name} is {existing.provisioning_state}; try again when it is done.",
            )
        existing.tags = body.get("tags", existing.tags) or {}
        existing.provisioning_state = "Updating"

        def updated() -> None:
            existing.provisioning_state = "Succeeded"

        op = state.operation_start(
            subscription=ws.subscription,
            location=ws.location,
            kind="serverless_update",
            apply=updated,
        )
        return arm_json(
            serverless_json(emu, existing),
            200,
            lro_headers(emu, op, call.api_version, location=False),
        )

    check_name(name, "Serverless endpoint")
    if location != ws.location:
        raise ArmError(
            400,
            "LocationMismatch",
            f"A serverless endpoint is created in its workspace's region ({ws.location}), not "
            f"{location}.",
        )
    model, version = state.model(model_id)
    if version:
        raise ArmError(
            400,
            "BadArgument",
            f"'{model_id}' pins a version. Serverless endpoints take the unversioned model id and "
            "always deploy the latest version.",
        )
    if model is None:
        raise ArmError(
            400, "BadArgument", f"No model '{model_id}' in the registries this cloud knows."
        )
    regions = model.get("serverless_regions") or []
    if not regions:
        raise ArmError(
            400,
            "ServerlessModelNotAvailableInRegion",
            f"{model['name']} is not offered as a serverless API in any region; deploy it to "
            "managed compute.",
        )
    if ws.location not in regions:
        raise ArmError(
            400,
            "ServerlessModelNotAvailableInRegion",
            f"{model['name']} is not offered as a serverless API in {ws.location}. Regions: "
            f"{', '.join(regions)}.",
        )
    marketplace = marketplace_of(state, ws, model["id"])
    if model.get("marketplace") and (marketplace is None or marketplace.status != "Subscribed"):
        raise ArmError(
            400,
            "MarketplaceSubscriptionRequired",
            f"Workspace {ws.name} has no active Azure Marketplace subscription for "
            f"{model['name']}: "
            "create a marketplaceSubscriptions resource for it first.",
        )
    for other in state.serverless.values():
        if other.workspace is ws and other.model["id"].lower() == model["id"].lower():
            raise ArmError(
                409,
                "Conflict",
                f"Workspace {ws.name} already has serverless endpoint {other.name} for "
                f"{model['name']}: one deployment per model per workspace.",
            )
    holder = state.endpoint_name_holder("serverless", ws.location, name)
    if holder is not None:
        raise ArmError(
            409,
            "EndpointNameNotAvailable",
            f"The endpoint name {name} is already in use in {ws.location}; endpoint names are "
            "unique within an Azure region.",
        )
    ep = ServerlessEndpoint(
        workspace=ws,
        name=name,
        model=model,
        provisioning_state="Creating",
        endpoint_state="Creating",
        primary_key=new_key(state.rng),
        secondary_key=new_key(state.rng),
        tags=body.get("tags") or {},
        created=state.clock.now(),
        marketplace=marketplace,
        content_safety=((props.get("contentSafety") or {}).get("contentSafetyStatus") or "Enabled"),
    )
    state.serverless[(ws.key, name.lower())] = ep

    def created() -> None:
        if ep.provisioning_state == "Creating":
            ep.provisioning_state, ep.endpoint_state = "Succeeded", "Online"

    op = state.operation_start(
        subscription=ws.subscription, location=ws.location, kind="serverless_create", apply=created
    )
    return arm_json(
        serverless_json(emu, ep), 201, lro_headers(emu, op, call.api_version, location=False)
    )


@router.add("DELETE", W + "/serverlessEndpoints/{name}", "ServerlessEndpoints.Delete")
def serverless_delete(emu: Any, call: Call) -> Response:
    state = emu.state
    ws = ws_of(emu, call)
    ep = state.serverless.get((ws.key, call.params["name"].lower()))
    if ep is None:
        return Response(status_code=204)
    ep.provisioning_state, ep.endpoint_state = "Deleting", "Deleting"

    def deleted() -> None:
        state.serverless.pop((ws.key, ep.name.lower()), None)

    op = state.operation_start(
        subscription=ws.subscription,
        location=ws.location,
        kind="serverless_delete",
        apply=deleted,
        result_status=204,
    )
    return Response(status_code=202, headers=lro_headers(emu, op, call.api_version, location=True))


def keys_json(ep: Any) -> dict[str, str]:
    return {"primaryKey": ep.primary_key, "secondaryKey": ep.secondary_key}


@router.add("POST", W + "/serverlessEndpoints/{name}/listKeys", "ServerlessEndpoints.ListKeys")
def serverless_keys(emu: Any, call: Call) -> Response:
    return arm_json(keys_json(serverless_find(emu, call)))


def regenerate(emu: Any, ep: Any, call: Call) -> None:
    """keyValue, when given and different from the key in use, becomes the new key; otherwise
    (absent, or the current key, which azure-ai-ml sends) a new random key is made."""
    body = call.json()
    slot = str(body.get("keyType") or "").lower()
    if slot not in ("primary", "secondary"):
        raise ArmError(400, "BadArgument", "keyType must be Primary or Secondary.")
    current = ep.primary_key if slot == "primary" else ep.secondary_key
    value = body.get("keyValue")
    new = value if value and value != current else new_key(emu.state.rng)
    setattr(ep, f"{slot}_key", new)


@router.add(
    "POST", W + "/serverlessEndpoints/{name}/regenerateKeys", "ServerlessEndpoints.RegenerateKeys"
)
def serverless_regenerate(emu: Any, call: Call) -> Response:
    ep = serverless_find(emu, call)
    regenerate(emu, ep, call)
    return arm_json(keys_json(ep))


# --- managed online endpoints and deployments ---------------------------------------------------


def online_uri(emu: Any, ep: OnlineEndpoint) -> str:
    return f"{emu.state.base_url}/endpoints/online/{ep.workspace.location}/{ep.name}"


def online_json(emu: Any, ep: OnlineEndpoint) -> dict[str, Any]:
    return {
        "id": ep.id,
        "name": ep.name,
        "type": f"{MLS}/workspaces/onlineEndpoints",
        "location": ep.workspace.location,
        "tags": ep.tags,
        "kind": "Managed",
        "identity": {
            "type": "SystemAssigned",
            "principalId": str(uuid.uuid5(uuid.NAMESPACE_URL, ep.id.lower())),
            "tenantId": emu.state.tenant["id"],
        },
        "systemData": system_data(emu, ep.created),
        "properties": {
            "authMode": ep.auth_mode,
            "description": ep.description,
            "properties": {},
            "scoringUri": f"{online_uri(emu, ep)}/score",
            "swaggerUri": f"{online_uri(emu, ep)}/swagger.json",
            "provisioningState": ep.provisioning_state,
            "traffic": dict(ep.traffic),
            "publicNetworkAccess": "Enabled",
        },
    }


PROBE = {
    "failureThreshold": 30,
    "successThreshold": 1,
    "timeout": "PT2S",
    "period": "PT10S",
    "initialDelay": "PT10S",
}


def deployment_json(emu: Any, d: Deployment) -> dict[str, Any]:
    return {
        "id": d.id,
        "name": d.name,
        "type": f"{MLS}/workspaces/onlineEndpoints/deployments",
        "location": d.endpoint.workspace.location,
        "tags": {},
        "kind": "Managed",
        "sku": {"name": "Default", "tier": "Standard", "capacity": d.capacity},
        "systemData": system_data(emu, d.created),
        "properties": {
            "appInsightsEnabled": False,
            "egressPublicNetworkAccess": "Enabled",
            "environmentVariables": {},
            "properties": {},
            "requestSettings": {"requestTimeout": "PT5S", "maxConcurrentRequestsPerInstance": 1},
            "livenessProbe": PROBE,
            "readinessProbe": PROBE,
            "scaleSettings": {"scaleType": "Default"},
            **d.properties,
            "endpointComputeType": "Managed",
            "model": d.model,
            "instanceType": d.instance_type,
            "provisioningState": d.provisioning_state,
        },
    }


def online_find(emu: Any, call: Call, key: str = "name") -> OnlineEndpoint:
    ws = ws_of(emu, call)
    found = emu.state.online.get((ws.key, call.params[key].lower()))
    if found is None:
        raise not_found(
            f"{MLS}/workspaces/{ws.name}/onlineEndpoints", call.params[key], ws.resource_group
        )
    return found


def traffic_check(ep: OnlineEndpoint, traffic: dict[str, Any]) -> dict[str, int]:
    clean: dict[str, int] = {}
    for name, value in traffic.items():
        if name not in ep.deployments:
            raise ArmError(
                400,
                "BadArgument",
                f"Traffic names deployment {name}, which endpoint {ep.name} does not have.",
            )
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
            raise ArmError(
                400, "BadArgument", f"Traffic for {name} must be a whole percentage 0-100."
            )
        clean[name] = value
    total = sum(clean.values())
    if total not in (0, 100):
        raise ArmError(
            400,
            "BadArgument",
            f"Traffic of endpoint {ep.name} adds up to {total}; the deployments' traffic must "
            "add up to 0 or 100.",
        )
    return clean


@router.add("GET", W + "/onlineEndpoints", "OnlineEndpoints.List")
def online_list(emu: Any, call: Call) -> Response:
    ws = ws_of(emu, call)
    found = [online_json(emu, e) for e in emu.state.online.values() if e.workspace is ws]
    return arm_json(paged(call, found, call.path, emu))


@router.add("GET", W + "/onlineEndpoints/{name}", "OnlineEndpoints.Get")
def online_get(emu: Any, call: Call) -> Response:
    return arm_json(online_json(emu, online_find(emu, call)))


def online_write(emu: Any, call: Call, *, patch: bool) -> Response:
    state = emu.state
    ws = ws_of(emu, call)
    name = call.params["name"]
    body = call.json()
    props = body.get("properties") or {}
    ep = state.online.get((ws.key, name.lower()))
    if ep is None:
        if patch:
            raise not_found(f"{MLS}/workspaces/{ws.name}/onlineEndpoints", name, ws.resource_group)
        check_name(name, "Online endpoint")
        if (body.get("location") or ws.location).lower() != ws.location:
            raise ArmError(
                400,
                "LocationMismatch",
                f"An online endpoint is created in its workspace's region ({ws.location}).",
            )
        mode = str(props.get("authMode") or "Key")
        if mode.lower() not in ("key", "amltoken", "aadtoken"):
            raise ArmError(
                400, "BadArgument", f"authMode {mode} is not one of Key, AMLToken, AADToken."
            )
        if state.endpoint_name_holder("online", ws.location, name) is not None:
            raise ArmError(
                409,
                "EndpointNameNotAvailable",
                f"The endpoint name {name} is already in use in {ws.location}; endpoint names are "
                "unique within an Azure region.",
            )
        ep = OnlineEndpoint(
            workspace=ws,
            name=name,
            auth_mode={"key": "Key", "amltoken": "AMLToken", "aadtoken": "AADToken"}[mode.lower()],
            traffic={},
            primary_key=new_key(state.rng),
            secondary_key=new_key(state.rng),
            provisioning_state="Creating",
            description=props.get("description") or "",
            tags=body.get("tags") or {},
            created=state.clock.now(),
        )
        if props.get("traffic"):
            raise ArmError(
                400, "BadArgument", "A new endpoint has no deployments to send traffic to."
            )
        state.online[(ws.key, name.lower())] = ep
        kind, status = "online_endpoint_create", 201
    else:
        if ep.provisioning_state not in ("Succeeded", "Failed"):
            raise ArmError(
                409,
                "Conflict",
                f"Endpoint {name} is {ep.provisioning_state}; try again when it is done.",
            )
        traffic = traffic_check(ep, props["traffic"]) if "traffic" in props else None
        if traffic is not None:
            ep.traffic = traffic
        if "description" in props:
            ep.description = props.get("description") or ""
        if "tags" in body:
            ep.tags = body.get("tags") or {}
        ep.provisioning_state = "Updating"
        kind, status = "online_endpoint_update", 200
    target = ep

    def done() -> None:
        if target.provisioning_state in ("Creating", "Updating"):
            target.provisioning_state = "Succeeded"

    op = state.operation_start(
        subscription=ws.subscription, location=ws.location, kind=kind, apply=done
    )
    return arm_json(
        online_json(emu, ep), status, lro_headers(emu, op, call.api_version, location=False)
    )


@router.add("PUT", W + "/onlineEndpoints/{name}", "OnlineEndpoints.CreateOrUpdate")
def online_put(emu: Any, call: Call) -> Response:
    return online_write(emu, call, patch=False)


@router.add("PATCH", W + "/onlineEndpoints/{name}", "OnlineEndpoints.Update")
def online_patch(emu: Any, call: Call) -> Response:
    return online_write(emu, call, patch=True)


def segment_close(d: Deployment, now: Any) -> None:
    if d.segments and d.segments[-1][1] is None:
        d.segments[-1][1] = now


@router.add("DELETE", W + "/onlineEndpoints/{name}", "OnlineEndpoints.Delete")
def online_delete(emu: Any, call: Call) -> Response:
    state = emu.state
    ws = ws_of(emu, call)
    ep = state.online.get((ws.key, call.params["name"].lower()))
    if ep is None:
        return Response(status_code=204)
    ep.provisioning_state = "Deleting"
    for d in ep.deployments.values():
        d.provisioning_state = "Deleting"

    def deleted() -> None:
        now = state.clock.now()
        for d in ep.deployments.values():
            segment_close(d, now)
            d.provisioning_state = "Deleted"
            state.deployment_history.append(d)
        state.online.pop((ws.key, ep.name.lower()), None)

    op = state.operation_start(
        subscription=ws.subscription,
        location=ws.location,
        kind="online_endpoint_delete",
        apply=deleted,
        result_status=204,
    )
    return Response(status_code=202, headers=lro_headers(emu, op, call.api_version, location=True))


@router.add("POST", W + "/onlineEndpoints/{name}/listKeys", "OnlineEndpoints.ListKeys")
def online_keys(emu: Any, call: Call) -> Response:
    ep = online_find(emu, call)
    if ep.auth_mode != "Key":
        raise ArmError(
            400, "BadArgument", f"Endpoint {ep.name} uses {ep.auth_mode} authentication, not keys."
        )
    return arm_json(keys_json(ep))


@router.add("POST", W + "/onlineEndpoints/{name}/regenerateKeys", "OnlineEndpoints.RegenerateKeys")
def online_regenerate(emu: Any, call: Call) -> Response:
    state = emu.state
    ep = online_find(emu, call)
    if ep.auth_mode != "Key":
        raise ArmError(
            400, "BadArgument", f"Endpoint {ep.name} uses {ep.auth_mode} authentication, not keys."
        )
    regenerate(emu, ep, call)
    ws = ep.workspace
    op = state.operation_start(
        subscription=ws.subscription,
        location=ws.location,
        kind="online_keys",
        apply=None,
        result_status=200,
    )
    return Response(status_code=202, headers=lro_headers(emu, op, call.api_version, location=True))


@router.add("POST", W + "/onlineEndpoints/{name}/token", "OnlineEndpoints.GetToken")
def online_token(emu: Any, call: Call) -> Response:
    ep = online_find(emu, call)
    raise ArmError(
        400,
        "BadArgument",
        f"Endpoint {ep.name} uses {ep.auth_mode} authentication; tokens are for AMLToken "
        "endpoints.",
    )


DEP = W + "/onlineEndpoints/{endpoint}/deployments"


def deployment_find(emu: Any, call: Call) -> Deployment:
    ep = online_find(emu, call, "endpoint")
    found = ep.deployments.get(call.params["name"].lower())
    if found is None:
        raise not_found(
            f"{MLS}/workspaces/{ep.workspace.name}/onlineEndpoints/{ep.name}/deployments",
            call.params["name"],
            ep.workspace.resource_group,
        )
    return found


@router.add("GET", DEP, "OnlineDeployments.List")
def deployments_list(emu: Any, call: Call) -> Response:
    ep = online_find(emu, call, "endpoint")
    return arm_json(
        paged(call, [deployment_json(emu, d) for d in ep.deployments.values()], call.path, emu)
    )


@router.add("GET", DEP + "/{name}", "OnlineDeployments.Get")
def deployment_get(emu: Any, call: Call) -> Response:
    return arm_json(deployment_json(emu, deployment_find(emu, call)))


def quota_error(
    emu: Any, sub: str, region: str, size_name: str, needed: int, skip: Deployment | None
) -> dict[str, str] | None:
    """OutOfQuota, as Azure ML reports it in the deployment's operation status, or None.
    `skip` is the deployment being created or changed: the cores it holds now are freed by the
    change, so they count as usage but not as additional need."""
    state = emu.state
    family = state.vm_sizes[size_name]["family"]
    used = state.cores_used(sub, region, skip=skip)
    held = 0
    if skip is not None and skip.segments and skip.holds_cores():
        size = state.vm_sizes.get(skip.instance_type, {})
        held = size.get("vCPUs", 0) * skip.capacity if size.get("family") == family else 0
    limit = state.core_quota(sub, region).get(family, 0)
    regional = int(state.subscription(sub).get("regional_core_limit", 10**6))
    if used.get(family, 0) + needed > limit or sum(used.values()) + needed > regional:
        return {
            "code": "OutOfQuota",
            "message": (
                f"Not enough quota available for {size_name} in SubscriptionId {sub}. Current "
                f"usage/limit: {used.get(family, 0) + held}/{limit}. Additional needed: "
                f"{needed - held} Please see troubleshooting guide, available here: "
                "https://aka.ms/oe-tsg#error-outofquota"
            ),
        }
    return None


def deployment_write(emu: Any, call: Call, *, patch: bool) -> Response:
    state = emu.state
    ep = online_find(emu, call, "endpoint")
    ws = ep.workspace
    name = call.params["name"]
    body = call.json()
    props = body.get("properties") or {}
    sku = body.get("sku") or {}
    current = ep.deployments.get(name.lower())
    if current is None and patch:
        raise not_found(
            f"{MLS}/workspaces/{ws.name}/onlineEndpoints/{ep.name}/deployments",
            name,
            ws.resource_group,
        )
    if ep.provisioning_state != "Succeeded":
        raise ArmError(
            409,
            "Conflict",
            f"Endpoint {ep.name} is {ep.provisioning_state}; deployments can change once it is "
            "Succeeded.",
        )
    if current is not None and current.provisioning_state not in ("Succeeded", "Failed"):
        raise ArmError(
            409,
            "Conflict",
            f"Deployment {name} is {current.provisioning_state}; try again when it is done.",
        )
    instance_type = props.get("instanceType") or (current.instance_type if current else "")
    capacity = sku.get("capacity", current.capacity if current else 1)
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
        raise ArmError(
            400,
            "BadArgument",
            "sku.capacity (the instance count) must be a whole number of at least 1.",
        )
    offered = state.regions.get(ws.location, {}).get("vm_sizes", [])
    if instance_type not in offered or instance_type not in state.vm_sizes:
        raise ArmError(
            400,
            "BadArgument",
            f"Instance type {instance_type or '(none)'} is not offered for managed online "
            f"endpoints in {ws.location}. Offered: {', '.join(offered) or 'none'}.",
        )
    now = state.clock.now()
    needed = state.vm_sizes[instance_type]["vCPUs"] * capacity
    if current is None:
        check_name(name, "Deployment")
        model = props.get("model") or ""
        if not model:
            raise ArmError(400, "BadArgument", "properties.model is required.")
        dep = Deployment(
            endpoint=ep,
            name=name,
            model=model,
            instance_type=instance_type,
            capacity=capacity,
            provisioning_state="Creating",
            created=now,
            properties={
                k: v
                for k, v in props.items()
                if k
                in (
                    "environmentVariables",
                    "requestSettings",
                    "livenessProbe",
                    "readinessProbe",
                    "description",
                )
            },
        )
        ep.deployments[name.lower()] = dep
        error = quota_error(emu, ws.subscription, ws.location, instance_type, needed, dep)
        if error is None:
            dep.segments.append([now, None, capacity, instance_type])

        def created() -> dict[str, str] | None:
            if error is not None:
                dep.provisioning_state = "Failed"
                return error
            if dep.provisioning_state == "Creating":
                dep.provisioning_state = "Succeeded"
            return None

        seconds = min(30.0, state.duration("deployment_create")) if error else None
        op = state.operation_start(
            subscription=ws.subscription,
            location=ws.location,
            kind="deployment_create",
            apply=created,
            seconds=seconds,
        )
        return arm_json(
            deployment_json(emu, dep), 201, lro_headers(emu, op, call.api_version, location=False)
        )

    dep = current
    error = quota_error(emu, ws.subscription, ws.location, instance_type, needed, dep)
    dep.provisioning_state = "Updating"
    previous = (dep.capacity, dep.instance_type)

    def updated() -> dict[str, str] | None:
        if error is not None:
            dep.provisioning_state = "Failed"
            return error
        moment = state.clock.now()
        if (capacity, instance_type) != previous:
            segment_close(dep, moment)
            dep.segments.append([moment, None, capacity, instance_type])
        dep.capacity, dep.instance_type = capacity, instance_type
        dep.provisioning_state = "Succeeded"
        return None

    seconds = min(30.0, state.duration("deployment_update")) if error else None
    op = state.operation_start(
        subscription=ws.subscription,
        location=ws.location,
        kind="deployment_update",
        apply=updated,
        seconds=seconds,
    )
    return arm_json(
        deployment_json(emu, dep), 200, lro_headers(emu, op, call.api_version, location=False)
    )


@router.add("PUT", DEP + "/{name}", "OnlineDeployments.CreateOrUpdate")
def deployment_put(emu: Any, call: Call) -> Response:
    return deployment_write(emu, call, patch=False)


@router.add("PATCH", DEP + "/{name}", "OnlineDeployments.Update")
def deployment_patch(emu: Any, call: Call) -> Response:
    return deployment_write(emu, call, patch=True)


@router.add("DELETE", DEP + "/{name}", "OnlineDeployments.Delete")
def deployment_delete(emu: Any, call: Call) -> Response:
    state = emu.state
    ep = online_find(emu, call, "endpoint")
    dep = ep.deployments.get(call.params["name"].lower())
    if dep is None:
        return Response(status_code=204)
    if ep.traffic.get(dep.name, 0) > 0:
        raise ArmError(
            400,
            "BadArgument",
            f"Deployment {dep.name} takes {ep.traffic[dep.name]}% of endpoint {ep.name}'s traffic; "
            "set its traffic to 0 before deleting it.",
        )
    dep.provisioning_state = "Deleting"
    ws = ep.workspace

    def deleted() -> None:
        segment_close(dep, state.clock.now())
        dep.provisioning_state = "Deleted"
        state.deployment_history.append(dep)
        ep.deployments.pop(dep.name.lower(), None)
        ep.traffic.pop(dep.name, None)

    op = state.operation_start(
        subscription=ws.subscription,
        location=ws.location,
        kind="deployment_delete",
        apply=deleted,
        result_status=204,
    )
    return Response(status_code=202, headers=lro_headers(emu, op, call.api_version, location=True))


# --- VM sizes, usages, quotas -------------------------------------------------------------------


def family_label(family: str) -> str:
    """standardNCADSA100v4Family -> Standard NCADSA100v4 Family (the usages' spelling)."""
    middle = re.sub(r"^standard", "", family, flags=re.IGNORECASE)
    middle = re.sub(r"Family$", "", middle)
    return f"Standard {middle} Family"


@router.add("GET", LOC + "/vmSizes", "VirtualMachineSizes.List")
def vm_sizes(emu: Any, call: Call) -> Response:
    state = emu.state
    state.subscription(call.params["sub"])
    names = state.regions.get(call.params["loc"].lower(), {}).get("vm_sizes", [])
    out = []
    for name in names:
        size = state.vm_sizes[name]
        out.append(
            {
                "name": name,
                "family": size["family"],
                "vCPUs": size["vCPUs"],
                "gpus": size.get("gpus", 0),
                "osVhdSizeMB": 1047552,
                "maxResourceVolumeMB": 65536,
                "memoryGB": size["memoryGB"],
                "lowPriorityCapable": True,
                "premiumIO": True,
                "estimatedVMPrices": {
                    "billingCurrency": state.world["cost"]["currency"],
                    "unitOfMeasure": "OneHour",
                    "values": [
                        {
                            "retailPrice": size["price_per_hour"],
                            "osType": "Linux",
                            "vmTier": "Standard",
                        }
                    ],
                },
                "supportedComputeTypes": ["AmlCompute", "ComputeInstance", "MIR"],
            }
        )
    return arm_json({"value": out})


@router.add("GET", LOC + "/usages", "Usages.List")
def usages(emu: Any, call: Call) -> Response:
    state = emu.state
    sub = state.subscription(call.params["sub"])
    region = call.params["loc"].lower()
    used = state.cores_used(sub["id"], region)
    base = f"/subscriptions/{sub['id']}/providers/{MLS}/locations/{region}/usages"
    out = [
        {
            "id": base,
            "type": f"{MLS}/dedicatedCores/usages",
            "currentValue": sum(used.values()),
            "limit": int(sub.get("regional_core_limit", 0)),
            "name": {
                "value": "Total Cluster Dedicated Regional vCPUs",
                "localizedValue": "Total Cluster Dedicated Regional vCPUs",
            },
            "unit": "Count",
        }
    ]
    for family, limit in sorted(state.core_quota(sub["id"], region).items()):
        label = f"{family_label(family)} Cluster Dedicated vCPUs"
        out.append(
            {
                "id": f"{base}/{label.replace(' ', '_')}",
                "type": f"{MLS}/vmFamily/usages",
                "currentValue": used.get(family, 0),
                "limit": limit,
                "name": {"value": label, "localizedValue": label},
                "unit": "Count",
            }
        )
    return arm_json({"value": out})


@router.add("GET", LOC + "/quotas", "Quotas.List")
def quotas(emu: Any, call: Call) -> Response:
    state = emu.state
    sub = state.subscription(call.params["sub"])
    region = call.params["loc"].lower()
    out = []
    for family, limit in sorted(state.core_quota(sub["id"], region).items()):
        label = f"{family_label(family)} Cluster Dedicated vCPUs"
        out.append(
            {
                "id": (
                    f"/subscriptions/{sub['id']}/providers/{MLS}/locations/{region}"
                    f"/quotas/{label.replace(' ', '_')}"
                ),
                "type": f"{MLS}/vmFamily/quotas",
                "limit": limit,
                "name": {"value": label, "localizedValue": label},
                "unit": "Count",
            }
        )
    return arm_json({"value": out})


# --- long-running operation status --------------------------------------------------------------


def operation_of(emu: Any, call: Call) -> Operation:
    op = emu.state.operations.get(call.params["id"])
    if op is None or op.subscription.lower() != call.params["sub"].lower():
        raise ArmError(404, "OperationNotFound", f"No operation {call.params['id']}.")
    return op


@router.add("GET", LOC + "/mfeOperationsStatus/{id}", "Operations.Status")
def operation_status(emu: Any, call: Call) -> Response:
    op = operation_of(emu, call)
    body: dict[str, Any] = {
        "id": call.path,
        "name": op.id,
        "status": op.status,
        "startTime": iso(op.started),
    }
    headers = {}
    if op.status == "InProgress":
        headers["Retry-After"] = retry_after(
            emu.state.clock.real_seconds(op.seconds_left(emu.state.clock.now()))
        )
    else:
        body["endTime"] = iso(op.due)
    if op.error:
        body["error"] = op.error
    return arm_json(body, 200, headers)


@router.add("GET", LOC + "/mfeOperationResults/{id}", "Operations.Result")
def operation_result(emu: Any, call: Call) -> Response:
    op = operation_of(emu, call)
    if op.status == "InProgress":
        wait = retry_after(emu.state.clock.real_seconds(op.seconds_left(emu.state.clock.now())))
        return Response(
            status_code=202,
            headers={
                "Location": f"{emu.state.base_url}{call.path}?api-version={call.api_version}",
                "Retry-After": wait,
            },
        )
    if op.error:
        return arm_json({"error": op.error}, 400)
    return Response(status_code=op.result_status) if op.result_status == 204 else arm_json({}, 200)
