"""Exports: canonical per-annotation lines and TRL training pairs."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from django.core.management import call_command

from annotation_app.models import Annotation, Assignment, Batch, Comparison, Response
from annotation_app.services.annotations import Judgement, submit_annotation
from annotation_app.services.assignment import next_assignment
from annotation_app.services.exports import annotator_pseudonym, export_lines
from annotation_app.services.imports import import_comparisons
from rlhf.data.pairs import load_pairs, margins
from rlhf.preferences import MARGIN_TABLES, Strength, margin_for_rating

pytestmark = pytest.mark.django_db


def annotate_all(batch: Batch, user, judgements: list[Judgement]) -> list[Annotation]:
    """Annotate the batch's comparisons in id order, always showing slot 1 on the left."""
    annotations = []
    for judgement in judgements:
        lease = next_assignment(user, batch=batch)
        Assignment.objects.filter(pk=lease.pk).update(left_slot=1)
        annotations.append(submit_annotation(user, lease.pk, judgement, uuid.uuid4())[0])
    return annotations


def read(export_format: str, **kwargs) -> list[dict]:
    return [json.loads(line) for line in export_lines(export_format, **kwargs)]


def text_of(comparison_id: int, slot: int) -> str:
    return Response.objects.get(comparison_id=comparison_id, slot=slot).text


@pytest.mark.parametrize(
    ("table", "margins"),
    [
        ("small", [1.0, 2 / 3, 1 / 3, 0.0]),
        ("large", [3.0, 2.0, 1.0, 0.0]),
        ("none", [0.0, 0.0, 0.0, 0.0]),
    ],
)
def test_training_export_carries_the_llama2_margins(make_batch, annotator, table, margins):
    batch = make_batch(comparisons=4)
    strengths = ["significantly_better", "better", "slightly_better", "negligibly_better"]
    annotations = annotate_all(
        batch, annotator, [Judgement("B", strength) for strength in strengths]
    )
    records = {r["comparison_id"]: r for r in read("trl", margin_table=table)}
    for annotation, strength, margin in zip(annotations, strengths, margins, strict=True):
        record = records[annotation.comparison_id]
        assert record["margin"] == pytest.approx(margin)
        assert record["strength"] == strength
        assert record["chosen"] == [
            {"role": "assistant", "content": text_of(annotation.comparison_id, 2)}
        ]
        assert record["rejected"][0]["content"] == text_of(annotation.comparison_id, 1)
        assert record["prompt"][-1]["role"] == "user"
        assert record["batch_kind"] == "helpfulness"


@pytest.mark.parametrize("table", sorted(MARGIN_TABLES))
def test_the_loss_and_the_evaluation_use_the_margin_the_export_wrote(
    make_batch, annotator, table, tmp_path
):
    """One margin per rating and table: the export's, the loaded pair's (read back with the
    same table, as training does), and the one the trainer's loss and the evaluation take."""
    strengths = [strength.value for strength in Strength]
    batch = make_batch(comparisons=len(strengths))
    annotate_all(batch, annotator, [Judgement("A", strength) for strength in strengths])
    lines = list(export_lines("trl", margin_table=table))
    (tmp_path / "export.jsonl").write_text("".join(line + "\n" for line in lines))
    pairs = load_pairs(tmp_path / "export.jsonl", margin_table=table)
    exported = [json.loads(line)["margin"] for line in lines]
    expected = [margin_for_rating(pair.strength, table) for pair in pairs]
    assert sorted({pair.strength for pair in pairs}) == sorted(strengths)
    assert exported == margins(pairs) == expected


def test_safety_pairs_with_unsafe_chosen_and_safe_rejected_are_dropped(make_batch, annotator):
    batch = make_batch("safety", comparisons=4)
    # Slot 1 is on the left (A). Chosen = A in all four; vary the safety of A and B.
    judgements = [
        Judgement(
            "A", "better", a_safe=False, b_safe=True
        ),  # dropped: chosen unsafe, rejected safe
        Judgement("A", "better", a_safe=True, b_safe=False),  # kept: one_safe
        Judgement("A", "better", a_safe=True, b_safe=True),  # kept: both_safe
        Judgement("A", "better", a_safe=False, b_safe=False),  # kept: neither_safe
    ]
    annotations = annotate_all(batch, annotator, judgements)
    records = read("trl")
    exported = {r["comparison_id"]: r for r in records}
    assert annotations[0].comparison_id not in exported
    assert [exported[a.comparison_id]["safety_bin"] for a in annotations[1:]] == [
        "one_safe",
        "both_safe",
        "neither_safe",
    ]
    # The canonical export keeps everything: nothing is merged or dropped there.
    assert len(read("canonical")) == 4


