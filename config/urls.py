from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include(("annotation_app.api.urls", "api-v1"))),
    path("", include("annotation_app.urls")),
]
