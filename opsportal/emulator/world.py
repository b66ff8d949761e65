"""The emulator's default world: a tenant, its registered console client, subscriptions with
workspaces in several regions, VM sizes and core quotas, the model catalog Azure offers, prices,
operation durations and throttling limits. A world file (JSON, same shape) replaces it; a
file may give only some keys, the rest come from here.

Everything here is the emulator's own data: GUIDs, secrets and prices are made up (prices are
marked UNVERIFIED in BEHAVIOUR.md); regions per model family follow DESIGN.md §1.
"""

import copy
import json
from pathlib import Path
from typing import Any

TENANT_ID = "6d3f1a52-8c44-4a0e-9d57-0b1c2e3f4a5b"
CONSOLE_CLIENT_ID = "0c5e7a19-3b8d-4f62-a1e4-7d9c8b6a5f43"
CONSOLE_CLIENT_SECRET = "emulator-console-secret-not-for-azure"  # noqa: S105 (made up)
PAID_SUBSCRIPTION = "a1b2c3d4-1111-4222-8333-444455556666"
TRIAL_SUBSCRIPTION = "f6e5d4c3-9999-4888-8777-666655554444"

MISTRAL_REGIONS = [
    "eastus",
    "eastus2",
    "northcentralus",
    "southcentralus",
    "westus",
    "westus3",
    "swedencentral",
]
LLAMA_REGIONS = ["eastus2", "swedencentral"]


def _serverless_model(
    registry: str,
    name: str,
    family: str,
    regions: list[str],
    publisher: str,
    prices: tuple[float, float],
    *,
    managed: bool = False,
) -> dict[str, Any]:
    return {
        "id": f"azureml://registries/{registry}/models/{name}",
        "name": name,
        "family": family,
        "serverless_regions": regions,
        "managed": managed,
        "marketplace": {
            "publisher_id": publisher,
            "offer_id": f"{name.lower()}-offer",
            "plan_id": f"{name.lower()}-plan",
            "offer_name": f"{name}-offer",
        },
        "price_per_million_tokens": {"input": prices[0], "output": prices[1]},
        "limits": {"tokens_per_minute": 200_000, "requests_per_minute": 1_000},
    }


def _managed_model(registry: str, name: str, family: str) -> dict[str, Any]:
    return {
        "id": f"azureml://registries/{registry}/models/{name}",
        "name": name,
        "family": family,
        "serverless_regions": [],
        "managed": True,
        "marketplace": None,
        "price_per_million_tokens": {"input": 0, "output": 0},
        "limits": {},
    }


def _vm(family: str, cores: int, memory: float, gpus: int, price: float, meter: str) -> dict:
    return {
        "family": family,
        "vCPUs": cores,
        "gpus": gpus,
        "memoryGB": memory,
        "price_per_hour": price,
        "meter": meter,
    }


CPU_SIZES = ["Standard_DS3_v2", "Standard_F4s_v2", "Standard_E4s_v3"]

