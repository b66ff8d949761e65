from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from opsportal.chat import views as chat
from opsportal.console import views as console
from opsportal.core import views as core
from opsportal.costs import views as costs
from opsportal.deployments import views as deployments
from opsportal.inventory import views as inventory
from opsportal.jobs import views as jobs
from opsportal.keys import views as keys
from opsportal.sync import views as sync

urlpatterns = [
    path("", console.dashboard, name="dashboard"),
    path("healthz", core.healthz, name="healthz"),
    path("readyz", core.readyz, name="readyz"),
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="accounts/login.html"),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/", sync.accounts_list, name="accounts"),
    path("accounts/azure-sync/", sync.azure_sync_start, name="azure_sync_start"),
    path("workspaces/", inventory.workspaces_list, name="workspaces"),
    path("workspaces/<int:pk>/", console.workspace_detail, name="workspace_detail"),
    path("workspaces/<int:pk>/team/", inventory.workspace_team, name="workspace_team"),
    path("endpoints/", inventory.endpoints_list, name="endpoints"),
    path("endpoints/<int:pk>/", console.endpoint_detail, name="endpoint_detail"),
    path("offerings/", inventory.offerings_list, name="offerings"),
    path("offerings/<slug:slug>/", inventory.offering_detail, name="offering_detail"),
    path("teams/", console.teams_list, name="teams"),
    path("teams/new/", console.team_create, name="team_create"),
    path("teams/<slug:slug>/", console.team_detail, name="team_detail"),
    path("teams/<slug:slug>/members/", console.member_add, name="member_add"),
    path(
        "teams/<slug:slug>/members/<int:member_id>/",
        console.member_update,
        name="member_update",
    ),
    path(
        "teams/<slug:slug>/members/<int:member_id>/remove/",
        console.member_remove,
        name="member_remove",
    ),
    path("endpoints/<int:pk>/chat/", chat.turn_create, name="chat_turn_create"),
    path("endpoints/<int:pk>/chat/clear/", chat.chat_clear, name="chat_clear"),
    path("endpoints/<int:pk>/chat/export/", chat.chat_export, name="chat_export"),
    path("chat/turns/<int:turn_id>/stream/", chat.turn_stream, name="chat_turn_stream"),
    path("chat/compare/", chat.compare, name="chat_compare"),
    path("chat/compare/run/", chat.compare_create, name="chat_compare_create"),
    path("deploy/", deployments.deploy_new, name="deploy_new"),
    path("deploy/preflight/", deployments.deploy_preflight, name="deploy_preflight"),
    path("deploy/start/", deployments.deploy_create, name="deploy_create"),
    path(
        "endpoints/<int:pk>/delete/",
        deployments.endpoint_delete_confirm,
        name="endpoint_delete_confirm",
    ),
    path("endpoints/<int:pk>/delete/start/", deployments.endpoint_delete, name="endpoint_delete"),
    path(
        "endpoints/<int:pk>/deployments/",
        deployments.deployments_manage,
        name="deployments_manage",
    ),
    path(
        "endpoints/<int:pk>/deployments/traffic/",
        deployments.endpoint_traffic,
        name="endpoint_traffic",
    ),
    path(
        "endpoints/<int:pk>/deployments/<str:name>/scale/",
        deployments.deployment_scale,
        name="deployment_scale",
    ),
    path(
        "endpoints/<int:pk>/deployments/<str:name>/remove/",
        deployments.deployment_remove,
        name="deployment_remove",
    ),
    path("endpoints/<int:pk>/keys/rotate/", keys.key_rotate, name="key_rotate"),
    path("endpoints/<int:pk>/keys/schedule/", keys.key_schedule, name="key_schedule"),
    path("endpoints/<int:pk>/keys/reveal/", keys.key_reveal_view, name="key_reveal"),
    path("endpoints/rotate-keys/", keys.keys_rotate_bulk, name="keys_rotate_bulk"),
    path("jobs/", jobs.jobs_list, name="jobs"),
    path("jobs/<int:pk>/", jobs.job_detail, name="job_detail"),
    path("jobs/<int:pk>/cancel/", jobs.job_cancel_view, name="job_cancel"),
    path("jobs/<int:pk>/retry/", jobs.job_retry_view, name="job_retry"),
    path("audit/", jobs.audit_list, name="audit"),
    path("costs/", costs.costs_overview, name="costs"),
    path("costs/export.csv", costs.costs_export, name="costs_export"),
    path("quota/", costs.quota_overview, name="quota"),
    path("endpoints/<int:pk>/costs.csv", costs.endpoint_costs_export, name="endpoint_costs_export"),
    path(
        "marketplace/<int:pk>/",
        costs.marketplace_subscription_detail,
        name="marketplace_subscription_detail",
    ),
    path(
        "marketplace/<int:pk>/costs.csv",
        costs.marketplace_subscription_export,
        name="marketplace_subscription_export",
    ),
    path("teams/<slug:slug>/budget/", costs.budget_set, name="budget_set"),
    path("admin/", admin.site.urls),
]
