"""The Django admin as batch admins and ML staff use it: what the lists show, the sampling plan
as a form, who can be assigned, and training runs that are read-only there."""

from __future__ import annotations

import re
import uuid

import pytest

from annotation_app.models import Batch, Comparison, ModelVersion, TrainingRun
from annotation_app.roles import Role
from annotation_app.services.annotations import Judgement, submit_annotation
from annotation_app.services.assignment import next_assignment
from annotation_app.services.training import start
from tests.admin_forms import admin_post_data
from tests.training_jobs import run_in_process

pytestmark = pytest.mark.django_db

BATCH_ADD = "/admin/annotation_app/batch/add/"


def judge(user, batch, side: str) -> None:
    lease = next_assignment(user, batch=batch)
    submit_annotation(user, lease.pk, Judgement(side, "better"), uuid.uuid4())


def test_the_comparisons_list_shows_the_prompt_and_the_outcome(
    client, batch_admin, make_batch, make_user
):
    batch = make_batch(comparisons=2, overlap=2, name="Outcomes")
    first, second = make_user(), make_user()
    # Both annotators judge the one comparison each is given first; the left side differs per
    # lease, so count what they preferred in slots rather than sides.
    judge(first, batch, "A")
    judge(second, batch, "A")
    client.force_login(batch_admin)
    html = client.get("/admin/annotation_app/comparison/").content.decode()
    assert "Question 0?" in html and "Question 1?" in html  # the prompts
    for comparison in Comparison.objects.filter(batch=batch):
        slots = list(comparison.annotations.values_list("preferred_slot", flat=True))
        if not slots:
            continue
        if len(slots) == 2 and slots[0] != slots[1]:
            expected = "split 1–1"
        else:
            expected = f"response {slots[0]} ({len(slots)} of {len(slots)})"
        assert f'<td class="field-preference">{expected}</td>' in html
        assert f'<td class="field-annotations">{len(slots)} / 2</td>' in html


def test_a_comparison_shows_its_annotations_read_only(client, batch_admin, make_batch, make_user):
    batch = make_batch(comparisons=1, overlap=1)
    annotator = make_user(username="judge-judy")
    lease = next_assignment(annotator, batch=batch)
    submit_annotation(
        annotator,
        lease.pk,
        Judgement("B", "slightly_better", rationale="B is kinder"),
        uuid.uuid4(),
    )
    client.force_login(batch_admin)
    html = client.get(
        f"/admin/annotation_app/comparison/{lease.comparison_id}/change/"
    ).content.decode()
    assert "judge-judy" in html and "Slightly better" in html and "B is kinder" in html
    assert 'name="annotations-0-strength"' not in html  # shown, not editable
    assert 'name="annotations-MAX_NUM_FORMS" value="0"' in html  # none can be added


