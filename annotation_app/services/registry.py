"""The model registry: model versions, their roles, and which one is current per role.

A version points to a Hugging Face model directory (``save_pretrained`` output) or, for users
with a network, a hub id. Inspecting a version reads its ``config.json`` and the headers of
its safetensors files, so a parameter count never loads the weights.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

from django.db import transaction

from annotation_app.errors import Conflict, InvalidInput
from annotation_app.models import ModelVersion, TrainingRun
from model_worker import hub

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class AlreadyRegistered(Conflict):
    """The model is registered already (same path, same role): ``version`` is that one."""

    def __init__(self, version: ModelVersion):
        self.version = version
        state = "the current one" if version.is_current else "not current: promote it to use it"
        super().__init__(
            f"{version.path} is already registered as {version.name!r} (id {version.pk}, role "
            f"{version.role}, {state}); a second version of the same model is not registered"
        )


def _local_directory(path: str) -> Path | None:
    """``path`` resolved, when it names something on this machine; None otherwise (a hub id).

    Raises :class:`InvalidInput` for a path the file system cannot even look at (a name too
    long for it, say).
    """
    location = Path(path).expanduser()
    try:
        return location.resolve() if location.exists() else None
    except OSError as error:
        raise InvalidInput(f"{path} is not a usable path: {error.strerror}", "path") from None


def stored_path(path: str) -> str:
    """How the registry records ``path``: a local directory resolved, a hub id as given."""
    local = _local_directory(path)
    return str(local) if local is not None else path


def _version_at(stored: str, role: str) -> ModelVersion | None:
    # Registered once per path and role; of older duplicates, the current one, or the first.
    versions = ModelVersion.objects.filter(role=role, path=stored)
    return versions.order_by("-is_current", "created_at", "pk").first()


def registered_version(path: str, role: str) -> ModelVersion | None:
    """The version of ``role`` registered at ``path`` (a directory or a hub id), if any."""
    return _version_at(stored_path(path), role)


def register_model(
    path: str,
    role: str,
    *,
    name: str | None = None,
    parent: ModelVersion | None = None,
    metrics: dict | None = None,
    make_current: bool = False,
    training_run: TrainingRun | None = None,
) -> ModelVersion:
    """Record a model directory (or hub id) as a version with ``role``.

    ``training_run`` is the run that made it, so that its data and config stay traceable.
    A path already registered with the same role raises :class:`AlreadyRegistered`.
    """
    if role not in ModelVersion.Role.values:
        raise InvalidInput(f"unknown role {role!r}; use one of {ModelVersion.Role.values}", "role")
    local = _local_directory(path)
    if local is not None:
        if not (local / "config.json").is_file():
            raise InvalidInput(f"{path} holds no config.json: not a Hugging Face model", "path")
        path = str(local)
    elif not HUB_ID.match(path):
        raise InvalidInput(f"{path} is neither a model directory nor a hub id (org/name)", "path")
    elif not hub.is_cached(path):
        # One short request now, rather than a worker waiting on the hub for minutes later.
        try:
            hub.check_hub_model(path)
        except hub.HubUnavailable as error:
            raise InvalidInput(str(error), "path") from None
    existing = _version_at(path, role)  # path is as stored now
    if existing is not None:
        raise AlreadyRegistered(existing)
    name = name or f"{role}:{Path(path).name}"
    if ModelVersion.objects.filter(name=name).exists():
        raise Conflict(f"a model version named {name!r} already exists")
    with transaction.atomic():
        version = ModelVersion.objects.create(
            name=name,
            role=role,
            path=path,
            parent=parent,
            metrics=metrics or {},
            training_run=training_run,
        )
        if make_current:
            promote(version)
    return version


def promote(version: ModelVersion) -> ModelVersion:
    """Make ``version`` the current one of its role (the previous one stays, not current)."""
    with transaction.atomic():
        # Lock the role's current row so two promotions cannot interleave.
        list(ModelVersion.objects.select_for_update().filter(role=version.role, is_current=True))
        ModelVersion.objects.filter(role=version.role, is_current=True).exclude(
            pk=version.pk
        ).update(is_current=False)
        version.is_current = True
        version.save(update_fields=["is_current"])
    return version


def current_version(role: str) -> ModelVersion | None:
    return ModelVersion.objects.filter(role=role, is_current=True).first()


def _safetensors_parameter_count(file: Path) -> int:
    """Count parameters from a safetensors header: 8 bytes of length, then JSON."""
    with file.open("rb") as stream:
        (header_length,) = struct.unpack("<Q", stream.read(8))
        header = json.loads(stream.read(header_length))
    count = 0
    for key, tensor in header.items():
        if key == "__metadata__":
            continue
        size = 1
        for dimension in tensor["shape"]:
            size *= dimension
        count += size
    return count


def lineage(version: ModelVersion) -> list[dict]:
    """The version and its ancestors, newest first."""
    chain, seen = [], set()
    while version is not None and version.pk not in seen:
        seen.add(version.pk)
        chain.append(
            {
                "id": version.pk,
                "name": version.name,
                "role": version.role,
                "training_run": version.training_run_id,
            }
        )
        version = version.parent
    return chain


def inspect_model(version: ModelVersion) -> dict:
    """Config, parameter count and lineage of a version (config and count: local dirs only)."""
    location = Path(version.path)
    config = parameters = None
    if (location / "config.json").is_file():
        config = json.loads((location / "config.json").read_text())
        files = sorted(location.glob("*.safetensors"))
        parameters = sum(_safetensors_parameter_count(file) for file in files) if files else None
    return {
        "config": config,
        "parameter_count": parameters,
        "location": "directory" if location.exists() else "hub",
        "lineage": lineage(version),
        "metrics": version.metrics,
    }
