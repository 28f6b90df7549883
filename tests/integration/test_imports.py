"""Imports on PostgreSQL: rows created per format, the public files, all-or-nothing, and the
three ways in (management command, API, admin)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
from collections import Counter

import pytest
from django.core.management import CommandError, call_command

from annotation_app.errors import Conflict
from annotation_app.models import Batch, Comparison, Conversation, ImportedFile, Response, Turn
from annotation_app.roles import Role
from annotation_app.services.batches import activate_batch, close_batch
from annotation_app.services.imports import DuplicateImport, ImportFailed, import_comparisons
from tests.conftest import shared_path
from tests.messages import assistant, hh, user

pytestmark = pytest.mark.django_db

MODELS = (Conversation, Turn, Comparison, Response, ImportedFile)


def jsonl(*records) -> bytes:
    return "".join(json.dumps(record) + "\n" for record in records).encode()


def run_import(batch: Batch, data: bytes, filename: str = "data.jsonl", **kwargs):
    return import_comparisons(batch, io.BytesIO(data), filename, **kwargs)


def row_counts() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in MODELS}


def trl_pairs(count: int) -> bytes:
    return jsonl(
        *[
            {
                "prompt": f"Question {n}?",
                "chosen": f"Good answer {n}.",
                "rejected": f"Bad answer {n}.",
            }
            for n in range(count)
        ]
    )


def canonical(question: str, first: str, second: str, **extra) -> dict:
    return {
        "conversation": [user(question)],
        "responses": [
            {
                "text": first,
                "model_version": "secret-model-alpha",
                "sampling": {"temperature": 0.7},
            },
            {"text": second, "model_version": "secret-model-beta", "seed": 5},
        ],
        **extra,
    }


def context_of(comparison: Comparison) -> list[dict[str, str]]:
    return comparison.context_messages()


def slot_texts(comparison: Comparison) -> dict[int, str]:
    return {response.slot: response.text for response in comparison.responses.all()}


def assert_pairs_are_well_formed(batch: Batch, expected: int) -> None:
    """Every comparison of the batch is ready with exactly two responses in slots 1 and 2."""
    comparisons = Comparison.objects.filter(batch=batch)
    assert comparisons.count() == expected
    assert set(comparisons.values_list("status", flat=True)) == {Comparison.Status.READY}
    responses = Response.objects.filter(comparison__batch=batch)
    assert Counter(responses.values_list("slot", flat=True)) == {1: expected, 2: expected}
    assert set(responses.values_list("source", flat=True)) == {Response.Source.IMPORTED}
    per_comparison = Counter(responses.values_list("comparison_id", flat=True))
    assert set(per_comparison.values()) == {2}


@pytest.fixture
def empty_batch(make_batch):
    return make_batch(comparisons=0, active=False)


@pytest.fixture
def safety_batch(make_batch):
    return make_batch(Batch.Kind.SAFETY, comparisons=0, active=False)


# --- each format ----------------------------------------------------------------------------


def test_prompts_become_waiting_comparisons_with_their_turns(empty_batch):
    data = jsonl(
        "Can you tell me about GLaDOS?",
        {"turns": ["Write a poem.", "Now in French."], "category": "writing"},
        {"messages": [{"role": "system", "content": "Be terse."}, user("Explain DNS.")]},
    )
    report = run_import(empty_batch, data, "prompts.jsonl")
    assert (report.format, report.records, report.comparisons) == ("prompts", 3, 3)
    assert report.waiting_for_generation == 3
    comparisons = list(Comparison.objects.filter(batch=empty_batch).order_by("id"))
    assert [c.status for c in comparisons] == [Comparison.Status.WAITING] * 3
    assert [c.context_length for c in comparisons] == [1, 1, 2]
    assert [context_of(c) for c in comparisons] == [
        [user("Can you tell me about GLaDOS?")],
        [user("Write a poem.")],
        [{"role": "system", "content": "Be terse."}, user("Explain DNS.")],
    ]
    assert not Response.objects.filter(comparison__batch=empty_batch).exists()
    assert all(c.reference_preferred_slot is None for c in comparisons)
    assert [c.conversation.source for c in comparisons] == [
        "prompts.jsonl:1",
        "prompts.jsonl:2",
        "prompts.jsonl:3",
    ]
    assert comparisons[1].conversation.risk_category == "writing"


def test_canonical_pairs_keep_their_metadata_and_have_no_reference(empty_batch):
    data = jsonl(
        canonical("Q1?", "Answer one.", "Answer two.", risk_category="none"),
        canonical("Q2?", "Other one.", "Other two."),
    )
    report = run_import(empty_batch, data, "canonical.jsonl")
    assert (report.format, report.comparisons, report.waiting_for_generation) == ("canonical", 2, 0)
    assert_pairs_are_well_formed(empty_batch, 2)
    first = Comparison.objects.filter(batch=empty_batch).order_by("id").first()
    assert context_of(first) == [user("Q1?")]
    assert first.reference_preferred_slot is None
    assert first.conversation.risk_category == "none"
    by_text = {r.text: r for r in first.responses.all()}
    assert set(by_text) == {"Answer one.", "Answer two."}
    assert by_text["Answer one."].model_name == "secret-model-alpha"
    assert by_text["Answer one."].sampling_params == {"temperature": 0.7}
    assert by_text["Answer two."].model_name == "secret-model-beta"
    assert by_text["Answer two."].seed == 5


def test_canonical_export_lines_import_one_comparison_per_comparison_id(empty_batch):
    lines = [
        canonical("Q10?", "a", "b", comparison_id=10, annotation_id=1, preferred=1),
        canonical("Q10?", "a", "b", comparison_id=10, annotation_id=2, preferred=2),
        canonical("Q11?", "c", "d", comparison_id=11, annotation_id=3, preferred=1),
    ]
    report = run_import(empty_batch, jsonl(*lines), "export.jsonl")
    assert (report.records, report.comparisons) == (3, 2)
    assert_pairs_are_well_formed(empty_batch, 2)


@pytest.mark.parametrize(
    "record",
    [
        {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."},
        {
            "prompt": [user("Hi?")],
            "chosen": [assistant("Hello!")],
            "rejected": [assistant("Go away.")],
        },
        {
            "chosen": [user("Hi?"), assistant("Hello!")],
            "rejected": [user("Hi?"), assistant("Go away.")],
        },
        {"chosen": hh("Hi?", "Hello!"), "rejected": hh("Hi?", "Go away.")},
    ],
    ids=["trl-strings", "trl-messages", "trl-implicit", "hh-rlhf"],
)
def test_reference_preference_points_at_the_chosen_text(empty_batch, record):
    run_import(empty_batch, jsonl(record) * 8, "pairs.jsonl")
    assert_pairs_are_well_formed(empty_batch, 8)
    for comparison in Comparison.objects.filter(batch=empty_batch):
        texts = slot_texts(comparison)
        assert comparison.reference_preferred_slot in (1, 2)
        assert texts[comparison.reference_preferred_slot] == "Hello!"
        assert texts[3 - comparison.reference_preferred_slot] == "Go away."
        assert context_of(comparison) == [user("Hi?")]


def test_hh_multi_turn_context_becomes_turns(empty_batch):
    shared = ("How do I bake bread?", "Flour, water, yeast.", "How long do I knead?")
    record = {"chosen": hh(*shared, "Ten minutes."), "rejected": hh(*shared, "Forever.")}
    run_import(empty_batch, jsonl(record), "hh.jsonl")
    comparison = Comparison.objects.get(batch=empty_batch)
    assert comparison.context_length == 3
    assert list(comparison.conversation.turns.values_list("index", "role")) == [
        (0, "user"),
        (1, "assistant"),
        (2, "user"),
    ]
    assert slot_texts(comparison)[comparison.reference_preferred_slot] == "Ten minutes."


# --- the public files -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subset", "expected"),
    [("harmless-base", 2312), ("helpful-online", 1137), ("helpful-rejection-sampled", 2749)],
)
def test_hh_rlhf_test_files_import_as_is(empty_batch, subset, expected):
    path = shared_path(f"data/hh-rlhf/{subset}/test.jsonl.gz")
    with path.open("rb") as stream:
        report = import_comparisons(empty_batch, stream, path.name, rng=random.Random(0))
    assert (report.format, report.records, report.comparisons) == ("hh-rlhf", expected, expected)
    assert_pairs_are_well_formed(empty_batch, expected)
    comparisons = Comparison.objects.filter(batch=empty_batch)
    assert comparisons.filter(reference_preferred_slot__isnull=True).count() == 0
    # The first record: its chosen reply is the reference response.
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        chosen = json.loads(next(lines))["chosen"]
    first = comparisons.order_by("id").first()
    reply = chosen[chosen.rfind("\n\nAssistant:") + len("\n\nAssistant:") :].strip()
    assert slot_texts(first)[first.reference_preferred_slot] == reply
    assert context_of(first)[0]["role"] == "user"
    assert context_of(first)[-1]["role"] == "user"


@pytest.mark.parametrize(
    ("relative", "kind", "expected"),
    [
        ("data/oasst/prompt_lottery_en_250_text.jsonl", Batch.Kind.HELPFULNESS, 250),
        ("data/mt-bench/question.jsonl", Batch.Kind.HELPFULNESS, 80),
        ("data/safety-prompts/harmbench_behaviors_text_all.csv", Batch.Kind.SAFETY, 400),
        ("data/safety-prompts/simple_safety_tests.csv", Batch.Kind.SAFETY, 100),
        ("data/safety-prompts/strongreject_dataset.csv", Batch.Kind.SAFETY, 313),
    ],
)
def test_public_prompt_files_import(make_batch, relative, kind, expected):
    path = shared_path(relative)
    batch = make_batch(kind, comparisons=0, active=False)
    with path.open("rb") as stream:
        report = import_comparisons(batch, stream, path.name)
    assert (report.format, report.records, report.comparisons) == ("prompts", expected, expected)
    assert report.waiting_for_generation == expected
    comparisons = Comparison.objects.filter(batch=batch)
    assert comparisons.filter(status=Comparison.Status.WAITING).count() == expected
    assert Turn.objects.filter(conversation__batch=batch, role="user").count() == expected
    assert not Response.objects.filter(comparison__batch=batch).exists()
    assert not Turn.objects.filter(conversation__batch=batch, content="").exists()
    if kind == Batch.Kind.SAFETY:
        assert not Conversation.objects.filter(batch=batch, risk_category="").exists()


def risk_categories(batch: Batch) -> set[str]:
    return set(Conversation.objects.filter(batch=batch).values_list("risk_category", flat=True))


def test_harmbench_keeps_its_semantic_categories_and_contexts(safety_batch):
    path = shared_path("data/safety-prompts/harmbench_behaviors_text_all.csv")
    with path.open("rb") as stream:
        import_comparisons(safety_batch, stream, path.name)
    assert {"chemical_biological", "cybercrime_intrusion", "copyright"} <= risk_categories(
        safety_batch
    )
    # The 100 contextual behaviors ("... this text ...") carry the text they refer to.
    with_context = Turn.objects.filter(
        conversation__batch=safety_batch, content__contains="\n---\n"
    )
    assert with_context.count() == 100


def test_simple_safety_tests_are_categorised_by_harm_area(safety_batch):
    path = shared_path("data/safety-prompts/simple_safety_tests.csv")
    with path.open("rb") as stream:
        import_comparisons(safety_batch, stream, path.name)
    categories = risk_categories(safety_batch)
    assert "Suicide, Self-Harm, and Eating Disorders" in categories
    assert "Information and advice seeking" not in categories
    assert len(categories) == 5


def test_strongreject_categories(safety_batch):
    path = shared_path("data/safety-prompts/strongreject_dataset.csv")
    with path.open("rb") as stream:
        import_comparisons(safety_batch, stream, path.name)
    assert "Disinformation and deception" in risk_categories(safety_batch)


# --- sides ----------------------------------------------------------------------------------


def test_sides_are_randomised_and_follow_the_given_rng(make_batch):
    first = make_batch(comparisons=0, active=False)
    second = make_batch(comparisons=0, active=False)
    run_import(first, trl_pairs(200), "pairs.jsonl", rng=random.Random(1234))
    run_import(second, trl_pairs(200), "pairs.jsonl", rng=random.Random(1234))
    slots = list(
        Comparison.objects.filter(batch=first)
        .order_by("id")
        .values_list("reference_preferred_slot", flat=True)
    )
    counts = Counter(slots)
    assert set(counts) == {1, 2}
    assert 60 <= counts[1] <= 140  # neither always nor never; roughly half
    again = Comparison.objects.filter(batch=second).order_by("id")
    assert list(again.values_list("reference_preferred_slot", flat=True)) == slots


# --- all or nothing -------------------------------------------------------------------------


def test_one_bad_line_rejects_the_whole_file(make_batch):
    batch = make_batch(comparisons=2, active=False)
    records = [{"prompt": f"Q{n}", "chosen": "good", "rejected": "bad"} for n in range(10)]
    records[4] = {"prompt": "Q4", "chosen": "good"}
    before = row_counts()
    with pytest.raises(ImportFailed) as caught:
        run_import(batch, jsonl(*records), "ten.jsonl")
    errors = caught.value.errors
    assert [(e.filename, e.line, e.field) for e in errors] == [("ten.jsonl", 5, "rejected")]
    assert "ten.jsonl, line 5, field 'rejected'" in str(caught.value)
    assert row_counts() == before
    assert Comparison.objects.filter(batch=batch).count() == 2


def test_several_bad_lines_are_all_reported(empty_batch):
    records = [canonical(f"Q{n}?", "a", "b") for n in range(9)]
    records[1] = {**records[1], "responses": []}
    records[5] = {**records[5], "conversation": [assistant("hello")]}
    records[8] = {**records[8], "responses": [{"text": "a"}, {"text": "b", "seed": "x"}]}
    before = row_counts()
    with pytest.raises(ImportFailed) as caught:
        run_import(empty_batch, jsonl(*records), "bad.jsonl")
    assert [(e.line, e.field) for e in caught.value.errors] == [
        (2, "responses"),
        (6, "conversation"),
        (9, "responses[1].seed"),
    ]
    assert row_counts() == before


def test_a_failure_while_writing_leaves_nothing_behind(empty_batch, monkeypatch):
    """A database error after the first writes rolls them all back."""

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Response.objects, "bulk_create", fail)
    before = row_counts()
    with pytest.raises(RuntimeError, match="disk full"):
        run_import(empty_batch, trl_pairs(5), "pairs.jsonl")
    assert row_counts() == before


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (canonical("Q?", "a", "b\u0000"), None),
        ({**canonical("Q?", "a", "b"), "conversation": [user("nul \u0000")]}, None),
        (
            {
                **canonical("Q?", "a", "b"),
                "responses": [{"text": "a", "prompt_tokens": -3}, {"text": "b"}],
            },
            "responses[0].prompt_tokens",
        ),
        (
            {
                **canonical("Q?", "a", "b"),
                "responses": [{"text": "a"}, {"text": "b", "latency_ms": 2**40}],
            },
            "responses[1].latency_ms",
        ),
    ],
)
def test_values_postgresql_cannot_store_are_import_errors(empty_batch, record, field):
    before = row_counts()
    with pytest.raises(ImportFailed) as caught:
        run_import(empty_batch, jsonl(canonical("Q0?", "a", "b"), record), "odd.jsonl")
    assert [(e.line, e.field) for e in caught.value.errors] == [(2, field)]
    assert row_counts() == before


def test_a_closed_batch_takes_no_imports(make_batch):
    batch = make_batch(comparisons=2)
    close_batch(batch)
    batch.refresh_from_db()
    before = row_counts()
    with pytest.raises(Conflict, match="closed"):
        run_import(batch, trl_pairs(3))
    assert row_counts() == before


def test_a_batch_closed_after_it_was_loaded_takes_no_imports(make_batch):
    batch = make_batch(comparisons=2)
    stale = Batch.objects.get(pk=batch.pk)
    close_batch(batch)
    assert stale.status == Batch.Status.ACTIVE
    before = row_counts()
    with pytest.raises(Conflict, match="closed"):
        run_import(stale, trl_pairs(3))
    assert row_counts() == before


def test_an_active_batch_takes_more_comparisons(make_batch):
    batch = make_batch(comparisons=2)
    run_import(batch, trl_pairs(3))
    assert Comparison.objects.filter(batch=batch, status=Comparison.Status.READY).count() == 5


# --- management command ---------------------------------------------------------------------


def test_the_management_command_imports_a_file(empty_batch, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(trl_pairs(4))
    out = io.StringIO()
    call_command("import_comparisons", str(path), "--batch", empty_batch.name, stdout=out)
    assert "Imported 4 comparisons from 4 records (trl)" in out.getvalue()
    assert_pairs_are_well_formed(empty_batch, 4)


def test_the_management_command_can_create_a_safety_batch(tmp_path):
    path = tmp_path / "prompts.csv.gz"
    path.write_bytes(gzip.compress(b"prompt,category\nHow do I pick a lock?,crime\n"))
    call_command(
        "import_comparisons",
        str(path),
        "--batch",
        "red team 1",
        "--create",
        "safety",
        stdout=io.StringIO(),
    )
    batch = Batch.objects.get(name="red team 1")
    assert batch.kind == Batch.Kind.SAFETY
    conversation = Conversation.objects.get(batch=batch)
    assert conversation.risk_category == "crime"
    assert conversation.source.endswith("prompts.csv.gz:2")


def test_the_management_command_reports_the_bad_line(empty_batch, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(jsonl(canonical("Q?", "a", "b"), canonical("Q?", "a", "b"), {"responses": 1}))
    before = row_counts()
    with pytest.raises(CommandError, match=r"bad\.jsonl, line 3, field 'responses'"):
        call_command("import_comparisons", str(path), "--batch", empty_batch.name)
    assert row_counts() == before


def test_the_management_command_needs_an_existing_batch_or_create(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(jsonl("A prompt"))
    with pytest.raises(CommandError, match="no batch named"):
        call_command("import_comparisons", str(path), "--batch", "nope")
    assert not Batch.objects.filter(name="nope").exists()


# --- API ------------------------------------------------------------------------------------


def import_url(batch: Batch) -> str:
    return f"/api/v1/batches/{batch.pk}/import/"


def upload(data: bytes, name: str):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="application/octet-stream")


def test_api_import_returns_the_counts(api_client, batch_admin, empty_batch):
    api_client.force_authenticate(batch_admin)
    response = api_client.post(
        import_url(empty_batch), {"file": upload(trl_pairs(3), "pairs.jsonl")}, format="multipart"
    )
    assert response.status_code == 201, response.content
    assert response.json() == {
        "format": "trl",
        "records": 3,
        "comparisons": 3,
        "waiting_for_generation": 0,
    }
    assert_pairs_are_well_formed(empty_batch, 3)


def test_api_import_of_a_bad_file_lists_the_errors_and_creates_nothing(
    api_client, batch_admin, empty_batch
):
    api_client.force_authenticate(batch_admin)
    data = jsonl(canonical("Q?", "a", "b"), {"conversation": [user("Q")], "responses": []}) + b"{\n"
    before = row_counts()
    response = api_client.post(
        import_url(empty_batch), {"file": upload(data, "bad.jsonl")}, format="multipart"
    )
    assert response.status_code == 400
    body = response.json()
    assert body["detail"] == "nothing was imported: 2 problems"
    assert body["errors"] == [
        {
            "file": "bad.jsonl",
            "line": 2,
            "field": "responses",
            "message": "must be a list of exactly two responses",
        },
        {"file": "bad.jsonl", "line": 3, "field": None, "message": body["errors"][1]["message"]},
    ]
    assert body["errors"][1]["message"].startswith("invalid JSON")
    assert row_counts() == before


def test_api_import_of_a_large_upload_spooled_to_disk(
    api_client, batch_admin, empty_batch, settings
):
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0  # every upload becomes a temporary file
    api_client.force_authenticate(batch_admin)
    data = gzip.compress(trl_pairs(50))
    response = api_client.post(
        import_url(empty_batch), {"file": upload(data, "pairs.jsonl.gz")}, format="multipart"
    )
    assert response.status_code == 201, response.content
    assert response.json()["comparisons"] == 50


def test_api_import_into_a_closed_batch_is_a_conflict(api_client, batch_admin, make_batch):
    batch = make_batch(comparisons=1)
    close_batch(batch)
    api_client.force_authenticate(batch_admin)
    response = api_client.post(
        import_url(batch), {"file": upload(trl_pairs(1), "p.jsonl")}, format="multipart"
    )
    assert response.status_code == 409
    assert Comparison.objects.filter(batch=batch).count() == 1


def test_api_import_needs_the_manage_permission(api_client, annotator, empty_batch):
    api_client.force_authenticate(annotator)
    response = api_client.post(
        import_url(empty_batch), {"file": upload(trl_pairs(1), "p.jsonl")}, format="multipart"
    )
    assert response.status_code == 403
    assert not Comparison.objects.filter(batch=empty_batch).exists()


# --- admin ----------------------------------------------------------------------------------


def admin_import_url(batch: Batch) -> str:
    return f"/admin/annotation_app/batch/{batch.pk}/import/"


def test_admin_import_page_imports_a_file(client, batch_admin, empty_batch):
    client.force_login(batch_admin)
    page = client.get(admin_import_url(empty_batch))
    assert page.status_code == 200
    assert f"Import into {empty_batch.name}" in page.content.decode()
    response = client.post(
        admin_import_url(empty_batch), {"file": upload(trl_pairs(2), "pairs.jsonl"), "format": ""}
    )
    assert response.status_code == 302
    assert response["Location"].endswith(f"/admin/annotation_app/batch/{empty_batch.pk}/change/")
    assert_pairs_are_well_formed(empty_batch, 2)


def test_admin_import_page_shows_the_errors_of_a_bad_file(client, batch_admin, empty_batch):
    client.force_login(batch_admin)
    before = row_counts()
    data = jsonl({"prompt": "Q", "chosen": "a", "rejected": "b"}, {"prompt": "Q", "chosen": "a"})
    response = client.post(admin_import_url(empty_batch), {"file": upload(data, "bad.jsonl")})
    assert response.status_code == 200
    content = response.content.decode()
    assert "bad.jsonl, line 2, field &#x27;rejected&#x27;: is missing" in content
    assert row_counts() == before


def test_admin_import_page_needs_the_manage_permission(client, ml_staff, empty_batch):
    client.force_login(ml_staff)
    response = client.post(
        admin_import_url(empty_batch), {"file": upload(trl_pairs(1), "pairs.jsonl")}
    )
    assert response.status_code == 403
    assert not Comparison.objects.filter(batch=empty_batch).exists()


# --- what annotators see --------------------------------------------------------------------


def test_imported_order_and_metadata_do_not_leak_to_annotators(api_client, make_user, empty_batch):
    run_import(
        empty_batch,
        jsonl(canonical("Which is right?", "Chosen text.", "Rejected text.")),
        "canonical.jsonl",
    )
    run_import(
        empty_batch,
        jsonl(
            {"prompt": "Pick one.", "chosen": "The chosen one.", "rejected": "The rejected one."}
        ),
        "trl.jsonl",
        rng=random.Random(3),
    )
    activate_batch(empty_batch)
    seen = []
    for _ in range(2):
        api_client.force_authenticate(make_user(Role.ANNOTATOR))
        for _ in range(2):  # every annotator may get either comparison; take both
            response = api_client.post("/api/v1/tasks/next/", {}, format="json")
            assert response.status_code == 200, response.content
            payload = response.json()
            seen.append(payload)
            assignment = payload["assignment"]
            api_client.post(f"/api/v1/assignments/{assignment}/skip/")
    assert {tuple(sorted(p["responses"].values())) for p in seen} == {
        ("Chosen text.", "Rejected text."),
        ("The chosen one.", "The rejected one."),
    }
    for payload in seen:
        assert set(payload) == {
            "assignment",
            "batch",
            "comparison_status",
            "generation_error",
            "context",
            "responses",
            "safety_labels_required",
            "status",
            "expires_at",
        }
        assert set(payload["responses"]) == {"A", "B"}
        assert set(payload["batch"]) == {"id", "name", "kind", "guidelines"}
        assert all(set(message) == {"role", "content"} for message in payload["context"])
        text = json.dumps(payload)
        for secret in ("secret-model", "slot", "reference", "preferred", "model", "temperature"):
            assert secret not in text


# --- the same file twice ------------------------------------------------------------------


def test_importing_the_same_content_again_is_refused_naming_the_first_import(
    empty_batch, batch_admin
):
    data = trl_pairs(3)
    run_import(empty_batch, data, "pairs.jsonl", imported_by=batch_admin)
    (first,) = ImportedFile.objects.filter(batch=empty_batch)
    assert (first.filename, first.records, first.comparisons) == ("pairs.jsonl", 3, 3)
    assert first.imported_by == batch_admin
    assert first.sha256 == hashlib.sha256(data).hexdigest()
    before = row_counts()
    # Compressed, renamed, by someone else: the same content all the same.
    with pytest.raises(DuplicateImport) as caught:
        run_import(empty_batch, gzip.compress(data), "copy.jsonl.gz")
    message = str(caught.value)
    assert "already imported into batch" in message
    assert f"by {batch_admin.username}" in message
    assert "as pairs.jsonl, 3 comparisons" in message
    assert first.created_at.strftime("%Y-%m-%d %H:%M") in message
    assert "allow_duplicate" in message
    assert row_counts() == before


def test_a_duplicate_is_imported_when_asked_for_and_recorded_again(empty_batch):
    run_import(empty_batch, trl_pairs(2), "pairs.jsonl")
    report = run_import(empty_batch, trl_pairs(2), "pairs.jsonl", allow_duplicate=True)
    assert report.comparisons == 2
    assert Comparison.objects.filter(batch=empty_batch).count() == 4
    assert ImportedFile.objects.filter(batch=empty_batch).count() == 2


def test_the_same_file_may_go_into_another_batch(make_batch):
    first, second = (make_batch(comparisons=0, active=False) for _ in range(2))
    run_import(first, trl_pairs(2))
    run_import(second, trl_pairs(2))
    assert Comparison.objects.filter(batch=second).count() == 2


def test_a_rejected_file_is_not_recorded_and_may_be_fixed_and_sent_again(empty_batch):
    with pytest.raises(ImportFailed):
        run_import(empty_batch, jsonl({"prompt": "Q"}, {"prompt": ""}))
    assert not ImportedFile.objects.exists()
    run_import(empty_batch, jsonl({"prompt": "Q"}, {"prompt": "R"}))
    assert ImportedFile.objects.filter(batch=empty_batch).count() == 1


def test_api_refuses_a_duplicate_with_409_unless_asked(api_client, batch_admin, empty_batch):
    api_client.force_authenticate(batch_admin)
    url = import_url(empty_batch)
    assert api_client.post(url, {"file": upload(trl_pairs(2), "p.jsonl")}).status_code == 201
    before = row_counts()
    again = api_client.post(url, {"file": upload(trl_pairs(2), "p.jsonl")})
    assert again.status_code == 409
    body = again.json()
    assert body["errors"] == []
    assert f"already imported into batch {empty_batch.name!r}" in body["detail"]
    assert f"by {batch_admin.username} (as p.jsonl, 2 comparisons" in body["detail"]
    assert row_counts() == before
    forced = api_client.post(
        url, {"file": upload(trl_pairs(2), "p.jsonl"), "allow_duplicate": "true"}
    )
    assert forced.status_code == 201, forced.content
    assert Comparison.objects.filter(batch=empty_batch).count() == 4


def test_admin_refuses_a_duplicate_unless_import_again_is_ticked(client, batch_admin, empty_batch):
    client.force_login(batch_admin)
    url = admin_import_url(empty_batch)
    assert client.post(url, {"file": upload(trl_pairs(2), "p.jsonl")}).status_code == 302
    before = row_counts()
    refused = client.post(url, {"file": upload(trl_pairs(2), "p.jsonl")})
    assert refused.status_code == 200
    assert "already imported into batch" in refused.content.decode()
    assert row_counts() == before
    forced = client.post(url, {"file": upload(trl_pairs(2), "p.jsonl"), "allow_duplicate": "on"})
    assert forced.status_code == 302
    assert Comparison.objects.filter(batch=empty_batch).count() == 4


# --- bad files: a 400 naming the problem, nothing written (issue 9) ----------------------


def bomb(megabytes: int = 20) -> bytes:
    """A gzip file of a few dozen kilobytes that unpacks to ``megabytes`` of prompts."""
    line = jsonl("The same prompt, over and over again.")
    return gzip.compress(line * (megabytes * 2**20 // len(line)), compresslevel=9)


@pytest.mark.parametrize(
    ("name", "data", "line", "message"),
    [
        ("surrogate.jsonl", jsonl("fine") + b'"lone \\ud800"\n', 2, "lone surrogate (\\ud800)"),
        ("deep.jsonl", jsonl("fine") + b"[" * 100_000 + b"]" * 100_000 + b"\n", 2, "nested"),
        ("quote.csv", b'prompt\nfine\n"never closed\nmore\n', 3, "never closed"),
        (
            "long.jsonl",
            jsonl({"prompt": "Q", "risk_category": "x" * 101}),
            1,
            "101 characters long; at most 100 fit",
        ),
        ("latin1.jsonl", jsonl("fine") * 3 + b'"caf\xe9"\n', 4, "not valid UTF-8"),
    ],
    ids=["lone-surrogate", "deep-json", "unclosed-csv-quote", "long-category", "bad-utf8"],
)
def test_api_import_of_bad_input_is_a_400_naming_the_line(
    api_client, batch_admin, make_batch, name, data, line, message
):
    batch = make_batch(Batch.Kind.HELPFULNESS, comparisons=1, active=False)
    api_client.force_authenticate(batch_admin)
    before = row_counts()
    response = api_client.post(import_url(batch), {"file": upload(data, name)})
    assert response.status_code == 400, response.content
    (error,) = response.json()["errors"]
    assert (error["file"], error["line"]) == (name, line)
    assert message in error["message"]
    assert response.json()["detail"].startswith(f"nothing was imported: {name}, line {line}")
    assert row_counts() == before


def test_api_import_stops_a_compression_bomb_at_the_limit(
    api_client, batch_admin, empty_batch, settings
):
    settings.PAIRWISE_IMPORT_MAX_BYTES = 2**20
    api_client.force_authenticate(batch_admin)
    before = row_counts()
    response = api_client.post(import_url(empty_batch), {"file": upload(bomb(), "bomb.jsonl.gz")})
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert "larger than 1,048,576 bytes uncompressed" in error["message"]
    assert "PAIRWISE_IMPORT_MAX_BYTES" in error["message"]
    assert row_counts() == before


def test_api_import_refuses_more_records_than_the_limit(
    api_client, batch_admin, empty_batch, settings
):
    settings.PAIRWISE_IMPORT_MAX_RECORDS = 10
    api_client.force_authenticate(batch_admin)
    before = row_counts()
    response = api_client.post(import_url(empty_batch), {"file": upload(trl_pairs(11), "p.jsonl")})
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert error["line"] == 11
    assert "more than 10 records" in error["message"]
    assert "PAIRWISE_IMPORT_MAX_RECORDS" in error["message"]
    assert row_counts() == before


def test_the_management_command_stops_a_compression_bomb(empty_batch, tmp_path, settings):
    settings.PAIRWISE_IMPORT_MAX_BYTES = 2**20
    path = tmp_path / "bomb.jsonl.gz"
    path.write_bytes(bomb())
    before = row_counts()
    with pytest.raises(CommandError, match=r"bomb\.jsonl\.gz, line \d+: the file is larger than"):
        call_command("import_comparisons", str(path), "--batch", empty_batch.name)
    assert row_counts() == before


def test_admin_import_of_a_bad_file_names_the_line(client, batch_admin, empty_batch):
    client.force_login(batch_admin)
    before = row_counts()
    data = b'prompt\nfine\n"never closed\nmore\n'
    response = client.post(admin_import_url(empty_batch), {"file": upload(data, "quote.csv")})
    assert response.status_code == 200
    assert "quote.csv, line 3: a quoted field that starts on this line is never closed" in (
        response.content.decode()
    )
    assert row_counts() == before