def test_the_sampling_plan_is_a_form_of_two_sides(client, batch_admin):
    policy = ModelVersion.objects.create(name="policy-v2", role="policy", path="org/p2")
    ModelVersion.objects.create(name="rm-help", role="reward_helpfulness", path="org/rm")
    client.force_login(batch_admin)
    page = client.get(BATCH_ADD)
    html = page.content.decode()
    assert '<table class="sampling-plan"' in html
    assert (
        html.count('aria-label="Response 1: ') == 4 and html.count('aria-label="Response 2: ') == 4
    )
    assert '<option value="policy-v2">' in html and "rm-help" not in html  # policies only

    data = admin_post_data(page)
    data.update(
        {
            "name": "Planned",
            "kind": "helpfulness",
            "sampling_plan_0": policy.name,
            "sampling_plan_1": "0.5",
            "sampling_plan_2": "0.8",
            "sampling_plan_3": "32",
            "sampling_plan_4": "",  # the current policy
            "sampling_plan_5": "1.2",
            "sampling_plan_6": "",  # empty cells take the defaults
            "sampling_plan_7": "",
        }
    )
    response = client.post(BATCH_ADD, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Batch.objects.get(name="Planned").sampling_plan == {
        "sides": [
            {"model_version": "policy-v2", "temperature": 0.5, "top_p": 0.8, "max_new_tokens": 32},
            {"temperature": 1.2},
        ]
    }

    data.update({"name": "Badly planned", "sampling_plan_6": "1.5"})
    response = client.post(BATCH_ADD, data)
    assert response.status_code == 200
    assert "Response 2, top p: must be in (0, 1]" in response.content.decode()
    assert not Batch.objects.filter(name="Badly planned").exists()

    # The stored plan comes back into the table; the defaults are placeholders, not values.
    batch = Batch.objects.get(name="Planned")
    html = client.get(f"/admin/annotation_app/batch/{batch.pk}/change/").content.decode()
    assert '<option value="policy-v2" selected>' in html
    assert 'name="sampling_plan_5" value="1.2"' in html
    (top_p,) = re.findall(r'<input [^>]*name="sampling_plan_6"[^>]*>', html)
    assert 'placeholder="0.9"' in top_p  # the default top_p, shown
    assert "value=" not in top_p  # and not stored


@pytest.mark.parametrize(
    "plan",
    [
        {},
        {"sides": [{}, {}]},
        {"sides": [{"temperature": 0.5}, {"max_new_tokens": 64, "top_p": 1}]},
        {"sides": [{"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 256}, {}]},
    ],
    ids=["empty", "two-empty-sides", "partial", "defaults-spelled-out"],
)
def test_saving_a_batch_unchanged_leaves_its_sampling_plan_as_stored(
    client, batch_admin, make_batch, plan
):
    batch = make_batch(comparisons=1, sampling_plan=plan)
    change = f"/admin/annotation_app/batch/{batch.pk}/change/"
    client.force_login(batch_admin)
    page = client.get(change)
    data = admin_post_data(page)
    response = client.post(change, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    batch.refresh_from_db()
    assert batch.sampling_plan == plan

    # Another setting changed: the plan still stays as it was.
    response = client.post(change, {**data, "guidelines": "Be kind."})
    assert response.status_code == 302
    batch.refresh_from_db()
    assert (batch.guidelines, batch.sampling_plan) == ("Be kind.", plan)

    # Clearing a cell clears that setting, to its default.
    if plan.get("sides") and plan["sides"][0].get("temperature") is not None:
        client.post(change, {**data, "sampling_plan_1": ""})
        batch.refresh_from_db()
        assert "temperature" not in batch.sampling_plan["sides"][0]


def test_a_lease_taken_while_the_batch_form_is_saved_is_a_message_not_a_server_error(
    client, batch_admin, make_batch, make_user, monkeypatch
):
    """The form checks a lower overlap against the open leases, and the service checks again
    under its lock when saving: a lease taken in between refuses the save, with a message."""
    from django.contrib import admin

    from annotation_app.admin import BatchForm

    batch = make_batch(comparisons=1, overlap=2)
    judge(make_user(), batch, "A")  # one annotation of two: overlap 1 is fine for now
    late = make_user()

    class LeaseTakenAfterTheCheck(BatchForm):
        def clean(self):
            cleaned = super().clean()
            next_assignment(late, batch=batch)  # now the comparison holds 1 + 1 > 1
            return cleaned

    monkeypatch.setattr(admin.site._registry[Batch], "form", LeaseTakenAfterTheCheck)
    change = f"/admin/annotation_app/batch/{batch.pk}/change/"
    client.force_login(batch_admin)
    data = admin_post_data(client.get(change))
    response = client.post(change, {**data, "overlap": "1", "guidelines": "Changed"}, follow=True)
    assert response.status_code == 200
    text = " ".join(str(message) for message in response.context["messages"])
    assert "overlap 1 is below what comparison" in text
    batch.refresh_from_db()
    assert (batch.overlap, batch.guidelines) == (2, "")  # nothing saved


def test_only_annotators_can_be_assigned_to_a_batch(client, batch_admin, make_user):
    annotator = make_user(username="anna")
    staff = make_user(Role.ML_STAFF, username="ml-mike", is_staff=True)
    client.force_login(batch_admin)
    page = client.get(BATCH_ADD)
    html = page.content.decode()
    assert f'<option value="{annotator.pk}">anna</option>' in html
    for other in (staff, batch_admin):
        assert f'<option value="{other.pk}">' not in html

    data = admin_post_data(page)
    data.update({"name": "Assigned", "kind": "helpfulness", "assigned_annotators": [staff.pk]})
    response = client.post(BATCH_ADD, data)
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert not Batch.objects.filter(name="Assigned").exists()


@pytest.fixture
def runs(ml_staff):
    running = TrainingRun.objects.create(
        kind="reward_helpfulness",
        status="running",
        progress=0.4,
        created_by=ml_staff,
        metrics={"train_pairs": 8, "eval_pairs": 2, "export_pairs": 10},
    )
    queued = TrainingRun.objects.create(kind="reward_safety", created_by=ml_staff)
    return running, queued


def test_training_runs_are_read_only_in_the_admin(client, ml_staff, batch_admin, runs):
    running, _ = runs
    client.force_login(ml_staff)
    html = client.get("/admin/annotation_app/trainingrun/").content.decode()
    # Filter entries only for the kinds that have runs.
    assert "?kind=reward_helpfulness" in html and "?kind=reward_safety" in html
    assert "?kind=ppo" not in html and "?kind=sft" not in html
    assert '<td class="field-pairs">8 / 2</td>' in html and '<td class="field-pairs">—</td>' in html
    assert 'href="/training/" class="addlink">Start a training run' in html

    add = client.get("/admin/annotation_app/trainingrun/add/")
    assert add.status_code == 302 and add["Location"] == "/training/"
    change = f"/admin/annotation_app/trainingrun/{running.pk}/change/"
    page = client.get(change)
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert f'href="/training/runs/{running.pk}/"' in page.content.decode()
    assert client.post(change, {"status": "succeeded"}).status_code == 403
    assert client.get(f"/admin/annotation_app/trainingrun/{running.pk}/delete/").status_code == 403
    running.refresh_from_db()
    assert running.status == "running"

    client.force_login(batch_admin)  # may read runs, not start them
    assert client.get("/admin/annotation_app/trainingrun/add/").status_code == 403


def test_the_run_page_shows_its_pair_counts_while_it_runs(client, ml_staff, runs):
    running, queued = runs
    client.force_login(ml_staff)
    html = client.get(f"/training/runs/{running.pk}/").content.decode()
    assert '<dd id="run-pairs" data-known="true">8 trained on, 2 held out</dd>' in html
    html = client.get(f"/training/runs/{queued.pk}/").content.decode()
    assert "counted once the data is frozen" in html


def test_the_status_a_run_page_polls_carries_the_pair_counts_not_the_metrics(
    client, ml_staff, runs
):
    running, queued = runs
    client.force_login(ml_staff)
    status = client.get(f"/api/v1/training-runs/{running.pk}/status/").json()
    assert (status["train_pairs"], status["eval_pairs"]) == (8, 2)
    assert "metrics" not in status and "logs" not in status
    status = client.get(f"/api/v1/training-runs/{queued.pk}/status/").json()
    assert (status["train_pairs"], status["eval_pairs"]) == (None, None)
    # The page polls only that: it has no address of the run's full detail to fetch.
    html = client.get(f"/training/runs/{queued.pk}/").content.decode()
    assert f"/api/v1/training-runs/{queued.pk}/status/" in html
    assert f'"/api/v1/training-runs/{queued.pk}/"' not in html


def test_a_run_records_its_pair_counts_before_it_trains(
    make_batch, make_user, ml_staff, monkeypatch, settings, tmp_path
):
    settings.PAIRWISE_TRAINING_DIR = tmp_path / "training"
    ModelVersion.objects.create(name="policy-v1", role="policy", path="org/p1", is_current=True)
    batch = make_batch(comparisons=10, name="to train on")
    annotator = make_user()
    while (lease := next_assignment(annotator, batch=batch)) is not None:
        submit_annotation(annotator, lease.pk, Judgement("A", "better"), uuid.uuid4())
    run = start.start_reward_training(
        ml_staff, "helpfulness", [batch], config={"eval_fraction": 0.2}
    )
    seen = {}

    def trainer(config, train_pairs, eval_pairs, out_dir, progress=None, **_):
        seen["given"] = (len(train_pairs), len(eval_pairs))
        raise RuntimeError("stop here")

    monkeypatch.setattr("rlhf.reward.training.train_reward_model", trainer)
    assert run_in_process(run.pk) == "failed"
    run.refresh_from_db()  # what the pages read
    assert (run.metrics["train_pairs"], run.metrics["eval_pairs"]) == seen["given"]
    assert run.metrics["train_pairs"] + run.metrics["eval_pairs"] == run.metrics["export_pairs"]
    assert run.metrics["export_pairs"] == 10


def test_the_outbox_and_the_import_history_are_listed_read_only(
    client, batch_admin, ml_staff, make_batch
):
    from annotation_app.models import ImportedFile, OutboxMessage

    make_batch(comparisons=2, name="Recorded")  # one import, recorded by its content hash
    message = OutboxMessage.objects.create(
        kind=OutboxMessage.Kind.GENERATION,
        payload={"requests": []},
        last_error="OperationalError: Error 111 connecting to 127.0.0.1:6379",
    )
    client.force_login(batch_admin)
    outbox = client.get("/admin/annotation_app/outboxmessage/?answered=no").content.decode()
    assert "OperationalError: Error 111" in outbox
    assert client.get("/admin/annotation_app/outboxmessage/add/").status_code == 403
    history = client.get("/admin/annotation_app/importedfile/").content.decode()
    assert ImportedFile.objects.get(batch__name="Recorded").filename in history

    # A batch admin sends an unanswered message again: it becomes due at once.
    OutboxMessage.objects.filter(pk=message.pk).update(sent_at="2026-01-01T00:00:00Z")
    client.post(
        "/admin/annotation_app/outboxmessage/",
        {"action": "send_selected_again", "_selected_action": [message.pk]},
    )
    message.refresh_from_db()
    assert message.sent_at is None or message.attempts == 1  # made due, then relayed
    # ML staff may look, not resend.
    client.force_login(ml_staff)
    page = client.get("/admin/annotation_app/outboxmessage/").content.decode()
    assert "send_selected_again" not in page
