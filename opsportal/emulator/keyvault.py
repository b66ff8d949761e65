"""Key Vault secrets (data plane): set (each set is a new version), get (latest or a version),
list versions, list, delete (soft delete: deletedsecrets, purge, recover). Each vault answers
at the root of its own port (the app maps the port to /keyvault/{name}); every call without a
valid token gets Key Vault's 401 challenge."""

import re
import time
from typing import Any

from starlette.responses import Response

from opsportal.emulator.routing import AUTH_VAULT, Call, Router, arm_json
from opsportal.emulator.state import ArmError, SecretVersion, State

router = Router()
V = "/keyvault/{vault}"
SECRET_NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")


def vault_url(state: State, vault: str) -> str:
    return state.vault_urls[vault.lower()]


def vault_of(state: State, call: Call) -> str:
    name = call.params["vault"].lower()
    if name not in state.vaults:
        raise ArmError(
            404, "VaultNotFound", f"No vault named {call.params['vault']} in this cloud."
        )
    return name


def attributes(v: SecretVersion) -> dict[str, Any]:
    stamp = int(v.created.timestamp())
    return {
        "enabled": v.enabled,
        "created": stamp,
        "updated": stamp,
        "recoveryLevel": "Recoverable+Purgeable",
        "recoverableDays": 90,
    }


def bundle(state: State, vault: str, v: SecretVersion, *, value: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": f"{vault_url(state, vault)}/secrets/{v.name}/{v.version}",
        "attributes": attributes(v),
        "tags": v.tags,
    }
    if v.content_type:
        out["contentType"] = v.content_type
    if value:
        out["value"] = v.value
    return out


def missing(name: str) -> ArmError:
    return ArmError(
        404,
        "SecretNotFound",
        f"A secret with (name/id) {name} was not found in this key vault. If you recently deleted "
        "this secret you may be able to recover it using the correct recovery command.",
    )


def versions_of(state: State, vault: str, name: str) -> list[SecretVersion]:
    found = state.secrets.get((vault, name.lower()))
    if not found:
        raise missing(name)
    return found


@router.add("PUT", V + "/secrets/{name}", "KeyVault.SetSecret", auth=AUTH_VAULT)
def set_secret(emu: Any, call: Call) -> Response:
    state = emu.state
    vault = vault_of(state, call)
    name = call.params["name"]
    if not SECRET_NAME.match(name):
        raise ArmError(
            400, "BadParameter", "The secret name must be 1-127 letters, digits and dashes."
        )
    if (vault, name.lower()) in state.deleted_secrets:
        raise ArmError(
            409,
            "Conflict",
            f"Secret {name} is currently in a deleted but recoverable state, and its name cannot "
            "be reused; in this state, the secret can only be recovered or purged.",
        )
    body = call.json()
    if not isinstance(body.get("value"), str):
        raise ArmError(400, "BadParameter", "The secret's value is required.")
    enabled = (body.get("attributes") or {}).get("enabled", True)
    existing = state.secrets.get((vault, name.lower()))
    version = SecretVersion(
        name=existing[0].name if existing else name,
        version=state.rng.getrandbits(128).to_bytes(16, "big").hex(),
        value=body["value"],
        content_type=body.get("contentType"),
        tags=body.get("tags") or {},
        created=state.clock.now(),
        enabled=bool(enabled),
    )
    state.secrets.setdefault((vault, name.lower()), []).append(version)
    return arm_json(bundle(state, vault, version))


@router.add("GET", V + "/secrets/{name}/versions", "KeyVault.GetSecretVersions", auth=AUTH_VAULT)
def secret_versions(emu: Any, call: Call) -> Response:
    state = emu.state
    vault = vault_of(state, call)
    items = [
        bundle(state, vault, v, value=False) for v in versions_of(state, vault, call.params["name"])
    ]
    return arm_json({"value": items, "nextLink": None})


