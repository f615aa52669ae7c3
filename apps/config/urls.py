from django.contrib import admin
from django.http import HttpRequest, HttpResponsePermanentRedirect
from django.templatetags.static import static
from django.urls import include, path

# The app sidebar took 275 px from every admin page: at 1280 px the ledger's columns did not fit
# beside the filters. The admin's home page lists the same apps.
admin.site.enable_nav_sidebar = False


def favicon(request: HttpRequest) -> HttpResponsePermanentRedirect:
    # Resolved per request: with the manifest storage the file's hashed name exists only after collectstatic.
    return HttpResponsePermanentRedirect(static("favicon.svg"))


urlpatterns = [
    # Browsers ask for /favicon.ico on pages without an icon link (the admin's, a JSON error): no 404.
    path("favicon.ico", favicon),
    path("admin/", admin.site.urls),
    path("api/", include("apps.api.urls")),
    path("v1/", include("apps.api.openai_urls")),
    path("", include("apps.web.urls")),
]
