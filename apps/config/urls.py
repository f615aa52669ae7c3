from django.contrib import admin
from django.urls import include, path

# The app sidebar took 275 px from every admin page: at 1280 px the ledger's columns did not fit
# beside the filters. The admin's home page lists the same apps.
admin.site.enable_nav_sidebar = False

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("apps.api.urls")),
    path("v1/", include("apps.api.openai_urls")),
    path("", include("apps.web.urls")),
]
