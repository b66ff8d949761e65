"""Whole Azure journeys, each step consuming what the last one stored, against the stateful
Azure emulator (opsportal/emulator) reached through the real SDK clients, with the console's
views, a real Celery worker process on the phase's broker, and the relay: the way a team on
Azure meets the console on day one."""

import signal
from decimal import Decimal

import httpx
import pytest
from django.urls import reverse

from opsportal.accounts.models import Role
from opsportal.chat.models import ChatTurn
from opsportal.costs.models import CostDaily
from opsportal.costs.services import azure_costs_pull
from opsportal.emulator.world import PAID_SUBSCRIPTION, TRIAL_SUBSCRIPTION
from opsportal.inventory.models import CloudAccount, Endpoint, MarketplaceSubscription, Workspace
from opsportal.jobs.models import Job
from opsportal.jobs.services import jobs_reap
from opsportal.keys.store import secret_current, secret_value
from opsportal.providers import azure_cloud, for_workspace
from tests.conftest import client_for
from tests.emulator_support import emulator_fresh, emulator_world, running_emulator
from tests.factories import MembershipFactory, TeamFactory, UserFactory, offering
from tests.test_chat import get_stream
from tests.worker_support import start_worker, stop_worker, wait_job

pytestmark = pytest.mark.production_path
MISTRAL = "mistral-large-2402"
LLAMA = "meta-llama-3-8b-instruct"
A100 = "Standard_NC24ads_A100_v4"
CPU = "Standard_E4s_v3"


@pytest.fixture(scope="module")
def emulator():
    with running_emulator(world=emulator_world()) as running:
        yield running


class Console:
    """The console as its users meet it: an operator of team Alpha, a superuser, a worker."""

    def __init__(self, azure, worker) -> None:  # type: ignore[no-untyped-def]
        self.azure, self.worker = azure, worker
        self.alpha = TeamFactory(name="Alpha", slug="alpha")
        self.beta = TeamFactory(name="Beta", slug="beta")
        self.root = client_for(UserFactory(username="root@example.com", is_superuser=True))
        self.operator_user = UserFactory(username="op@example.com")
        MembershipFactory(team=self.alpha, user=self.operator_user, role=Role.ADMIN)
        MembershipFactory(team=self.beta, user=self.operator_user, role=Role.OPERATOR)
        self.operator = client_for(self.operator_user)

    def job(self, response, kind: str, timeout: float = 240) -> Job:  # type: ignore[no-untyped-def]
        assert response.status_code == 302, response.content.decode()[:3000]
        job = Job.objects.get(pk=int(response.url.rstrip("/").rsplit("/", 1)[1]))
        assert job.kind == kind
        return wait_job(job, timeout=timeout)

    def ok(self, response, kind: str, timeout: float = 240) -> Job:  # type: ignore[no-untyped-def]
        job = self.job(response, kind, timeout)
        assert job.status == Job.Status.SUCCEEDED, (job.error, job.log[-15:])
        return job

    def sync(self) -> Job:
        return self.ok(self.root.post(reverse("azure_sync_start")), Job.Kind.AZURE_SYNC)

    def workspace(self, name: str) -> Workspace:
        return Workspace.objects.get(name=name, deleted_at__isnull=True)

    def deploy(self, **fields):  # type: ignore[no-untyped-def]
        return self.operator.post(reverse("deploy_create"), fields)

    def chat(self, endpoint: Endpoint, message: str = "Say hello.") -> ChatTurn:
        response = self.operator.post(
            reverse("chat_turn_create", args=[endpoint.pk]),
            {
                "mode": "chat",
                # What the form offers: the model's contract on a managed online endpoint.
                "route_style": "score" if endpoint.scoring_uri.endswith("/score") else "native",
                "message": message,
                "max_tokens": 12,
            },
            headers={"HX-Request": "true"},
        )
        assert response.status_code == 200, response.content.decode()[:2000]
        turn = ChatTurn.objects.filter(endpoint=endpoint).latest("pk")
        stream = get_stream(self.operator_user, turn.pk)
        assert stream.status_code == 200 and "event: done" in stream.text
        turn.refresh_from_db()
        return turn

    def emulated(self, kind: str) -> dict:
        return self.azure.control.state()[kind]


@pytest.fixture
def console(emulator, monkeypatch, settings, transactional_db, catalog):
    azure = emulator_fresh(emulator, monkeypatch, settings)
    monkeypatch.setattr(azure_cloud, "CLIENT_DEFAULTS", {})
    console = Console(azure, start_worker(**azure.env))
    yield console
    stop_worker(console.worker)  # the one running now (a test may have replaced it)


