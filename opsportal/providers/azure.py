"""Azure Machine Learning as a provider for one workspace, through azure-ai-ml's MLClient. See
docs/azure.md for the calls each method makes; tests/test_azure_contract.py proves them against
Azure's published examples.

Three SDK defects of azure-ai-ml 1.35.x are worked around, each in one marked place:
  WORKAROUND(serverless-regenerate)  begin_regenerate_keys raises TypeError;
  WORKAROUND(half-empty-usage)       compute.list_usage entities lose their values;
  WORKAROUND(half-empty-vmsize)      compute.list_sizes entities lose their values.

azure.ai.ml is imported late, in the methods that build its entities: it takes about 1.7 s to
import, which a process that never talks to Azure (the local runtime, a page that only reads
the stored snapshot) should not pay.
"""

import logging
from functools import cached_property
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from opsportal.inventory.models import ComputeQuota, Endpoint, Offering, VmSize, Workspace
from opsportal.providers import azure_cloud
from opsportal.providers.azure_arm import (
    CorrelationPolicy,
    client_policies,
    marketplace_status,
    ml_client,
    offering_slugs_by_model,
    resource_group_read,
    state_of,
    unversioned,
    vm_family_key,
)
from opsportal.providers.azure_errors import translate
from opsportal.providers.base import (
    CallNote,
    ComputeSnapshot,
    CoreUsage,
    DeploymentInfo,
    EndpointInfo,
    EndpointKeys,
    ErrorCode,
    InstanceType,
    MarketplaceBilling,
    MarketplaceStatus,
    MarketplaceSubscriptionInfo,
    ProviderError,
)

log = logging.getLogger(__name__)
logging.getLogger("azure.ai.ml").setLevel(logging.ERROR)  # "experimental method" on every call


