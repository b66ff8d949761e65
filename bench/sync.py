#!/usr/bin/env python
"""Full Azure inventory sync against a simulated ARM, versus the sequential sum of its calls.

The simulated ARM answers with Azure's published examples (../shared/azure-fixtures), shaped
into 20 subscriptions, 500 workspaces and 10,000 endpoints (per workspace: 5 serverless, 15
managed with one deployment each), and waits 100 ms before every answer. The sync runs for real:
the Azure SDK's pipeline, the per-subscription token bucket, the thread pool and the database
writes (SQLite under var/bench/sync). Prints a table, then one JSON line.

    python bench/sync.py [--latency-ms 100] [--workers 16]
"""

import argparse
import copy
import json
import re
import threading
import time
from collections import Counter

import _venv

ROOT = _venv.ROOT

FIXTURES = ROOT.parent / "shared" / "azure-fixtures"
VAR = ROOT / "var" / "bench" / "sync"
ARM = "https://management.azure.com"
SUBS, WS_PER_SUB, SERVERLESS, MANAGED = 20, 25, 5, 15
SERVERLESS_MODELS = [
    "azureml://registries/azureml-mistral/models/Mistral-large",
    "azureml://registries/azureml-mistral/models/Mistral-large-2407",
    "azureml://registries/azureml-mistral/models/Mistral-small",
    "azureml://registries/azureml-mistral/models/Ministral-3B",
    "azureml://registries/azureml-meta/models/Meta-Llama-3-8B-Instruct",
]


def example(path: str) -> dict:
    data = json.loads((FIXTURES / path).read_text())
    body = data["responses"]["200"]["body"]
    body.pop("nextLink", None)
    return body


class FakeCredential:
    def get_token(self, *scopes, **kw):  # type: ignore[no-untyped-def]
        from azure.core.credentials import AccessToken

        return AccessToken("fake-token", 9_999_999_999)

    def get_token_info(self, *scopes, **kw):  # type: ignore[no-untyped-def]
        from azure.core.credentials import AccessTokenInfo

        return AccessTokenInfo("fake-token", 9_999_999_999)