def data_plane(url: str, key: str) -> int:
    return httpx.post(
        url,
        json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        headers={"Authorization": f"Bearer {key}"},
        verify=azure_cloud.ssl_context(),
        timeout=60,
    ).status_code


def test_serverless_sync_deploy_chat_rotate_cost_quota_delete(console):
    sync = console.sync()
    assert "workspaces synced" in " ".join(sync.log)
    ws = console.workspace("ws-eastus2")
    assert (ws.team, ws.team_source, ws.region) == (console.alpha, "tag", "eastus2")
    assert CloudAccount.objects.get(subscription_id=TRIAL_SUBSCRIPTION).quota_id.startswith(
        "FreeTrial"
    )

    deploy = console.ok(
        console.deploy(
            workspace=ws.pk,
            offering=offering(MISTRAL).pk,
            kind="serverless",
            name="mistral-chat",
            accept_terms="on",
        ),
        Job.Kind.DEPLOY,
    )
    log = " ".join(deploy.log)
    assert "Subscribing ws-eastus2" in log and "x-ms-request-id" in log and "answered" in log
    endpoint = Endpoint.objects.get(name="mistral-chat", deleted_at__isnull=True)
    assert endpoint.provisioning_state == "Succeeded" and endpoint.offering.slug == MISTRAL
    sub = MarketplaceSubscription.objects.get(workspace=ws, offering__slug=MISTRAL)
    saas = {s["id"].lower() for s in console.emulated("saas_resources")}
    # The deploy noted what the subscription bills on, before any sync.
    assert sub.saas_resource_id.lower() in saas and sub.state == "Succeeded"

    # Test chat through the relay, with the key the secret store holds (no listKeys per turn).
    before = len(console.azure.control.requests(path="/listKeys"))
    turns = [console.chat(endpoint) for _ in range(3)]
    assert {t.status for t in turns} == {"done"} and all(t.answer for t in turns)
    assert len(console.azure.control.requests(path="/listKeys")) == before

    old = secret_value(secret_current(endpoint=endpoint))
    console.ok(console.operator.post(reverse("key_rotate", args=[endpoint.pk])), "key-rotation")
    new = secret_value(secret_current(endpoint=endpoint))
    url = endpoint.scoring_uri.rstrip("/") + "/v1/chat/completions"
    assert new != old and data_plane(url, old) == 401 and data_plane(url, new) == 200
    assert console.chat(endpoint).status == "done"

    # Cost Management has the tokens once its lag has passed; the pull attributes them.
    console.azure.control.advance(36 * 3600)
    account = CloudAccount.objects.get(subscription_id=PAID_SUBSCRIPTION)
    pull = azure_costs_pull(account=account, credential=azure_cloud.credential(), force=True)
    assert pull.error == "" and pull.rows > 0
    rows = list(CostDaily.objects.filter(meter__startswith="paygo-inference"))
    assert {r.meter for r in rows} == {
        "paygo-inference-input-tokens",
        "paygo-inference-output-tokens",
    }
    assert {
        (r.marketplace_subscription, r.workspace, r.offering, r.team, r.endpoint) for r in rows
    } == {(sub, ws, endpoint.offering, console.alpha, endpoint)}
    assert sum(r.cost for r in rows) > Decimal(0)
    page = console.operator.get(reverse("costs")).content.decode()
    assert "Mistral Large" in page
    quota = console.operator.get(reverse("quota")).content.decode()
    assert "mistral-chat" in quota and "200,000" in quota

    console.ok(
        console.operator.post(
            reverse("endpoint_delete", args=[endpoint.pk]), {"confirm": "mistral-chat"}
        ),
        Job.Kind.DELETE,
    )
    assert not [
        e for e in console.emulated("serverless_endpoints") if e["id"].endswith("/mistral-chat")
    ]
    endpoint.refresh_from_db()
    assert endpoint.deleted_at is not None


