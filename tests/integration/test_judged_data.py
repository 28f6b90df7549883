"""Judged data is read-only everywhere, and the export never fails on a damaged row.

Once a comparison has annotations, its responses, its context turns, its conversation and its
own content cannot change or be deleted: not in the model layer (save, delete, queryset update
and delete), not in the admin, not through the API. Rows damaged anyway (here: with raw SQL,
as an old deletion or a hand-made repair could) are left out of every export and named: the
API's headers, the command's stderr, a training run's logs.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import F
from django.test import Client

from annotation_app.models import (
    Annotation,
    Batch,
    Comparison,
    Conversation,
    JudgedDataReadOnly,
    ModelVersion,
    Response,
    Turn,
)
from annotation_app.services.annotations import Judgement, submit_annotation
from annotation_app.services.assignment import next_assignment
from annotation_app.services.exports import (
    PreferenceExport,
    SkippedRow,
    export_lines,
    skipped_headers,
)
from annotation_app.services.imports import import_comparisons
from annotation_app.services.training import start
from tests.admin_forms import admin_post_data
from tests.training_jobs import FakeTrainer, run_in_process

pytestmark = pytest.mark.django_db


def annotate(batch: Batch, user, count: int) -> list[Comparison]:
    """Submit ``count`` annotations in ``batch``; returns the comparisons judged."""
    judged = []
    for _ in range(count):
        lease = next_assignment(user, batch=batch)
        submit_annotation(user, lease.pk, Judgement("A", "better"), uuid.uuid4())
        judged.append(Comparison.objects.get(pk=lease.comparison_id))
    return judged


@pytest.fixture
def rows(make_batch, annotator):
    """A batch of three comparisons: one judged (one annotation), two not."""
    batch = make_batch(comparisons=3)
    [judged] = annotate(batch, annotator, 1)
    fresh = batch.comparisons.exclude(pk=judged.pk).order_by("pk").first()
    return SimpleNamespace(batch=batch, judged=judged, fresh=fresh)


def content() -> dict:
    """Everything annotators judge, as stored (each model's ``JUDGED_FIELDS``)."""
    return {
        model.__name__: sorted(model.objects.values_list("pk", *model.JUDGED_FIELDS))
        for model in (Batch, Conversation, Turn, Comparison, Response)
    } | {"annotations": Annotation.objects.count()}


def raw_sql(statement: str, *params) -> None:
    """Damage the data behind the models' back, as an old deletion could have."""
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


# --- the model layer ------------------------------------------------------------------------


def test_a_judged_response_cannot_be_edited_or_deleted(rows):
    response = rows.judged.responses.get(slot=2)
    before = content()
    response.text = "Edited after the fact."
    named = rf"response 2 of comparison {rows.judged.pk} \(1 annotation\)"
    with pytest.raises(JudgedDataReadOnly, match=named + r": text cannot change"):
        response.save()
    with pytest.raises(JudgedDataReadOnly, match=named + r": it cannot be deleted"):
        Response.objects.get(pk=response.pk).delete()
    with pytest.raises(JudgedDataReadOnly, match=r"model_name cannot change"):
        Response.objects.filter(pk=response.pk).update(model_name="someone-else")
    # Bulk writes over a whole batch are refused as a whole, naming the first judged row.
    with pytest.raises(JudgedDataReadOnly, match=r"and 1 more judged responses"):
        Response.objects.filter(comparison__batch=rows.batch).delete()
    with pytest.raises(JudgedDataReadOnly):
        rows.judged.responses.all().delete()
    assert content() == before

    # Responses nobody judged yet stay editable (a typo fixed before activation, say).
    unjudged = rows.fresh.responses.get(slot=1)
    unjudged.text = "Fixed typo."
    unjudged.save()
    assert Response.objects.get(pk=unjudged.pk).text == "Fixed typo."
    Response.objects.filter(pk=unjudged.pk).update(text="Fixed again.")
    rows.fresh.responses.all().delete()
    assert not Response.objects.filter(comparison=rows.fresh).exists()


def test_judged_turns_conversations_and_comparisons_are_read_only(rows):
    comparison = Comparison.objects.get(pk=rows.judged.pk)
    conversation = comparison.conversation
    turn = conversation.turns.get(index=0)
    judged_by = rf"comparison {comparison.pk}, 1 annotation"
    before = content()

    turn.content = "A different question?"
    with pytest.raises(
        JudgedDataReadOnly,
        match=rf"turn 0 of conversation {conversation.pk} \(context of {judged_by}\): "
        r"content cannot change",
    ):
        turn.save()
    with pytest.raises(JudgedDataReadOnly, match="it cannot be deleted"):
        Turn.objects.get(pk=turn.pk).delete()
    with pytest.raises(JudgedDataReadOnly, match="it cannot be added"):
        Turn.objects.create(conversation=conversation, index=1, role="assistant", content="Hi")

    conversation.risk_category = "violence"
    with pytest.raises(
        JudgedDataReadOnly,
        match=rf"conversation {conversation.pk} \(dialogue of {judged_by}\): "
        r"risk_category cannot change",
    ):
        conversation.save()
    with pytest.raises(JudgedDataReadOnly, match="it cannot be deleted"):
        Conversation.objects.get(pk=conversation.pk).delete()

    comparison.context_length = 0
    with pytest.raises(
        JudgedDataReadOnly,
        match=rf"comparison {comparison.pk} \(1 annotation\): context_length cannot change",
    ):
        comparison.save()
    with pytest.raises(JudgedDataReadOnly, match="context_length cannot change"):
        Comparison.objects.filter(pk=comparison.pk).update(context_length=0)
    with pytest.raises(JudgedDataReadOnly, match="it cannot be deleted"):
        Comparison.objects.get(pk=comparison.pk).delete()
    with pytest.raises(JudgedDataReadOnly, match="it cannot be deleted"):
        Comparison.objects.filter(batch=rows.batch).delete()
    assert content() == before


def test_bookkeeping_of_a_judged_comparison_still_changes(rows):
    comparison = Comparison.objects.get(pk=rows.judged.pk)
    # As the services write it: statuses and counts, saved field by field or in bulk.
    comparison.status = Comparison.Status.CLOSED
    comparison.save(update_fields=["status"])
    Comparison.objects.filter(pk=comparison.pk).update(flag_count=F("flag_count") + 1)
    # A whole save that changes no judged field (the admin saves whole rows) is fine too.
    comparison.refresh_from_db()
    comparison.generation_error = "retried"
    comparison.save()
    comparison.refresh_from_db()
    assert (comparison.status, comparison.flag_count) == ("closed", 1)
    assert comparison.generation_error == "retried"


def test_a_judged_comparison_missing_a_response_takes_no_new_one(rows):
    raw_sql(
        "DELETE FROM annotation_app_response WHERE comparison_id = %s AND slot = 2", rows.judged.pk
    )
    with pytest.raises(JudgedDataReadOnly, match="it cannot be added"):
        Response.objects.create(comparison=rows.judged, slot=2, text="A stand-in.")
    assert not Response.objects.filter(comparison=rows.judged, slot=2).exists()


# --- the admin ------------------------------------------------------------------------------


def change_url(obj) -> str:
    return f"/admin/annotation_app/{obj._meta.model_name}/{obj.pk}/change/"


@pytest.fixture
def admin_client(batch_admin) -> Client:
    client = Client()
    client.force_login(batch_admin)
    return client


def test_the_admin_shows_judged_responses_read_only_and_saves_none_of_a_forged_edit(
    rows, admin_client
):
    fresh_page = admin_client.get(change_url(rows.fresh))
    assert 'name="responses-0-text"' in fresh_page.content.decode()  # editable: not judged

    page = admin_client.get(change_url(rows.judged))
    html = page.content.decode()
    assert page.status_code == 200
    assert 'name="responses-0-text"' not in html and 'name="context_length"' not in html
    assert rows.judged.responses.get(slot=1).text in html  # shown, read-only
    assert "deletelink" not in html

    before = content()
    data = admin_post_data(page)
    data.update(
        {
            "responses-0-text": "Edited in the admin.",
            "responses-0-DELETE": "on",
            "responses-1-DELETE": "on",
            "context_length": "0",
            "status": "closed",  # bookkeeping: still editable
        }
    )
    saved = admin_client.post(change_url(rows.judged), data)
    assert saved.status_code == 302, saved.content.decode()[:2000]
    assert content() == before
    assert Comparison.objects.get(pk=rows.judged.pk).status == "closed"


def test_the_admin_refuses_to_delete_judged_rows_with_a_message(rows, admin_client):
    before = content()
    for obj in (rows.judged, rows.judged.conversation):
        url = f"/admin/annotation_app/{obj._meta.model_name}/{obj.pk}/delete/"
        for attempt in (admin_client.get(url), admin_client.post(url, {"post": "yes"})):
            assert attempt.status_code == 302 and attempt["Location"] == change_url(obj)
        shown = admin_client.get(change_url(obj)).content.decode().lower()  # capitalised
        assert "it cannot be deleted; judged data is read-only" in shown
        judged_by = f"comparison {rows.judged.pk}, 1 annotation"
        assert judged_by in shown or f"comparison {rows.judged.pk} (1 annotation)" in shown
    # The changelist's bulk delete lists the annotations that protect it and deletes nothing.
    bulk = admin_client.post(
        "/admin/annotation_app/comparison/",
        {"action": "delete_selected", "_selected_action": [rows.judged.pk], "post": "yes"},
    )
    assert bulk.status_code == 200 and "Cannot delete" in bulk.content.decode()
    assert content() == before

    # A comparison nobody judged can still be deleted.
    url = f"/admin/annotation_app/comparison/{rows.fresh.pk}/delete/"
    assert admin_client.post(url, {"post": "yes"}).status_code == 302
    assert not Comparison.objects.filter(pk=rows.fresh.pk).exists()


def test_the_admin_shows_judged_turns_read_only(rows, admin_client):
    conversation = rows.judged.conversation
    page = admin_client.get(change_url(conversation))
    html = page.content.decode()
    assert 'name="turns-0-content"' not in html and 'name="risk_category"' not in html
    assert conversation.turns.get(index=0).content in html
    before = content()
    data = admin_post_data(page)
    data.update({"turns-0-content": "Changed?", "turns-0-DELETE": "on"})
    assert admin_client.post(change_url(conversation), data).status_code == 302
    assert content() == before
    fresh = admin_client.get(change_url(rows.fresh.conversation)).content.decode()
    assert 'name="turns-0-content"' in fresh


# --- the API --------------------------------------------------------------------------------


def test_no_api_route_writes_judged_content_and_a_judged_batch_is_not_deleted(
    rows, batch_admin, api_client
):
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    for route, operations in schema["paths"].items():
        writes = set(operations) & {"put", "patch", "delete", "post"}
        for word in ("response", "turn", "conversation", "comparison"):
            assert not (writes and word in route), f"{route} writes {word}s"
    api_client.force_authenticate(batch_admin)
    before = content()
    refused = api_client.delete(f"/api/v1/batches/{rows.batch.pk}/")
    assert refused.status_code == 409
    assert "holds 1 annotations and cannot be deleted" in refused.json()["detail"]
    assert content() == before


# --- the export -----------------------------------------------------------------------------


@pytest.fixture
def damaged(make_batch, annotator):
    """Two annotated batches; in the first, one comparison lost a response and another the
    first turn of its context (raw SQL: the models refuse both)."""
    first, second = make_batch(comparisons=3), make_batch(comparisons=2)
    no_response, no_turn, whole = annotate(first, annotator, 3)
    annotate(second, annotator, 2)
    raw_sql(
        "DELETE FROM annotation_app_response WHERE comparison_id = %s AND slot = 2",
        no_response.pk,
    )
    raw_sql(
        "DELETE FROM annotation_app_turn WHERE conversation_id = %s AND index = 0",
        no_turn.conversation_id,
    )
    return SimpleNamespace(
        first=first,
        second=second,
        whole=whole,
        skipped=[
            SkippedRow(no_response.pk, first.pk, "no response in slot 2", 1),
            SkippedRow(no_turn.pk, first.pk, "turn 0 of its 1-turn context is missing", 1),
        ],
    )


@pytest.mark.parametrize("export_format", ["canonical", "trl"])
def test_a_damaged_row_is_left_out_and_named_and_the_rest_exported(damaged, export_format):
    export = PreferenceExport(export_format)
    assert export.skipped == damaged.skipped
    records = [json.loads(line) for line in export.lines()]
    exported = sorted(record["comparison_id"] for record in records)
    whole = [damaged.whole.pk, *damaged.second.comparisons.values_list("pk", flat=True)]
    assert exported == sorted(whole)
    assert str(export.skipped[0]) == (
        f"comparison {damaged.skipped[0].comparison_id} (batch {damaged.first.pk}): "
        "no response in slot 2; 1 line left out"
    )
    # Another batch's export does not even see the damage.
    other = PreferenceExport(export_format, [damaged.second])
    assert other.skipped == [] and len(list(other.lines())) == 2


def test_a_row_damaged_while_the_export_streams_is_left_out_too(make_batch, annotator):
    batch = make_batch(comparisons=2)
    first, second = annotate(batch, annotator, 2)
    reported = []
    export = PreferenceExport("canonical", on_skipped=reported.append)
    assert export.skipped == []
    raw_sql("DELETE FROM annotation_app_response WHERE comparison_id = %s", second.pk)
    records = [json.loads(line) for line in export.lines()]
    assert [record["comparison_id"] for record in records] == [first.pk]
    assert (
        reported
        == export.skipped
        == [SkippedRow(second.pk, batch.pk, "no responses in slots 1 and 2", 1)]
    )


def test_reference_preferences_of_a_damaged_import_are_left_out(db):
    batch = Batch.objects.create(name="imported", kind="helpfulness")
    lines = "".join(
        json.dumps({"prompt": f"Question {i}?", "chosen": f"Yes {i}.", "rejected": f"No {i}."})
        + "\n"
        for i in range(3)
    )
    import_comparisons(batch, io.BytesIO(lines.encode()), "pairs.jsonl")
    broken = batch.comparisons.order_by("pk").first()
    raw_sql("DELETE FROM annotation_app_response WHERE comparison_id = %s AND slot = 1", broken.pk)
    export = PreferenceExport("trl", [batch], include_reference_preferences=True)
    assert export.skipped == [SkippedRow(broken.pk, batch.pk, "no response in slot 1", 1)]
    assert len(list(export.lines())) == 2


def test_the_export_api_names_the_rows_it_left_out_in_headers(damaged, ml_staff, api_client):
    api_client.force_authenticate(ml_staff)
    response = api_client.get("/api/v1/export/", {"format": "trl"})
    assert response.status_code == 200
    assert response["Pairwise-Skipped-Count"] == "2"
    assert response["Pairwise-Skipped"] == " | ".join(str(row) for row in damaged.skipped)
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert len(lines) == 3
    whole = api_client.get("/api/v1/export/", {"batch": damaged.second.pk})
    assert whole.status_code == 200 and not whole.has_header("Pairwise-Skipped-Count")
    assert len(b"".join(whole.streaming_content).decode().splitlines()) == 2


def test_the_skipped_header_is_bounded():
    rows = [SkippedRow(pk, 1, "no response in slot 2", 1) for pk in range(25)]
    headers = skipped_headers(rows)
    assert headers["Pairwise-Skipped-Count"] == "25"
    assert headers["Pairwise-Skipped"].count(" | ") == 20
    assert headers["Pairwise-Skipped"].endswith("and 5 more (see the server log)")


def test_the_export_command_warns_about_each_row_it_left_out(damaged, tmp_path):
    out, stderr = tmp_path / "export.jsonl", io.StringIO()
    call_command("export_preferences", "--out", str(out), stderr=stderr)
    assert len(out.read_text().splitlines()) == 3
    report = stderr.getvalue()
    for row in damaged.skipped:
        assert f"skipped {row}" in report
    assert "left out 2 damaged comparisons (2 records)" in report


def test_a_training_run_logs_what_its_frozen_export_left_out(
    damaged, ml_staff, monkeypatch, settings, tmp_path
):
    settings.PAIRWISE_TRAINING_DIR = tmp_path / "training"
    monkeypatch.setattr("rlhf.reward.training.train_reward_model", FakeTrainer())
    ModelVersion.objects.create(name="policy", role="policy", path="org/policy", is_current=True)
    run = start.start_reward_training(
        ml_staff, "helpfulness", [damaged.first, damaged.second], config={"eval_fraction": 0.25}
    )
    assert run_in_process(run.pk) == "succeeded"
    run.refresh_from_db()
    assert len(Path(run.export_path).read_text().splitlines()) == 3
    for row in damaged.skipped:
        assert f"left out of the export: {row}" in run.logs
    assert list(export_lines("trl", [damaged.second])) != []
