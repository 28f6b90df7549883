from django.apps import AppConfig


class AnnotationAppConfig(AppConfig):
    name = "annotation_app"
    verbose_name = "Pairwise annotation"
    default_auto_field = "django.db.models.BigAutoField"
