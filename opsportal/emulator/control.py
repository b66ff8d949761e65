"""The control API under /_emulator/ (no authentication: it is a local test tool). It resets or
loads a world, shows the state and the recorded requests, changes Marketplace statuses,
injects faults, and moves the clock.

  GET    /_emulator/health
  POST   /_emulator/reset          optional body: world overrides (see world.py)
  POST   /_emulator/config         merge "durations", "cost", "arm_throttle", "token_lifetime_s"
  GET    /_emulator/state
  GET    /_emulator/requests       ?method=&path=(regex)&operation=
  DELETE /_emulator/requests
  POST   /_emulator/marketplace    {subscription, resource_group, workspace, name, status}
  GET    /_emulator/faults         POST adds one (see faults.py), DELETE removes all
  GET    /_emulator/clock          POST {"advance": seconds} | {"speed": x} | {"set": ISO time}
  POST   /_emulator/tokens         {"audience": "arm"|"keyvault"|URL, "lifetime": seconds}
"""

import re
from datetime import datetime
from typing import Any

from starlette.responses import JSONResponse, Response

from opsportal.emulator.faults import fault_add
from opsportal.emulator.identity import keyvault_resource
from opsportal.emulator.routing import AUTH_NONE, Call, Router, iso
from opsportal.emulator.state import ArmError
from opsportal.emulator.world import world_merge

router = Router()
C = "/_emulator"


def ok(body: Any = None, status: int = 200) -> Response:
    return JSONResponse(body if body is not None else {"ok": True}, status_code=status)


@router.add("GET", C + "/health", "Control.Health", auth=AUTH_NONE, throttle="")
def health(emu: Any, call: Call) -> Response:
    return ok({"ok": True, "base_url": emu.state.base_url, "now": iso(emu.clock.now())})


@router.add("POST", C + "/reset", "Control.Reset", auth=AUTH_NONE, throttle="")
def reset(emu: Any, call: Call) -> Response:
    emu.state.load(world_merge(call.json() or None))
    return ok()


@router.add("POST", C + "/config", "Control.Config", auth=AUTH_NONE, throttle="")
def config(emu: Any, call: Call) -> Response:
    body = call.json()
    world = emu.state.world
    for key in ("durations", "cost", "arm_throttle"):
        if isinstance(body.get(key), dict):
            world[key] = {**world[key], **body[key]}
    if "token_lifetime_s" in body:
        world["token_lifetime_s"] = int(body["token_lifetime_s"])
    emu.state.buckets.clear()
    emu.state.qpu_spent.clear()
    return ok({k: world[k] for k in ("durations", "cost", "arm_throttle", "token_lifetime_s")})


@router.add("GET", C + "/state", "Control.State", auth=AUTH_NONE, throttle="")
def state_view(emu: Any, call: Call) -> Response:
    s = emu.state
    return ok(
        {
            "now": iso(s.clock.now()),
            "speed": s.clock.speed,
            "subscriptions": [
                {"id": x["id"], "display_name": x["display_name"]} for x in s.subscriptions.values()
            ],
            "workspaces": [
                {"id": w.id, "location": w.location, "tags": w.tags} for w in s.workspaces.values()
            ],
            "marketplace_subscriptions": [
                {
                    "id": m.id,
                    "model_id": m.model_id,
                    "status": m.status,
                    "provisioning_state": m.provisioning_state,
                    "saas_id": m.saas.id,
                }
                for m in s.marketplace.values()
            ],
            "saas_resources": [
                {"id": x.id, "status": x.status, "model_id": x.model_id} for x in s.saas.values()
            ],
            "serverless_endpoints": [
                {
                    "id": e.id,
                    "model_id": e.model["id"],
                    "provisioning_state": e.provisioning_state,
                    "endpoint_state": e.endpoint_state,
                    "primary_key": e.primary_key,
                    "secondary_key": e.secondary_key,
                }
                for e in s.serverless.values()
            ],
            "online_endpoints": [
                {
                    "id": e.id,
                    "provisioning_state": e.provisioning_state,
                    "traffic": e.traffic,
                    "primary_key": e.primary_key,
                    "secondary_key": e.secondary_key,
                    "deployments": [
                        {
                            "name": d.name,
                            "instance_type": d.instance_type,
                            "capacity": d.capacity,
                            "provisioning_state": d.provisioning_state,
                        }
                        for d in e.deployments.values()
                    ],
                }
                for e in s.online.values()
            ],
            "operations": [
                {
                    "id": o.id,
                    "kind": o.kind,
                    "status": o.status,
                    "due": iso(o.due),
                    "error": o.error,
                }
                for o in s.operations.values()
            ],
            "usage_rows": len(s.usage),
            "secrets": {f"{v}/{n}": len(versions) for (v, n), versions in s.secrets.items()},
            "faults": s.faults,
        }
    )


