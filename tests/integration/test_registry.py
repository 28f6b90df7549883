"""The model registry: register, inspect, promote; from the API, the admin and the CLI."""

from __future__ import annotations

import io
import shutil
import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, transaction

from annotation_app.errors import Conflict, InvalidInput
from annotation_app.models import ModelVersion
from annotation_app.services.registry import (
    inspect_model,
    promote,
    register_model,
    registered_version,
    stored_path,
)
from tests.api_errors import error_fields, error_messages

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("registry-model")
    model.save_pretrained(out)
    unique = {id(p): p.numel() for p in model.parameters()}
    return out, sum(unique.values())


def test_inspect_reads_config_and_counts_parameters_without_loading(model_dir):
    path, parameters = model_dir
    version = register_model(str(path), "policy", name="tiny-v1")
    summary = inspect_model(version)
    assert summary["parameter_count"] == parameters
    assert summary["config"]["num_key_value_heads"] == 2
    assert summary["location"] == "directory"


def test_one_current_version_per_role(model_dir, tmp_path):
    path, _ = model_dir
    first = register_model(str(path), "policy", name="p1", make_current=True)
    # Another directory: a path is registered once per role.
    second_path = shutil.copytree(path, tmp_path / "p2")
    second = register_model(str(second_path), "policy", name="p2", parent=first)
    reward = register_model(str(path), "reward_safety", name="r1", make_current=True)
    promote(second)
    current = set(ModelVersion.objects.filter(is_current=True).values_list("name", flat=True))
    assert current == {"p2", "r1"}
    assert [step["name"] for step in inspect_model(second)["lineage"]] == ["p2", "p1"]
    # The database itself refuses a second current version of a role.
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.filter(pk=first.pk).update(is_current=True)
    assert reward.is_current


def test_bad_registrations_name_the_problem(tmp_path, model_dir, fake_hub):
    fake_hub.models.add("meta-llama/Llama-2-7b-hf")  # the hub is asked: a local stand-in
    with pytest.raises(InvalidInput, match="no config.json"):
        register_model(str(tmp_path), "policy")
    with pytest.raises(InvalidInput, match="neither a model directory nor a hub id"):
        register_model("/no/such/dir", "policy")
    with pytest.raises(InvalidInput, match="unknown role"):
        register_model(str(model_dir[0]), "critic")
    register_model("meta-llama/Llama-2-7b-hf", "policy", name="hub")
    with pytest.raises(Conflict, match="already exists"):  # the name, for another role
        register_model("meta-llama/Llama-2-7b-hf", "reward_safety", name="hub")
    with pytest.raises(Conflict, match="already registered as 'hub'"):  # the path, same role
        register_model("meta-llama/Llama-2-7b-hf", "policy", name="hub-again")
    assert inspect_model(ModelVersion.objects.get(name="hub"))["location"] == "hub"


def test_a_path_the_file_system_cannot_look_at_is_invalid_input_wherever_it_is_given():
    unusable = "/tmp/" + "x" * 5000  # longer than any file name can be
    for lookup in (stored_path, lambda p: registered_version(p, "policy")):
        with pytest.raises(InvalidInput, match="is not a usable path: File name too long"):
            lookup(unusable)
    with pytest.raises(InvalidInput, match="is not a usable path") as caught:
        register_model(unusable, "policy")
    assert caught.value.field == "path"
    assert not ModelVersion.objects.exists()


def test_of_duplicates_registered_before_the_check_the_current_one_is_the_version(model_dir):
    path = stored_path(str(model_dir[0]))
    older = ModelVersion.objects.create(name="older", role="policy", path=path)
    newer = ModelVersion.objects.create(name="newer", role="policy", path=path, is_current=True)
    assert registered_version(path, "policy") == newer
    ModelVersion.objects.filter(pk=newer.pk).update(is_current=False)
    assert registered_version(path, "policy") == older  # none current: the first registered
    with pytest.raises(Conflict, match="already registered as 'older'"):
        register_model(str(model_dir[0]), "policy", name="third")


def test_register_model_command(model_dir):
    out = io.StringIO()
    call_command(
        "register_model",
        str(model_dir[0]),
        "--role",
        "policy",
        "--name",
        "cli",
        "--current",
        stdout=out,
    )
    assert f"{model_dir[1]:,} parameters" in out.getvalue()
    assert ModelVersion.objects.get(name="cli").is_current
    with pytest.raises(CommandError, match="no model version named 'nope'"):
        call_command("register_model", str(model_dir[0]), "--role", "policy", "--parent", "nope")


def test_api_registers_inspects_and_promotes(model_dir, ml_staff, annotator, api_client):
    api_client.force_authenticate(ml_staff)
    created = api_client.post(
        "/api/v1/models/",
        {"path": str(model_dir[0]), "role": "policy", "name": "api-v1"},
        format="json",
    )
    assert created.status_code == 201, created.content
    version_id = created.json()["id"]
    detail = api_client.get(f"/api/v1/models/{version_id}/").json()
    assert detail["parameter_count"] == model_dir[1] and detail["is_current"] is False
    promoted = api_client.post(f"/api/v1/models/{version_id}/promote/")
    assert promoted.status_code == 200 and promoted.json()["is_current"] is True
    bad = api_client.post("/api/v1/models/", {"path": "/nowhere", "role": "policy"}, format="json")
    assert bad.status_code == 400 and error_fields(bad) == {"path"}
    api_client.force_authenticate(annotator)
    assert api_client.get("/api/v1/models/").status_code == 403
    assert api_client.post(f"/api/v1/models/{version_id}/promote/").status_code == 403


def test_admin_promote_action(model_dir, ml_staff, client):
    version = register_model(str(model_dir[0]), "policy", name="admin-v1")
    client.force_login(ml_staff)
    response = client.post(
        "/admin/annotation_app/modelversion/",
        {"action": "promote_selected", "_selected_action": [version.pk]},
    )
    assert response.status_code == 302
    version.refresh_from_db()
    assert version.is_current
    page = client.get(f"/admin/annotation_app/modelversion/{version.pk}/change/")
    assert "num_key_value_heads" in page.content.decode()


# --- hub ids are checked, briefly (issue 9) ------------------------------------------------


def test_a_hub_id_the_hub_does_not_have_is_refused(fake_hub):
    with pytest.raises(InvalidInput, match="the Hugging Face hub has no model org/missing"):
        register_model("org/missing", "policy")
    assert not ModelVersion.objects.exists()


def test_api_refuses_a_hub_id_it_cannot_check_at_once(fake_hub, ml_staff, api_client, monkeypatch):
    fake_hub.hang = True  # a network that drops packets: the check times out
    monkeypatch.setenv("PAIRWISE_HUB_TIMEOUT_SECONDS", "1")
    api_client.force_authenticate(ml_staff)
    began = time.monotonic()
    response = api_client.post("/api/v1/models/", {"path": "org/far", "role": "policy"})
    assert time.monotonic() - began < 5
    assert response.status_code == 400
    assert error_fields(response) == {"path"}
    assert "cannot reach the Hugging Face hub to check org/far" in error_messages(response)
    assert "register the directory" in error_messages(response)
    assert not ModelVersion.objects.exists()


def test_the_command_refuses_an_unreachable_hub_id(fake_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(CommandError, match="cannot reach the Hugging Face hub to check org/far"):
        call_command("register_model", "org/far", "--role", "policy", stdout=io.StringIO())
    assert not ModelVersion.objects.exists()
