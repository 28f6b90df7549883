from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include(("annotation_app.api.urls", "api-v1"))),
    path("", include("annotation_app.urls")),
]

# Styled pages with navigation; JSON in the API's error shape under /api/.
handler400 = "annotation_app.error_pages.bad_request"
handler403 = "annotation_app.error_pages.permission_denied"
handler404 = "annotation_app.error_pages.not_found"
handler500 = "annotation_app.error_pages.server_error"
