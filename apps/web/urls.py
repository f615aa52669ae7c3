from django.contrib.auth import views as auth_views
from django.urls import path

from apps.web import (
    agent_views,
    ask_views,
    conversation_views,
    corpus_views,
    pipeline_views,
    team_views,
    usage_views,
    views,
)

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("team/switch/", views.team_switch, name="team-switch"),
    path("jobs/", views.job_list, name="jobs"),
    path("jobs/probe/", views.worker_probe, name="worker-probe"),
    path("healthz", views.healthz, name="healthz"),
    # Team: members, roles, invitations, API keys
    path("team/members/", team_views.members, name="members"),
    path("team/members/<int:membership_id>/role/", team_views.member_role, name="member-role"),
    path("team/members/<int:membership_id>/remove/", team_views.member_remove, name="member-remove"),
    path("team/invitations/", team_views.invitation_create, name="invitation-create"),
    path(
        "team/invitations/<int:invitation_id>/revoke/", team_views.invitation_revoke, name="invitation-revoke"
    ),
    path("invite/<str:token>/", team_views.invitation_accept, name="invitation-accept"),
    path("team/api-keys/", team_views.api_keys, name="api-keys"),
    path("team/api-keys/new/", team_views.api_key_create, name="api-key-create"),
    path("team/api-keys/<int:key_id>/revoke/", team_views.api_key_revoke, name="api-key-revoke"),
    # Corpora and documents
    path("corpora/", corpus_views.corpus_list, name="corpora"),
    path("corpora/new/", corpus_views.corpus_create, name="corpus-create"),
    path("corpora/<int:corpus_id>/", corpus_views.corpus_detail, name="corpus-detail"),
    path("corpora/<int:corpus_id>/documents/", corpus_views.corpus_documents, name="corpus-documents"),
    path("corpora/<int:corpus_id>/upload/", corpus_views.corpus_upload, name="corpus-upload"),
    path("corpora/<int:corpus_id>/delete/", corpus_views.corpus_delete, name="corpus-delete"),
    path("documents/<int:document_id>/", corpus_views.document_detail, name="document-detail"),
    path("documents/<int:document_id>/delete/", corpus_views.document_delete, name="document-delete"),
    # Ask
    path("ask/", ask_views.ask, name="ask"),
    path("ask/runs/<int:run_id>/", ask_views.query_run, name="query-run"),
    path("ask/runs/<int:run_id>/live/", ask_views.query_run_live, name="query-run-live"),
    path("ask/runs/<int:run_id>/stop/", conversation_views.query_run_stop, name="query-run-stop"),
    path("ask/runs/<int:run_id>/regenerate/", conversation_views.query_run_regenerate, name="query-run-regenerate"),
    path("ask/conversations/<int:conversation_id>/", conversation_views.conversation_detail, name="conversation"),
    path("ask/conversations/<int:conversation_id>/ask/", conversation_views.conversation_ask,
         name="conversation-ask"),
    path("ask/conversations/<int:conversation_id>/rename/", conversation_views.conversation_rename,
         name="conversation-rename"),
    path("ask/conversations/<int:conversation_id>/delete/", conversation_views.conversation_delete,
         name="conversation-delete"),
    # Pipelines
    path("pipelines/", pipeline_views.pipeline_list, name="pipelines"),
    path("pipelines/new/", pipeline_views.pipeline_create, name="pipeline-create"),
    path("pipelines/<int:pipeline_id>/edit/", pipeline_views.pipeline_edit, name="pipeline-edit"),
    path("pipelines/<int:pipeline_id>/delete/", pipeline_views.pipeline_delete, name="pipeline-delete"),
    path("pipelines/<int:pipeline_id>/prefill/", pipeline_views.pipeline_prefill, name="pipeline-prefill"),
    path(
        "pipelines/<int:pipeline_id>/prefill/status/",
        pipeline_views.pipeline_prefill_status,
        name="pipeline-prefill-status",
    ),
    # Usage and budgets
    path("usage/", usage_views.usage, name="usage"),
    path("usage/ledger.csv", usage_views.usage_csv, name="usage-csv"),
    path("usage/budgets/new/", usage_views.budget_create, name="budget-create"),
    path("usage/budgets/<int:budget_id>/edit/", usage_views.budget_edit, name="budget-edit"),
    # Agents and the tool library
    path("agents/", agent_views.agent_list, name="agents"),
    path("agents/new/", agent_views.agent_create, name="agent-create"),
    path("agents/<int:agent_id>/", agent_views.agent_detail, name="agent-detail"),
    path("agents/<int:agent_id>/edit/", agent_views.agent_edit, name="agent-edit"),
    path("agents/<int:agent_id>/delete/", agent_views.agent_delete, name="agent-delete"),
    path("agents/runs/<int:run_id>/", agent_views.agent_run, name="agent-run"),
    path("agents/runs/<int:run_id>/live/", agent_views.agent_run_live, name="agent-run-live"),
    path("agents/tools/", agent_views.tool_list, name="tools"),
    path("agents/tools/new/", agent_views.tool_create, name="tool-create"),
    path("agents/tools/<int:tool_id>/edit/", agent_views.tool_edit, name="tool-edit"),
    path("agents/tools/<int:tool_id>/delete/", agent_views.tool_delete, name="tool-delete"),
]