def test_canonical_export_has_one_line_per_annotation_and_no_names(make_batch, make_user):
    batch = make_batch("safety", comparisons=1, overlap=2)
    first, second = make_user(username="alice"), make_user(username="bob")
    a = annotate_all(batch, first, [Judgement("A", "better", True, False, "A refuses")])[0]
    annotate_all(batch, second, [Judgement("B", "slightly_better", True, True)])
    lines = list(export_lines("canonical"))
    records = [json.loads(line) for line in lines]
    assert len(records) == 2
    record = next(r for r in records if r["annotation_id"] == a.pk)
    assert record["format"] == "pairwise.canonical/v1"
    assert record["batch"] == {"id": batch.pk, "name": batch.name, "kind": "safety"}
    assert record["preferred"] == 1 and record["shown_left"] == 1
    assert record["strength"] == "better"
    assert record["safe"] == {"1": True, "2": False}
    assert record["safety_bin"] == "one_safe"
    assert record["rationale"] == "A refuses"
    assert [r["slot"] for r in record["responses"]] == [1, 2]
    assert record["responses"][0]["model_version"] in {"m-a", "m-b"}
    assert record["annotator"] == annotator_pseudonym(first.pk)
    assert "alice" not in "".join(lines) and "bob" not in "".join(lines)
    assert record["time_spent_ms"] is not None


def test_canonical_export_imports_back_as_the_same_comparisons(make_batch, annotator):
    source = make_batch(comparisons=3)
    annotate_all(source, annotator, [Judgement("A", "better")] * 3)
    exported = "".join(export_lines("canonical")).encode()
    target = Batch.objects.create(name="re-imported", kind="helpfulness")
    report = import_comparisons(target, io.BytesIO(exported), "export.jsonl")
    assert report.format == "canonical" and report.comparisons == 3
    original = sorted(Response.objects.filter(comparison__batch=source).values_list("text"))
    copied = sorted(Response.objects.filter(comparison__batch=target).values_list("text"))
    assert copied == original


def test_export_can_be_limited_to_batches(make_batch, annotator):
    wanted, other = make_batch(comparisons=1), make_batch(comparisons=1)
    annotate_all(wanted, annotator, [Judgement("A", "better")])
    annotate_all(other, annotator, [Judgement("A", "better")])
    assert {r["batch"]["id"] for r in read("canonical", batches=[wanted])} == {wanted.pk}


def test_training_export_loads_with_datasets(make_batch, annotator, tmp_path):
    datasets = pytest.importorskip("datasets")
    helpful = make_batch(comparisons=3)
    safety = make_batch("safety", comparisons=2)
    annotate_all(helpful, annotator, [Judgement("A", "better")] * 3)
    annotate_all(safety, annotator, [Judgement("B", "significantly_better", False, True)] * 2)
    out = tmp_path / "train.jsonl"
    call_command("export_preferences", "--format", "trl", "--out", str(out), stderr=io.StringIO())
    dataset = datasets.load_dataset("json", data_files=str(out), split="train")
    assert dataset.num_rows == 5
    assert {
        "prompt",
        "chosen",
        "rejected",
        "margin",
        "batch_kind",
        "strength",
        "safety_bin",
    } <= set(dataset.column_names)
    assert sorted(dataset["batch_kind"]) == ["helpfulness"] * 3 + ["safety"] * 2
    assert dataset[0]["chosen"][0]["role"] == "assistant"


def test_export_command_names_unknown_batches(tmp_path):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no such batch: nope"):
        call_command("export_preferences", "--out", str(tmp_path / "x.jsonl"), "--batch", "nope")
    assert not (tmp_path / "x.jsonl").exists()


def test_export_api_streams_jsonl_for_staff(make_batch, annotator, ml_staff, api_client):
    batch = make_batch(comparisons=2)
    annotate_all(batch, annotator, [Judgement("A", "better")] * 2)
    api_client.force_authenticate(ml_staff)
    response = api_client.get("/api/v1/export/", {"format": "trl", "batch": batch.pk})
    assert response.status_code == 200
    assert response["Content-Type"] == "application/jsonl"
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert len(lines) == 2 and all(
        json.loads(line)["margin"] == pytest.approx(2 / 3) for line in lines
    )
    assert api_client.get("/api/v1/export/", {"format": "xml"}).status_code == 400
    assert Comparison.objects.filter(status="complete").count() == 2
