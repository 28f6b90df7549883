"""The Celery application. Workers: ``celery -A config worker -Q generation,training,default``."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("pairwise")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["model_worker", "annotation_app"])