class AzureProvider:
    owns_inventory = False

    def __init__(
        self,
        workspace: Workspace,
        *,
        credential: Any = None,
        client_kwargs: dict[str, Any] | None = None,
        offering_slugs: dict[str, str] | None = None,
        correlation_id: str | None = None,
        note: CallNote | None = None,
    ) -> None:
        """`offering_slugs` (registry model id, lower case -> offering slug) lets callers on
        worker threads avoid the database; by default it is read from the catalog."""
        self.workspace = workspace
        self._slugs = offering_slugs
        kwargs = {**azure_cloud.CLIENT_DEFAULTS, **(client_kwargs or {})}
        mine = [p for p in kwargs.get("per_call_policies", []) if isinstance(p, CorrelationPolicy)]
        if not mine:  # the sync passes its own, shared by every client of the subscription
            kwargs["per_call_policies"] = [
                *kwargs.get("per_call_policies", []),
                *client_policies(correlation_id, note)["per_call_policies"],
            ]
        self._credential = credential or azure_cloud.credential()
        self._kwargs = kwargs

    @cached_property
    def ml(self) -> Any:
        """The workspace's MLClient, built on first use (see the module's note on imports)."""
        return ml_client(
            self._credential,
            self.workspace.account.subscription_id,
            self.workspace.resource_group,
            self.workspace.name,
            **self._kwargs,
        )

    def _call(self, action: str, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ProviderError:
            raise
        except Exception as exc:
            raise translate(exc, action=action, what=what) from exc

    def _offering(self, slug: str) -> Offering:
        offering = Offering.objects.filter(slug=slug).first()
        if offering is None or not offering.registry_model_id:
            raise ProviderError(
                f"No Azure model for offering {slug!r} in the catalog.", code=ErrorCode.NOT_FOUND
            )
        return offering

    def _slug_of(self, model_id: str) -> str:
        if self._slugs is None:
            self._slugs = offering_slugs_by_model()
        return self._slugs.get(unversioned(model_id), "")

    def _kind(self, name: str) -> str:
        kind = (
            Endpoint.objects.filter(workspace=self.workspace, name=name)
            .order_by("-pk")
            .values_list("kind", flat=True)
            .first()
        )
        if kind is None:
            # Not synced yet: ask Azure which kind it is.
            try:
                self.ml.serverless_endpoints.get(name)
                return Endpoint.Kind.SERVERLESS
            except ResourceNotFoundError:
                return Endpoint.Kind.MANAGED
            except Exception as exc:
                raise translate(exc, what=name) from exc
        return kind

    # --- Marketplace subscriptions -------------------------------------------------------------
    def marketplace_subscriptions_list(self) -> list[MarketplaceSubscriptionInfo]:
        def run() -> list[MarketplaceSubscriptionInfo]:
            out = []
            for s in self.ml.marketplace_subscriptions.list():
                plan = getattr(s, "marketplace_plan", None)
                out.append(
                    MarketplaceSubscriptionInfo(
                        name=s.name,
                        model_id=s.model_id or "",
                        status=marketplace_status(s.status),
                        provisioning_state=state_of(s.provisioning_state),
                        resource_id=s.id or "",
                        publisher_id=getattr(plan, "publisher_id", None) or "",
                        offer_id=getattr(plan, "offer_id", None) or "",
                        plan_id=getattr(plan, "plan_id", None) or "",
                    )
                )
            return out

        return self._call("read", "Marketplace subscriptions", run)

    def subscription_status(self, *, offering_slug: str) -> MarketplaceStatus | None:
        """The workspace's Marketplace subscription to the offering's model, if it has one."""
        model_id = unversioned(self._offering(offering_slug).registry_model_id)
        found = [
            s for s in self.marketplace_subscriptions_list() if unversioned(s.model_id) == model_id
        ]
        return MarketplaceStatus(found[0].status) if found else None

    def subscription_billing(self, *, offering_slug: str) -> MarketplaceBilling | None:
        """The workspace's Marketplace subscription to the offering and the SaaS resource
        Cost Management bills it on (same publisher, offer and plan in the resource group)."""
        model_id = unversioned(self._offering(offering_slug).registry_model_id)
        mine = [
            s for s in self.marketplace_subscriptions_list() if unversioned(s.model_id) == model_id
        ]
        if not mine:
            return None
        sub = mine[0]
        group = resource_group_read(
            self._credential,
            self.workspace.account.subscription_id,
            self.workspace.resource_group,
            **self._kwargs,
        )
        plan = (sub.publisher_id.lower(), sub.offer_id.lower(), sub.plan_id.lower())
        saas = [
            s.resource_id
            for s in group.saas
            if (s.publisher.lower(), s.offer.lower(), s.plan.lower()) == plan
        ]
        return MarketplaceBilling(
            subscription=sub, saas_resource_id=saas[0] if len(saas) == 1 else ""
        )

    def subscription_create(self, *, offering_slug: str) -> str:
        from azure.ai.ml.entities import MarketplaceSubscription  # late: see the module's note

        offering = self._offering(offering_slug)
        sub = MarketplaceSubscription(name=offering.slug, model_id=offering.registry_model_id)

        def run() -> str:
            result = self.ml.marketplace_subscriptions.begin_create_or_update(sub).result()
            return state_of(result.provisioning_state)

        return self._call("subscribe", f"subscribing to {offering.display_name}", run)

    # --- endpoints -------------------------------------------------------------------------------
    def _serverless_info(self, ep: Any) -> EndpointInfo:
        return EndpointInfo(
            name=ep.name,
            kind=Endpoint.Kind.SERVERLESS,
            provisioning_state=state_of(ep.provisioning_state),
            scoring_uri=ep.scoring_uri or "",
            offering_slug=self._slug_of(ep.model_id or ""),
            model_id=ep.model_id or "",
        )

    def _online_info(self, ep: Any, deployments: list[Any]) -> EndpointInfo:
        traffic = ep.traffic or {}
        infos = tuple(
            DeploymentInfo(
                name=d.name,
                instance_type=d.instance_type or "",
                instance_count=d.instance_count or 0,
                traffic_percent=int(traffic.get(d.name, 0)),
                state=state_of(d.provisioning_state),
                model_id=str(getattr(d, "model", "") or ""),
            )
            for d in deployments
        )
        # An online endpoint has no model of its own: its deployments serve one. The one with
        # the most traffic names it (they normally all serve the same model).
        ranked = sorted(infos, key=lambda d: d.traffic_percent, reverse=True)
        model_id = next((d.model_id for d in ranked if d.model_id), "")
        return EndpointInfo(
            name=ep.name,
            kind=Endpoint.Kind.MANAGED,
            provisioning_state=state_of(ep.provisioning_state),
            scoring_uri=ep.scoring_uri or "",
            offering_slug=self._slug_of(model_id),
            deployments=infos,
            model_id=model_id,
        )

    def serverless_endpoints_list(self) -> list[EndpointInfo]:
        return self._call(
            "read",
            "serverless endpoints",
            lambda: [self._serverless_info(ep) for ep in self.ml.serverless_endpoints.list()],
        )

    def online_endpoints_list(self, *, with_deployments: bool = True) -> list[EndpointInfo]:
        def run() -> list[EndpointInfo]:
            out = []
            for ep in self.ml.online_endpoints.list():
                deps = list(self.ml.online_deployments.list(ep.name)) if with_deployments else []
                out.append(self._online_info(ep, deps))
            return out

        return self._call("read", "online endpoints", run)

    def endpoints_list(self) -> list[EndpointInfo]:
        return self.serverless_endpoints_list() + self.online_endpoints_list()

    def endpoint_get(self, name: str) -> EndpointInfo:
        if self._kind(name) == Endpoint.Kind.SERVERLESS:
            return self._call(
                "read", name, lambda: self._serverless_info(self.ml.serverless_endpoints.get(name))
            )

        def online() -> EndpointInfo:
            ep = self.ml.online_endpoints.get(name)
            return self._online_info(ep, list(self.ml.online_deployments.list(name)))

        return self._call("read", name, online)

    def endpoint_create(self, *, name: str, kind: str, offering_slug: str) -> EndpointInfo:
        # late: see the module's note
        from azure.ai.ml.entities import ManagedOnlineEndpoint, ServerlessEndpoint

        offering = self._offering(offering_slug)
        if kind == Endpoint.Kind.SERVERLESS:
            entity = ServerlessEndpoint(name=name, model_id=offering.registry_model_id)
            return self._call(
                "endpoints",
                f"creating {name}",
                lambda: self._serverless_info(
                    self.ml.serverless_endpoints.begin_create_or_update(entity).result()
                ),
            )
        endpoint = ManagedOnlineEndpoint(name=name, auth_mode="key")
        return self._call(
            "endpoints",
            f"creating {name}",
            lambda: self._online_info(
                self.ml.online_endpoints.begin_create_or_update(endpoint).result(), []
            ),
        )

    def endpoint_delete(self, *, name: str) -> None:
        if self._kind(name) == Endpoint.Kind.SERVERLESS:
            self._call(
                "endpoints",
                f"deleting {name}",
                lambda: self.ml.serverless_endpoints.begin_delete(name).result(),
            )
        else:
            self._call(
                "endpoints",
                f"deleting {name}",
                lambda: self.ml.online_endpoints.begin_delete(name=name).result(),
            )

    # --- managed deployments -------------------------------------------------------------------
    def _deployment_info(self, result: Any, traffic_percent: int) -> DeploymentInfo:
        return DeploymentInfo(
            name=result.name,
            instance_type=result.instance_type or "",
            instance_count=result.instance_count or 0,
            traffic_percent=traffic_percent,
            state=state_of(result.provisioning_state),
            model_id=str(getattr(result, "model", "") or ""),
        )

    def deployment_create(
        self,
        *,
        endpoint_name: str,
        name: str,
        instance_type: str,
        instance_count: int,
        traffic_percent: int,
        offering_slug: str = "",
        data_collection: bool = False,
    ) -> DeploymentInfo:
        from azure.ai.ml.entities import (  # late: see the module's note
            DataCollector,
            DeploymentCollection,
            ManagedOnlineDeployment,
        )

        ep_row = Endpoint.objects.filter(workspace=self.workspace, name=endpoint_name).first()
        slug = offering_slug or (ep_row.offering.slug if ep_row and ep_row.offering else "")
        offering = self._offering(slug)
        collector = None
        if data_collection:
            # Inference data collection: the deployment's dataCollector, inputs and outputs.
            collector = DataCollector(
                collections={
                    "model_inputs": DeploymentCollection(enabled="true"),
                    "model_outputs": DeploymentCollection(enabled="true"),
                }
            )
        deployment = ManagedOnlineDeployment(
            name=name,
            endpoint_name=endpoint_name,
            model=offering.registry_model_id,
            instance_type=instance_type,
            instance_count=instance_count,
            data_collector=collector,
        )

        def run() -> DeploymentInfo:
            result = self.ml.online_deployments.begin_create_or_update(deployment).result()
            endpoint = self.ml.online_endpoints.get(endpoint_name)
            endpoint.traffic = {**(endpoint.traffic or {}), name: traffic_percent}
            self.ml.online_endpoints.begin_create_or_update(endpoint).result()
            return self._deployment_info(result, traffic_percent)

        return self._call("endpoints", f"deploying {name} to {endpoint_name}", run)

    def deployment_scale(
        self, *, endpoint_name: str, name: str, instance_count: int
    ) -> DeploymentInfo:
        def run() -> DeploymentInfo:
            deployment = self.ml.online_deployments.get(name=name, endpoint_name=endpoint_name)
            deployment.instance_count = instance_count
            result = self.ml.online_deployments.begin_create_or_update(deployment).result()
            traffic = self.ml.online_endpoints.get(endpoint_name).traffic or {}
            return self._deployment_info(result, int(traffic.get(name, 0)))

        return self._call(
            "endpoints", f"scaling {endpoint_name}/{name} to {instance_count} instances", run
        )

    def traffic_set(self, *, endpoint_name: str, traffic: dict[str, int]) -> dict[str, int]:
        def run() -> dict[str, int]:
            endpoint = self.ml.online_endpoints.get(endpoint_name)
            endpoint.traffic = dict(traffic)
            result = self.ml.online_endpoints.begin_create_or_update(endpoint).result()
            return {k: int(v) for k, v in (result.traffic or traffic).items()}

        return self._call("endpoints", f"setting the traffic of {endpoint_name}", run)

    def deployment_delete(self, *, endpoint_name: str, name: str) -> None:
        self._call(
            "endpoints",
            f"deleting {endpoint_name}/{name}",
            lambda: self.ml.online_deployments.begin_delete(
                name=name, endpoint_name=endpoint_name
            ).result(),
        )

    # --- keys ------------------------------------------------------------------------------------
    def keys_get(self, *, name: str) -> EndpointKeys:
        ops = (
            self.ml.serverless_endpoints
            if self._kind(name) == Endpoint.Kind.SERVERLESS
            else self.ml.online_endpoints
        )

        def run() -> EndpointKeys:
            keys = ops.get_keys(name)
            if not getattr(keys, "primary_key", None):
                raise ProviderError(
                    f"{name} does not use key authentication.", code=ErrorCode.NO_KEYS
                )
            return EndpointKeys(primary=keys.primary_key, secondary=keys.secondary_key)

        return self._call("endpoints", f"keys of {name}", run)

    def key_regenerate(self, *, name: str, slot: str) -> EndpointKeys:
        if slot not in ("primary", "secondary"):
            raise ProviderError(
                "The key to regenerate is 'primary' or 'secondary'.", code=ErrorCode.INVALID
            )
        if self._kind(name) == Endpoint.Kind.SERVERLESS:
            self._call(
                "endpoints",
                f"regenerating the {slot} key of {name}",
                self._regenerate_serverless_key,
                name,
                slot,
            )
        else:
            self._call(
                "endpoints",
                f"regenerating the {slot} key of {name}",
                lambda: self.ml.online_endpoints.begin_regenerate_keys(
                    name, key_type=slot
                ).result(),
            )
        return self.keys_get(name=name)

    def _regenerate_serverless_key(self, name: str, slot: str) -> None:
        # WORKAROUND(serverless-regenerate): azure-ai-ml 1.35.2's
        # serverless_endpoints.begin_regenerate_keys passes endpoint_name= to a generated method
        # whose parameter is `name`, and always raises TypeError (docs/azure.md, "SDK
        # defects"). Call the generated client it wraps, with the same request body.
        # tests/test_azure_contract.py fails when the public method starts working, so this
        # can go then.
        from azure.ai.ml._restclient.arm_ml_service.models import (  # late: the module's note
            RegenerateEndpointKeysRequest,
        )

        client = self.ml._service_client_01_2024_preview_arm.serverless_endpoints
        client.begin_regenerate_keys(
            resource_group_name=self.workspace.resource_group,
            workspace_name=self.workspace.name,
            name=name,
            body=RegenerateEndpointKeysRequest(key_type=slot.capitalize()),
        ).result()

    # --- compute quota ---------------------------------------------------------------------
    def instance_types(self) -> list[InstanceType]:
        def run() -> list[InstanceType]:
            out = []
            for size in self.ml.compute.list_sizes(location=self.workspace.region):
                # WORKAROUND(half-empty-vmsize): 1.35.x leaves v_cp_us/memory_gb/family None and
                # puts the camelCase REST fields into __dict__ (docs/azure.md, "SDK defects").
                raw = size.__dict__
                cores = getattr(size, "v_cp_us", None) or raw.get("vCPUs") or 0
                memory = getattr(size, "memory_gb", None) or raw.get("memoryGB") or 0
                family = getattr(size, "family", None) or raw.get("family") or ""
                out.append(
                    InstanceType(
                        name=size.name, cores=int(cores), memory_gb=float(memory), family=family
                    )
                )
            return out

        return self._call("read", f"VM sizes in {self.workspace.region}", run)

    def core_usage(self) -> list[CoreUsage]:
        def run() -> list[CoreUsage]:
            out = []
            for usage in self.ml.compute.list_usage(location=self.workspace.region):
                # WORKAROUND(half-empty-usage): 1.35.x leaves current_value/limit None and keeps
                # the REST fields (currentValue, name as a dict) in __dict__ (docs/azure.md,
                # "SDK defects").
                raw = usage.__dict__
                current = usage.current_value
                if current is None:
                    current = raw.get("currentValue", 0)
                limit = usage.limit if usage.limit is not None else raw.get("limit", 0)
                name = raw.get("name")
                family = name.get("value") if isinstance(name, dict) else str(name or "")
                scope = str(raw.get("type") or getattr(usage, "type", "") or "")
                # The list mixes scopes (subscription VM family, workspace, compute) and
                # low-priority quotas; a deployment draws on the subscription's dedicated cores
                # of its VM family in the region.
                if not scope.endswith("vmFamily/usages") or "LowPriority" in family:
                    continue
                out.append(
                    CoreUsage(
                        region=self.workspace.region,
                        family=vm_family_key(family),
                        used=int(current or 0),
                        limit=int(limit or 0),
                    )
                )
            return out

        return self._call("read", f"core usage in {self.workspace.region}", run)

    def compute_snapshot(self) -> ComputeSnapshot:
        """The region's VM sizes and core quota as the inventory sync last stored them: pages and
        checks never wait on Azure for these."""
        ws = self.workspace
        sizes = VmSize.objects.filter(account=ws.account, region=ws.region)
        quotas = ComputeQuota.objects.filter(account=ws.account, region=ws.region)
        return ComputeSnapshot(
            sizes={v.name: (v.cores, v.family) for v in sizes},
            usage={q.family: (q.used, q.limit) for q in quotas},
            known=sizes.exists(),
        )
