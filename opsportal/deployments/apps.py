from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "opsportal.deployments"
    label = "deployments"