def test_managed_deploy_second_deployment_split_score_scale_remove_delete(console):
    console.sync()
    ws = console.workspace("ws-eastus2")
    base = {"workspace": ws.pk, "offering": offering(LLAMA).pk, "kind": "managed"}
    # Three A100 instances need 72 cores; the subscription has 48: refused before any call.
    puts = len(console.azure.control.requests(method="PUT"))
    refused = console.deploy(
        **base,
        endpoint_mode="new",
        name="llama-managed",
        deployment_name="blue",
        vm_sku=A100,
        instance_count=3,
        traffic_percent=100,
    )
    assert refused.status_code == 422
    assert "needs 72 standardNCADSA100v4Family cores; 48 of 48 are free" in refused.content.decode()
    assert len(console.azure.control.requests(method="PUT")) == puts

    first = console.ok(
        console.deploy(
            **base,
            endpoint_mode="new",
            name="llama-managed",
            deployment_name="blue",
            vm_sku=A100,
            instance_count=2,
            traffic_percent=100,
        ),
        Job.Kind.DEPLOY,
    )
    assert "smoke test" in " ".join(first.log).lower()
    endpoint = Endpoint.objects.get(name="llama-managed", deleted_at__isnull=True)
    assert endpoint.scoring_uri.endswith("/score") and endpoint.offering.slug == LLAMA
    console.ok(
        console.deploy(
            **base,
            endpoint_mode="existing",
            existing=endpoint.pk,
            deployment_name="green",
            vm_sku=CPU,
            instance_count=1,
            traffic_percent=0,
        ),
        Job.Kind.DEPLOY,
    )
    split = reverse("endpoint_traffic", args=[endpoint.pk])
    console.ok(console.operator.post(split, {"traffic-blue": 90, "traffic-green": 10}), "traffic")
    (emulated,) = [
        e for e in console.emulated("online_endpoints") if e["id"].endswith("/llama-managed")
    ]
    assert emulated["traffic"] == {"blue": 90, "green": 10}

    # Test chat through /score, in the model's contract.
    turn = console.chat(endpoint)
    assert turn.status == "done" and turn.answer and turn.route == "/score"
    assert "input_data" in turn.request_body

    # The GPU family is full: a third blue instance is refused; green grows on its CPU quota.
    scale = reverse("deployment_scale", args=[endpoint.pk, "blue"])
    too_many = console.operator.post(scale, {"instance_count": 3})
    assert too_many.status_code == 422 and "0 of 48 are free" in too_many.content.decode()
    green = reverse("deployment_scale", args=[endpoint.pk, "green"])
    console.ok(console.operator.post(green, {"instance_count": 2}), "deployment-scale")
    assert endpoint.deployments.get(name="green", deleted_at__isnull=True).instance_count == 2

    # Remove blue once green takes all the traffic.
    console.ok(console.operator.post(split, {"traffic-blue": 0, "traffic-green": 100}), "traffic")
    console.ok(
        console.operator.post(reverse("deployment_remove", args=[endpoint.pk, "blue"])),
        "deployment-delete",
    )
    (emulated,) = [
        e for e in console.emulated("online_endpoints") if e["id"].endswith("/llama-managed")
    ]
    assert [d["name"] for d in emulated["deployments"]] == ["green"]
    assert console.chat(endpoint).status == "done"

    console.ok(
        console.operator.post(
            reverse("endpoint_delete", args=[endpoint.pk]), {"confirm": "llama-managed"}
        ),
        Job.Kind.DELETE,
    )
    assert not [
        e for e in console.emulated("online_endpoints") if e["id"].endswith("/llama-managed")
    ]


def endpoint_rows(name: str) -> list[Endpoint]:
    return list(Endpoint.objects.filter(name=name, deleted_at__isnull=True))


def test_refusals_in_plain_words_before_any_call_or_from_azure(console):
    console.sync()
    puts = len(console.azure.control.requests(method="PUT"))
    # Llama is not offered serverless in westus3: refused by the pre-flight, nothing sent.
    west = console.workspace("ws-westus3")
    refused = console.deploy(
        workspace=west.pk,
        offering=offering(LLAMA).pk,
        kind="serverless",
        name="llama-west",
        accept_terms="on",
    )
    assert refused.status_code == 422
    assert "offered as serverless in eastus2 and swedencentral only" in refused.content.decode()
    assert len(console.azure.control.requests(method="PUT")) == puts

    ws = console.workspace("ws-eastus2")
    llama = {"workspace": ws.pk, "offering": offering(LLAMA).pk, "kind": "serverless"}
    console.ok(console.deploy(**llama, name="llama-one", accept_terms="on"), Job.Kind.DEPLOY)
    # A second serverless deployment of one model: the pre-flight knows the first.
    second = console.deploy(**llama, name="llama-two", accept_terms="on")
    assert second.status_code == 422 and "already has a serverless deployment" in (
        second.content.decode()
    )

    # Made elsewhere, unknown to the console until a sync: Azure's own refusals, in plain words.
    trial = Workspace.objects.get(name="ws-trial-eastus2")
    elsewhere = for_workspace(trial)
    elsewhere.subscription_create(offering_slug=MISTRAL)
    elsewhere.endpoint_create(name="shared-name", kind="serverless", offering_slug=MISTRAL)
    taken = console.job(
        console.deploy(
            workspace=ws.pk,
            offering=offering(MISTRAL).pk,
            kind="serverless",
            name="shared-name",
            accept_terms="on",
        ),
        Job.Kind.DEPLOY,
    )
    assert taken.status == Job.Status.FAILED
    assert "already in use in eastus2" in taken.error and "unique" in taken.error
    # Nothing was created, and nothing is left behind as if it were being created.
    assert [e.workspace.name for e in endpoint_rows("shared-name")] == []
    assert "nothing was created" in " ".join(taken.log).lower()


