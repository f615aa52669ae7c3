from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from apps.api import views

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(permission_classes=[], authentication_classes=[]), name="api-schema"),
    path(
        "docs/",
        SpectacularSwaggerView.as_view(url_name="api-schema", permission_classes=[], authentication_classes=[]),
        name="api-docs",
    ),
    path(
        "redoc/",
        SpectacularRedocView.as_view(url_name="api-schema", permission_classes=[], authentication_classes=[]),
        name="api-redoc",
    ),
    path("v1/me", views.MeView.as_view(), name="api-me"),
    path("v1/jobs", views.JobListView.as_view(), name="api-jobs"),
    path("v1/jobs/<int:job_id>", views.JobDetailView.as_view(), name="api-job"),
    path("v1/jobs/<int:job_id>/cancel", views.JobCancelView.as_view(), name="api-job-cancel"),
]