@router.add("GET", V + "/secrets/{name}/{version}", "KeyVault.GetSecret", auth=AUTH_VAULT)
def get_secret_version(emu: Any, call: Call) -> Response:
    state = emu.state
    vault = vault_of(state, call)
    for v in versions_of(state, vault, call.params["name"]):
        if v.version == call.params["version"].lower():
            return arm_json(bundle(state, vault, v))
    raise missing(f"{call.params['name']}/{call.params['version']}")


@router.add("GET", V + "/secrets/{name}", "KeyVault.GetSecret", auth=AUTH_VAULT)
def get_secret(emu: Any, call: Call) -> Response:
    state = emu.state
    vault = vault_of(state, call)
    latest = versions_of(state, vault, call.params["name"])[-1]
    if not latest.enabled:
        raise ArmError(
            403, "Forbidden", f"Operation get is not allowed on a disabled secret {latest.name}."
        )
    return arm_json(bundle(state, vault, latest))


@router.add("GET", V + "/secrets", "KeyVault.GetSecrets", auth=AUTH_VAULT)
def list_secrets(emu: Any, call: Call) -> Response:
    state = emu.state
    vault = vault_of(state, call)
    items = []
    for (v_name, _), versions in sorted(state.secrets.items()):
        if v_name == vault and versions:
            item = bundle(state, vault, versions[-1], value=False)
            item["id"] = item["id"].rsplit("/", 1)[0]
            items.append(item)
    return arm_json({"value": items, "nextLink": None})


def deleted_bundle(state: State, vault: str, entry: dict[str, Any]) -> dict[str, Any]:
    latest = entry["versions"][-1]
    return {
        **bundle(state, vault, latest),
        "recoveryId": f"{vault_url(state, vault)}/deletedsecrets/{latest.name}",
        "deletedDate": entry["deleted"],
        "scheduledPurgeDate": entry["deleted"] + 90 * 86400,
    }


@router.add("DELETE", V + "/secrets/{name}", "KeyVault.DeleteSecret", auth=AUTH_VAULT)
def delete_secret(emu: Any, call: Call) -> Response:
    state = emu.state
    vault = vault_of(state, call)
    versions = versions_of(state, vault, call.params["name"])
    entry = {"versions": versions, "deleted": int(time.time())}
    del state.secrets[(vault, call.params["name"].lower())]
    state.deleted_secrets[(vault, call.params["name"].lower())] = entry
    return arm_json(deleted_bundle(state, vault, entry))


def deleted_of(state: State, vault: str, name: str) -> dict[str, Any]:
    entry = state.deleted_secrets.get((vault, name.lower()))
    if entry is None:
        raise ArmError(404, "SecretNotFound", f"Deleted Secret not found: {name}")
    return entry


@router.add("GET", V + "/deletedsecrets/{name}", "KeyVault.GetDeletedSecret", auth=AUTH_VAULT)
def get_deleted(emu: Any, call: Call) -> Response:
    vault = vault_of(emu.state, call)
    return arm_json(
        deleted_bundle(emu.state, vault, deleted_of(emu.state, vault, call.params["name"]))
    )


@router.add("DELETE", V + "/deletedsecrets/{name}", "KeyVault.PurgeDeletedSecret", auth=AUTH_VAULT)
def purge_deleted(emu: Any, call: Call) -> Response:
    vault = vault_of(emu.state, call)
    deleted_of(emu.state, vault, call.params["name"])
    del emu.state.deleted_secrets[(vault, call.params["name"].lower())]
    return Response(status_code=204)


@router.add(
    "POST", V + "/deletedsecrets/{name}/recover", "KeyVault.RecoverDeletedSecret", auth=AUTH_VAULT
)
def recover_deleted(emu: Any, call: Call) -> Response:
    state = emu.state
    vault = vault_of(state, call)
    entry = deleted_of(state, vault, call.params["name"])
    key = (vault, call.params["name"].lower())
    state.secrets[key] = entry["versions"]
    del state.deleted_secrets[key]
    return arm_json(bundle(state, vault, entry["versions"][-1]))