def test_a_worker_killed_mid_deploy_resumes_and_makes_exactly_one_endpoint(console):
    console.sync()
    ws = console.workspace("ws-eastus2")
    # Slow provisioning on the emulator clock, so the kill lands while Azure is creating.
    console.azure.control.config(durations={"serverless_create": 2400})
    response = console.deploy(
        workspace=ws.pk,
        offering=offering(MISTRAL).pk,
        kind="serverless",
        name="kill-me",
        accept_terms="on",
    )
    assert response.status_code == 302
    job = Job.objects.get(kind=Job.Kind.DEPLOY)
    # Azure took the create (its 201 is in the log) and is still provisioning the endpoint.
    wait_job(job, until=lambda j: "serverlessEndpoints/kill-me: 201" in " ".join(j.log))
    stop_worker(console.worker, signal.SIGKILL)
    console.azure.control.config(durations={"serverless_create": 30})
    console.worker = start_worker(**console.azure.env)
    job = wait_job(job, until=lambda j: bool(jobs_reap(stale_after=3)) or j.attempts > 1)
    job = wait_job(job, timeout=240)
    assert job.status == Job.Status.SUCCEEDED, (job.error, job.log[-10:])
    assert job.attempts == 2 and "Resuming" in " ".join(job.log)
    made = [e for e in console.emulated("serverless_endpoints") if e["id"].endswith("/kill-me")]
    assert len(made) == 1 and len(endpoint_rows("kill-me")) == 1


def test_a_whole_journey_holds_with_faults_on_a_fifth_of_the_arm_calls(console):
    console.sync()
    ws = console.workspace("ws-eastus2")
    control = console.azure.control
    arm = r"^/subscriptions/.*/providers/Microsoft\.MachineLearningServices/"
    control.fault(path=arm, status=429, retry_after=1, probability=0.07)
    control.fault(path=arm, status=503, probability=0.07)
    control.fault(path=arm, action="reset", probability=0.06)
    control.fault(method="POST", path="regenerateKeys$", when="after", action="reset", count=1)

    deploy = console.ok(
        console.deploy(
            workspace=ws.pk,
            offering=offering(LLAMA).pk,
            kind="serverless",
            name="llama-flaky",
            accept_terms="on",
        ),
        Job.Kind.DEPLOY,
        timeout=600,
    )
    endpoint = Endpoint.objects.get(name="llama-flaky", deleted_at__isnull=True)
    console.ok(
        console.operator.post(reverse("key_rotate", args=[endpoint.pk])), "key-rotation", 600
    )
    current = secret_value(secret_current(endpoint=endpoint))
    (emulated,) = [
        e for e in control.state()["serverless_endpoints"] if e["id"].endswith("/llama-flaky")
    ]
    # The published key is one Azure holds, though an answer to regenerateKeys was lost.
    assert current in (emulated["primary_key"], emulated["secondary_key"])
    console.ok(
        console.operator.post(
            reverse("endpoint_delete", args=[endpoint.pk]), {"confirm": "llama-flaky"}
        ),
        Job.Kind.DELETE,
        timeout=600,
    )
    fired = sum(f["fired"] for f in control.state().get("faults", []))
    retried = "Trying again" in " ".join(deploy.log) or fired > 0
    assert retried
    # Nothing left behind: no endpoint in Azure, none tracked as live, every job ended.
    assert not [e for e in control.state()["serverless_endpoints"] if "llama-flaky" in e["id"]]
    assert endpoint_rows("llama-flaky") == []
    assert not Job.objects.exclude(status__in=Job.FINISHED).exists()
