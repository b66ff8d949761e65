"""Thin Celery tasks for cost: the local meters every minute, Azure a few times a day."""

import logging

from celery import shared_task

from opsportal.costs.services import azure_costs_pull_all, local_costs_compute
from opsportal.providers import azure_cloud

log = logging.getLogger(__name__)


@shared_task
def local_costs_scheduled() -> int:
    return local_costs_compute()


@shared_task
def azure_costs_scheduled() -> list[str]:
    """Pull each Azure subscription whose last pull is older than OPSPORTAL_COST_PULL_HOURS."""
    if not azure_cloud.configured()[0]:
        return []
    pulls = azure_costs_pull_all(credential=azure_cloud.credential())
    for pull in pulls:
        if pull.error:
            log.warning("cost pull of %s: %s", pull.account, pull.error)
    return [f"{p.account.subscription_id}: {p.error or p.rows}" for p in pulls]