@router.add("GET", C + "/requests", "Control.Requests", auth=AUTH_NONE, throttle="")
def requests_view(emu: Any, call: Call) -> Response:
    found = list(emu.state.requests)
    if call.query.get("method"):
        found = [r for r in found if r["method"] == call.query["method"].upper()]
    if call.query.get("operation"):
        found = [r for r in found if r["operation"] == call.query["operation"]]
    if call.query.get("path"):
        pattern = re.compile(call.query["path"], re.IGNORECASE)
        found = [r for r in found if pattern.search(r["path"])]
    return ok({"value": found})


@router.add("DELETE", C + "/requests", "Control.RequestsClear", auth=AUTH_NONE, throttle="")
def requests_clear(emu: Any, call: Call) -> Response:
    emu.state.requests.clear()
    return ok()


@router.add("POST", C + "/marketplace", "Control.MarketplaceStatus", auth=AUTH_NONE, throttle="")
def marketplace_status(emu: Any, call: Call) -> Response:
    body = call.json()
    status = body.get("status")
    if status not in ("Subscribed", "Suspended", "Unsubscribed"):
        raise ArmError(400, "BadRequest", "status is Subscribed, Suspended or Unsubscribed.")
    s = emu.state
    ws = s.workspace(body["subscription"], body["resource_group"], body["workspace"])
    sub = s.marketplace.get((ws.key, str(body["name"]).lower()))
    if sub is None:
        raise ArmError(
            404, "ResourceNotFound", f"No Marketplace subscription {body['name']} in {ws.name}."
        )
    sub.saas.status = status
    for ep in s.serverless.values():
        if ep.marketplace is sub and ep.provisioning_state == "Succeeded":
            ep.endpoint_state = "Online" if status == "Subscribed" else "Suspended"
    return ok({"id": sub.id, "status": status, "saas_id": sub.saas.id})


@router.add("GET", C + "/faults", "Control.Faults", auth=AUTH_NONE, throttle="")
def faults_view(emu: Any, call: Call) -> Response:
    return ok({"value": emu.state.faults})


@router.add("POST", C + "/faults", "Control.FaultAdd", auth=AUTH_NONE, throttle="")
def faults_add(emu: Any, call: Call) -> Response:
    return ok(fault_add(emu.state, call.json()), 201)


@router.add("DELETE", C + "/faults", "Control.FaultsClear", auth=AUTH_NONE, throttle="")
def faults_clear(emu: Any, call: Call) -> Response:
    emu.state.faults.clear()
    return ok()


@router.add("GET", C + "/clock", "Control.Clock", auth=AUTH_NONE, throttle="")
def clock_view(emu: Any, call: Call) -> Response:
    return ok({"now": iso(emu.clock.now()), "speed": emu.clock.speed})


@router.add("POST", C + "/clock", "Control.ClockSet", auth=AUTH_NONE, throttle="")
def clock_set(emu: Any, call: Call) -> Response:
    body = call.json()
    if "advance" in body:
        emu.clock.advance(float(body["advance"]))
    if "speed" in body or "set" in body:
        start = (
            datetime.fromisoformat(body["set"].replace("Z", "+00:00")) if body.get("set") else None
        )
        emu.clock.set(speed=body.get("speed"), start=start)
    emu.state.settle()
    return ok({"now": iso(emu.clock.now()), "speed": emu.clock.speed})


@router.add("POST", C + "/tokens", "Control.Token", auth=AUTH_NONE, throttle="")
def token_mint(emu: Any, call: Call) -> Response:
    """A token as the token endpoint would issue it, with any lifetime (negative: expired)."""
    body = call.json()
    audience = body.get("audience", "arm")
    vaults = list(emu.state.vault_urls.values())
    audience = {
        "arm": emu.state.base_url,
        "keyvault": keyvault_resource(vaults[0]) if vaults else None,
    }.get(audience, audience)
    client = emu.state.world["clients"][0]
    token = emu.identity.mint(client, audience, lifetime=int(body.get("lifetime", 3599)))
    return ok({"access_token": token, "audience": audience})
