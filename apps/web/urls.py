from django.contrib.auth import views as auth_views
from django.urls import path

from apps.web import views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("team/switch/", views.team_switch, name="team-switch"),
    path("jobs/", views.job_list, name="jobs"),
    path("jobs/probe/", views.worker_probe, name="worker-probe"),
    path("healthz", views.healthz, name="healthz"),
]