class SimulatedArm:
    """Canned ARM answers, each after a fixed latency; records when each call arrived."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.calls: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.subs = [f"{i:08d}-0000-0000-0000-000000000000" for i in range(SUBS)]
        ws_tpl = example("workspaces/Workspace_ListBySubscription.json")["value"][0]
        sl_tpl = example("serverless/List.json")["value"][0]
        on_tpl = example("online/OnlineEndpoint_List.json")["value"][0]
        dep_tpl = example("online/OnlineDeployment_List.json")["value"][0]
        mk_tpl = example("marketplace/List.json")["value"][0]
        self.bodies: dict[str, dict] = {}
        for s in self.subs:
            workspaces = []
            for w in range(WS_PER_SUB):
                name = f"ws-{s[:8]}-{w:02d}"
                path = (
                    f"/subscriptions/{s}/resourceGroups/rg/providers/"
                    f"Microsoft.MachineLearningServices/workspaces/{name}"
                )
                ws = copy.deepcopy(ws_tpl)
                ws.update(name=name, id=path, location="eastus2")
                workspaces.append(ws)
                serverless, subs, online = [], [], []
                for i, model in enumerate(SERVERLESS_MODELS[:SERVERLESS]):
                    e = copy.deepcopy(sl_tpl)
                    e["name"] = f"{name}-sl-{i}"
                    e["properties"]["modelSettings"]["modelId"] = model
                    serverless.append(e)
                    m = copy.deepcopy(mk_tpl)
                    m["name"] = f"sub-{i}"
                    m["properties"].update(
                        modelId=model, marketplaceSubscriptionStatus="Subscribed"
                    )
                    subs.append(m)
                for i in range(MANAGED):
                    e = copy.deepcopy(on_tpl)
                    e["name"] = f"{name}-on-{i}"
                    e["properties"]["traffic"] = {"blue": 100}
                    online.append(e)
                    d = copy.deepcopy(dep_tpl)
                    d["name"] = "blue"
                    d["id"] = f"{path}/onlineEndpoints/{e['name']}/deployments/blue"
                    self.bodies[f"{path}/onlineEndpoints/{e['name']}/deployments"] = {"value": [d]}
                self.bodies[f"{path}/serverlessEndpoints"] = {"value": serverless}
                self.bodies[f"{path}/marketplaceSubscriptions"] = {"value": subs}
                self.bodies[f"{path}/onlineEndpoints"] = {"value": online}
            self.bodies[
                f"/subscriptions/{s}/providers/Microsoft.MachineLearningServices/workspaces"
            ] = {"value": workspaces}
        self.bodies["/subscriptions"] = {
            "value": [
                {
                    "id": f"/subscriptions/{s}",
                    "subscriptionId": s,
                    "displayName": f"bench-{s[:8]}",
                    "tenantId": "bench",
                    "state": "Enabled",
                }
                for s in self.subs
            ]
        }

    def __call__(self, request):  # type: ignore[no-untyped-def]
        path = request.path_url.split("?")[0]
        with self.lock:
            self.calls.append((time.monotonic(), path))
        time.sleep(self.latency)
        body = self.bodies.get(path)
        if body is None:
            return 404, {}, json.dumps({"error": {"code": "NotFound", "message": path}})
        return 200, {"content-type": "application/json"}, json.dumps(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()

    (VAR / "sync.sqlite3").unlink(missing_ok=True)  # every run syncs into an empty database
    _venv.django_on_own_database(VAR, "sync.sqlite3", LOG_LEVEL="ERROR")
    import responses
    from django.core.management import call_command

    from opsportal.inventory.models import Endpoint
    from opsportal.sync.services import inventory_sync_azure

    call_command("migrate", verbosity=0)
    arm = SimulatedArm(args.latency_ms / 1000)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rs:
        rs.add_callback(responses.GET, re.compile(re.escape(ARM) + r"/.*"), callback=arm)
        started = time.monotonic()
        report = inventory_sync_azure(
            credential=FakeCredential(), max_workers=args.workers, client_kwargs={"retry_total": 0}
        )
        elapsed = time.monotonic() - started

    calls = len(arm.calls)
    sequential = calls * args.latency_ms / 1000
    per_sub_second: Counter[tuple[str, int]] = Counter()
    for at, path in arm.calls:
        match = re.match(r"/subscriptions/([^/]+)/", path)
        if match:
            per_sub_second[(match.group(1), int(at - started))] += 1
    peak_second = max(per_sub_second.values(), default=0)
    stored = Endpoint.objects.filter(deleted_at__isnull=True).count()

    print(
        f"Simulated ARM: {SUBS} subscriptions, {SUBS * WS_PER_SUB} workspaces, "
        f"{SUBS * WS_PER_SUB * (SERVERLESS + MANAGED)} endpoints, {args.latency_ms:g} ms a call"
    )
    print(f"{'':38} {'value':>10}")
    print(f"{'ARM calls':38} {calls:10d}")
    print(f"{'sequential sum of call latencies s':38} {sequential:10.1f}")
    print(f"{'full sync, measured s':38} {elapsed:10.1f}")
    print(f"{'speed-up':38} {sequential / elapsed:9.1f}x")
    print(
        f"{'peak calls in one second, one sub':38} {peak_second:10d}   "
        "(bucket: 250 burst, 25/s refill)"
    )
    print(f"{'endpoints stored':38} {stored:10d}")
    print(f"{'workspaces failed':38} {len(report.workspaces_failed):10d}")
    print(
        json.dumps(
            {
                "arm_calls_queries": calls,
                "sequential_sum_ms": round(sequential * 1000),
                "full_sync_ms": round(elapsed * 1000),
                "speedup_ratio": round(sequential / elapsed, 2),
                "peak_calls_per_s": peak_second,
                "endpoints_stored_queries": stored,
                "workspaces_failed_errors": len(report.workspaces_failed),
            }
        )
    )


if __name__ == "__main__":
    main()
