"""The demo command sets up users in every role and two annotatable batches."""

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from annotation_app.models import Batch, Comparison
from annotation_app.services.assignment import next_assignment
from annotation_app.services.demo import DEMO_PASSWORD

pytestmark = pytest.mark.django_db


def test_demo_sets_up_roles_and_batches_once():
    out = io.StringIO()
    call_command("demo", "--no-serve", stdout=out)
    call_command("demo", "--no-serve", stdout=io.StringIO())  # idempotent
    printed = out.getvalue()
    for username in ("annotator1", "batchadmin", "mlstaff"):
        assert username in printed
        user = get_user_model().objects.get(username=username)
        assert user.check_password(DEMO_PASSWORD)
    assert DEMO_PASSWORD in printed
    batches = {batch.kind: batch for batch in Batch.objects.all()}
    assert set(batches) == {"helpfulness", "safety"} and Batch.objects.count() == 2
    for batch in batches.values():
        assert batch.status == Batch.Status.ACTIVE
        assert batch.comparisons.filter(status=Comparison.Status.READY).count() >= 10
    safety = batches["safety"]
    assert not safety.conversations.filter(risk_category="").exists()
    annotator = get_user_model().objects.get(username="annotator1")
    assert next_assignment(annotator) is not None
