from django.urls import path

from apps.agents import views

urlpatterns = [
    path("", views.agent_list, name="agents"),
    path("new/", views.agent_create, name="agent-create"),
    path("<int:agent_id>/", views.agent_detail, name="agent-detail"),
    path("<int:agent_id>/edit/", views.agent_edit, name="agent-edit"),
    path("<int:agent_id>/delete/", views.agent_delete, name="agent-delete"),
    path("runs/<int:run_id>/", views.agent_run, name="agent-run"),
    path("runs/<int:run_id>/live/", views.agent_run_live, name="agent-run-live"),
    path("tools/", views.tool_list, name="tools"),
    path("tools/new/", views.tool_create, name="tool-create"),
    path("tools/<int:tool_id>/edit/", views.tool_edit, name="tool-edit"),
    path("tools/<int:tool_id>/delete/", views.tool_delete, name="tool-delete"),
]
