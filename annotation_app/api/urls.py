from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from annotation_app.api import views

router = DefaultRouter()
router.register("batches", views.BatchViewSet, basename="batch")
router.register("assignments", views.AssignmentViewSet, basename="assignment")
router.register("annotations", views.AnnotationViewSet, basename="annotation")
router.register("models", views.ModelVersionViewSet, basename="modelversion")
router.register("training-runs", views.TrainingRunViewSet, basename="trainingrun")

urlpatterns = [
    path("tasks/next/", views.NextTaskView.as_view(), name="next-task"),
    path("export/", views.ExportView.as_view(), name="export"),
    path("auth/token/", views.TokenView.as_view(), name="api-token"),
    path("schema/", SpectacularAPIView.as_view(api_version="v1"), name="schema"),
    # Its script served as a file, not inline: the Content Security Policy allows no inline
    # script without a nonce.
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api-v1:schema"), name="docs"),
    *router.urls,
]
