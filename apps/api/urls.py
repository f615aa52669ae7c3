from csp.constants import UNSAFE_INLINE
from csp.decorators import csp_update
from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from apps.api import (
    agent_views,
    bulk_views,
    conversation_views,
    corpora_views,
    costs_views,
    endpoint_views,
    evaluation_views,
    pipeline_views,
    query_views,
    views,
)
from apps.api.errors import unmatched_url

API_DOC_POLICY = csp_update({"style-src": [UNSAFE_INLINE], "worker-src": ["'self'", "blob:"]})

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(permission_classes=[], authentication_classes=[]), name="api-schema"),
    path(
        "docs/",
        # The split view serves its start-up script as a file (the CSP allows no inline script); the doc
        # bundles inject <style> elements and Redoc searches in a blob: worker: these two pages allow both.
        API_DOC_POLICY(
            SpectacularSwaggerSplitView.as_view(url_name="api-schema", permission_classes=[], authentication_classes=[])
        ),
        name="api-docs",
    ),
    path(
        "redoc/",
        API_DOC_POLICY(
            SpectacularRedocView.as_view(url_name="api-schema", permission_classes=[], authentication_classes=[])
        ),
        name="api-redoc",
    ),
    path("v1/me", views.MeView.as_view(), name="api-me"),
    path("v1/jobs", views.JobListView.as_view(), name="api-jobs"),
    path("v1/jobs/<int:job_id>", views.JobDetailView.as_view(), name="api-job"),
    path("v1/jobs/<int:job_id>/cancel", views.JobCancelView.as_view(), name="api-job-cancel"),
    path("v1/corpora", corpora_views.CorpusListView.as_view(), name="api-corpora"),
    path("v1/corpora/<int:corpus_id>", corpora_views.CorpusDetailView.as_view(), name="api-corpus"),
    path("v1/corpora/<int:corpus_id>/documents", corpora_views.DocumentListView.as_view(), name="api-documents"),
    path("v1/corpora/<int:corpus_id>/search", corpora_views.SearchView.as_view(), name="api-search"),
    path("v1/documents/<int:document_id>", corpora_views.DocumentDetailView.as_view(), name="api-document"),
    path("v1/pipelines", pipeline_views.PipelineListView.as_view(), name="api-pipelines"),
    path("v1/pipelines/<int:pipeline_id>", pipeline_views.PipelineDetailView.as_view(), name="api-pipeline"),
    path(
        "v1/pipelines/<int:pipeline_id>/fixed-context/prefill",
        pipeline_views.PipelinePrefillView.as_view(),
        name="api-pipeline-prefill",
    ),
    path(
        "v1/pipelines/<int:pipeline_id>/cascade-scorer",
        pipeline_views.PipelineCascadeScorerView.as_view(),
        name="api-pipeline-cascade-scorer",
    ),
    path("v1/queries", query_views.QueryListView.as_view(), name="api-queries"),
    path("v1/queries/<int:query_id>", query_views.QueryDetailView.as_view(), name="api-query"),
    path("v1/conversations", conversation_views.ConversationListView.as_view(), name="api-conversations"),
    path("v1/conversations/<int:conversation_id>", conversation_views.ConversationDetailView.as_view(),
         name="api-conversation"),
    path("v1/bulk-jobs", bulk_views.BulkJobListView.as_view(), name="api-bulk-jobs"),
    path("v1/bulk-jobs/<int:bulk_job_id>", bulk_views.BulkJobDetailView.as_view(), name="api-bulk-job"),
    path("v1/bulk-jobs/<int:bulk_job_id>/results", bulk_views.BulkJobResultsView.as_view(), name="api-bulk-results"),
    path("v1/queries/<int:query_id>/cancel", query_views.QueryCancelView.as_view(), name="api-query-cancel"),
    path("v1/usage", costs_views.UsageView.as_view(), name="api-usage"),
    path("v1/budgets", costs_views.BudgetListView.as_view(), name="api-budgets"),
    path("v1/budgets/<int:budget_id>", costs_views.BudgetDetailView.as_view(), name="api-budget"),
    path("v1/model-endpoints", endpoint_views.EndpointListView.as_view(), name="api-endpoints"),
    path("v1/model-endpoints/<int:endpoint_id>", endpoint_views.EndpointDetailView.as_view(), name="api-endpoint"),
    path(
        "v1/model-endpoints/<int:endpoint_id>/test", endpoint_views.EndpointTestView.as_view(), name="api-endpoint-test"
    ),
    path("v1/prices", endpoint_views.PriceListView.as_view(), name="api-prices"),
    path("v1/tools", agent_views.ToolListView.as_view(), name="api-tools"),
    path("v1/tools/<int:tool_id>", agent_views.ToolDetailView.as_view(), name="api-tool"),
    path("v1/agents", agent_views.AgentListView.as_view(), name="api-agents"),
    path("v1/agents/<int:agent_id>", agent_views.AgentDetailView.as_view(), name="api-agent"),
    path("v1/agent-runs", agent_views.AgentRunListView.as_view(), name="api-agent-runs"),
    path("v1/agent-runs/<int:run_id>", agent_views.AgentRunDetailView.as_view(), name="api-agent-run"),
    # Last: any other URL here answers 404 in the API's error shape.
    path("v1/eval-sets", evaluation_views.EvalSetListView.as_view(), name="api-eval-sets"),
    path("v1/evaluations", evaluation_views.EvalRunListView.as_view(), name="api-evaluations"),
    path("v1/evaluations/<int:eval_run_id>", evaluation_views.EvalRunDetailView.as_view(), name="api-evaluation"),
    path("v1/evaluations/<int:eval_run_id>/rows", evaluation_views.EvalRunRowsView.as_view(),
         name="api-evaluation-rows"),
    re_path(r"^v1/", unmatched_url),
]
