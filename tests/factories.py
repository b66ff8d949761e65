import factory
from django.contrib.auth import get_user_model

from opsportal.accounts.models import Membership, Role, Team
from opsportal.inventory.models import (
    CloudAccount,
    Endpoint,
    ManagedDeployment,
    MarketplaceSubscription,
    Offering,
    Provider,
    ProvisioningState,
    Workspace,
)
from opsportal.jobs.models import Job


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ["username"]

    username = factory.Sequence(lambda n: f"user{n}@example.com")
    email = factory.SelfAttribute("username")
    password = factory.django.Password("correct horse battery staple")


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Team

    name = factory.Sequence(lambda n: f"Team {n}")
    slug = factory.Sequence(lambda n: f"team-{n}")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    team = factory.SubFactory(TeamFactory)
    user = factory.SubFactory(UserFactory)
    role = Role.VIEWER


class AccountFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CloudAccount

    provider = Provider.AZURE
    subscription_id = factory.Faker("uuid4")
    display_name = factory.Sequence(lambda n: f"Subscription {n}")


class WorkspaceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Workspace

    account = factory.SubFactory(AccountFactory)
    name = factory.Sequence(lambda n: f"ws-{n}")
    resource_group = "rg-test"
    region = "eastus2"
    provider = Provider.AZURE
    team = factory.SubFactory(TeamFactory)


def offering(slug: str = "meta-llama-3-8b-instruct") -> Offering:
    """Catalog rows come from the data migration: tests use the real catalog."""
    return Offering.objects.get(slug=slug)


class EndpointFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Endpoint

    workspace = factory.SubFactory(WorkspaceFactory)
    kind = Endpoint.Kind.MANAGED
    name = factory.Sequence(lambda n: f"endpoint-{n}")
    offering = factory.LazyFunction(lambda: offering("mixtral-8x7b-instruct-v01"))
    provisioning_state = ProvisioningState.SUCCEEDED


class DeploymentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ManagedDeployment

    endpoint = factory.SubFactory(EndpointFactory)
    name = factory.Sequence(lambda n: f"dep-{n}")
    vm_sku = "Standard_NC24ads_A100_v4"
    instance_count = 1
    traffic_percent = 100


class SubscriptionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = MarketplaceSubscription

    workspace = factory.SubFactory(WorkspaceFactory)
    offering = factory.LazyFunction(offering)
    name = factory.Sequence(lambda n: f"sub-{n}")
    state = MarketplaceSubscription.State.SUCCEEDED


class JobFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Job

    kind = "sync"
    target_label = "test"