DEFAULT_WORLD: dict[str, Any] = {
    "tenant": {"id": TENANT_ID, "display_name": "Contoso (emulated)"},
    "clients": [
        {
            "client_id": CONSOLE_CLIENT_ID,
            "secret": CONSOLE_CLIENT_SECRET,
            "display_name": "opsportal console",
            "object_id": "3e1d5c7b-2a4f-4b6e-8d0c-9f8e7d6c5b4a",
        }
    ],
    "subscriptions": [
        {
            "id": PAID_SUBSCRIPTION,
            "display_name": "Contoso ML Production",
            "state": "Enabled",
            "quota_id": "PayAsYouGo_2014-09-01",
            "spending_limit": "Off",
            "resource_groups": [
                {"name": "rg-ml-eastus2", "location": "eastus2", "tags": {"cost-center": "4711"}},
                {"name": "rg-ml-westus3", "location": "westus3", "tags": {}},
                {"name": "rg-ml-westeurope", "location": "westeurope", "tags": {}},
            ],
            "workspaces": [
                {
                    "name": "ws-eastus2",
                    "resource_group": "rg-ml-eastus2",
                    "location": "eastus2",
                    "tags": {"opsportal-team": "alpha"},
                },
                {
                    "name": "ws-westus3",
                    "resource_group": "rg-ml-westus3",
                    "location": "westus3",
                    "tags": {"opsportal-team": "beta"},
                },
                {
                    "name": "ws-westeurope",
                    "resource_group": "rg-ml-westeurope",
                    "location": "westeurope",
                    "tags": {},
                },
            ],
            # Dedicated cores per region and VM family; "*" applies to regions not listed.
            "core_quotas": {
                "*": {
                    "standardNCADSA100v4Family": 48,
                    "standardDSv2Family": 32,
                    "standardFSv2Family": 32,
                    "standardESv3Family": 32,
                }
            },
            "regional_core_limit": 200,
        },
        {
            "id": TRIAL_SUBSCRIPTION,
            "display_name": "Contoso Free Trial",
            "state": "Enabled",
            "quota_id": "FreeTrial_2014-09-01",
            "spending_limit": "On",
            "resource_groups": [{"name": "rg-trial", "location": "eastus2", "tags": {}}],
            "workspaces": [
                {
                    "name": "ws-trial-eastus2",
                    "resource_group": "rg-trial",
                    "location": "eastus2",
                    "tags": {"opsportal-team": "trial"},
                }
            ],
            "core_quotas": {
                "*": {
                    "standardNCADSA100v4Family": 0,
                    "standardDSv2Family": 4,
                    "standardFSv2Family": 4,
                    "standardESv3Family": 4,
                }
            },
            "regional_core_limit": 4,
        },
    ],
    "regions": {
        "eastus2": {"vm_sizes": [*CPU_SIZES, "Standard_NC24ads_A100_v4"]},
        "westus3": {"vm_sizes": [*CPU_SIZES, "Standard_NC24ads_A100_v4"]},
        "westeurope": {"vm_sizes": CPU_SIZES},
        "swedencentral": {"vm_sizes": [*CPU_SIZES, "Standard_NC24ads_A100_v4"]},
    },
    "vm_sizes": {
        "Standard_DS3_v2": _vm("standardDSv2Family", 4, 14.0, 0, 0.229, "DS3 v2"),
        "Standard_F4s_v2": _vm("standardFSv2Family", 4, 8.0, 0, 0.169, "F4s v2"),
        "Standard_E4s_v3": _vm("standardESv3Family", 4, 32.0, 0, 0.252, "E4s v3"),
        "Standard_NC24ads_A100_v4": _vm(
            "standardNCADSA100v4Family", 24, 220.0, 1, 3.673, "NC24ads A100 v4"
        ),
    },
    "models": [
        _serverless_model(
            "azureml-mistral", "Mistral-large", "mistral", MISTRAL_REGIONS, "mistral-ai", (4, 12)
        ),
        _serverless_model(
            "azureml-mistral",
            "Mistral-large-2407",
            "mistral",
            MISTRAL_REGIONS,
            "mistral-ai",
            (3, 9),
        ),
        _serverless_model(
            "azureml-mistral", "Mistral-small", "mistral", MISTRAL_REGIONS, "mistral-ai", (1, 3)
        ),
        _serverless_model(
            "azureml-mistral",
            "Ministral-3B",
            "mistral",
            MISTRAL_REGIONS,
            "mistral-ai",
            (0.04, 0.04),
        ),
        _serverless_model(
            "azureml-mistral",
            "Mistral-Nemo",
            "mistral",
            MISTRAL_REGIONS,
            "mistral-ai",
            (0.15, 0.15),
        ),
        *[
            _serverless_model(
                "azureml-meta", name, "llama", LLAMA_REGIONS, "metagenai", prices, managed=True
            )
            for name, prices in [
                ("Meta-Llama-3-8B", (0.3, 0.61)),
                ("Meta-Llama-3-8B-Instruct", (0.3, 0.61)),
                ("Meta-Llama-3-70B", (2.68, 3.54)),
                ("Meta-Llama-3-70B-Instruct", (2.68, 3.54)),
            ]
        ],
        *[
            _managed_model("azureml", name, "mistral")
            for name in (
                "mistralai-Mixtral-8x7B-Instruct-v01",
                "mistralai-Mixtral-8x7B-v01",
                "mistralai-Mistral-7B-Instruct-v01",
                "mistralai-Mistral-7B-v01",
            )
        ],
    ],
    # Emulated seconds each long-running operation takes.
    "durations": {
        "marketplace_create": 5,
        "marketplace_delete": 5,
        "serverless_create": 45,
        "serverless_update": 10,
        "serverless_delete": 20,
        "online_endpoint_create": 90,
        "online_endpoint_update": 30,
        "online_endpoint_delete": 60,
        "deployment_create": 480,
        "deployment_update": 240,
        "deployment_delete": 120,
        "online_keys": 5,
    },
    "cost": {
        "lag_hours": 4,
        "currency": "USD",
        # Query processing units per tenant: window in seconds -> QPU allowed.
        "qpu": {"10": 12, "60": 60, "3600": 600},
        "page_size": 1000,
    },
    # ARM's per-subscription (and tenant) token buckets: [bucket size, refill per second].
    "arm_throttle": {"reads": [250, 25], "writes": [200, 10], "deletes": [200, 10]},
    "token_lifetime_s": 3599,
    "keyvaults": ["opsportal-kv"],
    # Seeds the emulator's random choices (keys, GUIDs, traffic routing, fault probability).
    "seed": 7,
}


def world_merge(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The default world with the top-level keys of `overrides` replaced; "durations", "cost"
    and "arm_throttle" merge key by key."""
    world = copy.deepcopy(DEFAULT_WORLD)
    for key, value in (overrides or {}).items():
        if key in ("durations", "cost", "arm_throttle") and isinstance(value, dict):
            world[key] = {**world[key], **value}
        else:
            world[key] = copy.deepcopy(value)
    return world


def world_load(path: str | Path | None) -> dict[str, Any]:
    if not path:
        return world_merge(None)
    return world_merge(json.loads(Path(path).read_text()))
