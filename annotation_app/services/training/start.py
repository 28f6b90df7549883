"""Starting a reward-model run (web process): check the request, queue the run.

The settings are checked by ``RewardTrainingConfig`` itself (``rlhf.reward.config``, plain
Python), so that the page, the API and the command line accept exactly the same configs; a bad
request raises :class:`InvalidInput` naming the field, and creates nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, QuerySet

from annotation_app.errors import Conflict, InvalidInput
from annotation_app.models import Annotation, Batch, ModelVersion, OutboxMessage, TrainingRun
from annotation_app.services import outbox
from annotation_app.services.exports import dropped_safety_annotations, reference_only_comparisons
from annotation_app.services.generation import default_policy
from annotation_app.services.registry import promote
from rlhf.hyperparameters import ConfigError
from rlhf.reward.config import RewardTrainingConfig

KINDS = ("helpfulness", "safety")
RUN_KIND = {
    "helpfulness": TrainingRun.Kind.REWARD_HELPFULNESS,
    "safety": TrainingRun.Kind.REWARD_SAFETY,
}
REWARD_ROLE = {
    "helpfulness": ModelVersion.Role.REWARD_HELPFULNESS,
    "safety": ModelVersion.Role.REWARD_SAFETY,
}
# Config keys the run sets itself: the kind and the base model are chosen as such, not typed.
RUN_KEYS = ("kind", "base_model")


# --- what can be trained on, and from -----------------------------------------------------------


def exportable_pair_counts(batches: Iterable[Batch] | None = None) -> dict[int, int]:
    """Training pairs per batch id, as the training export will write them.

    Annotations count unless the paper's safety rule drops them; imported comparisons that no
    one annotated count once for their reference preference.
    """
    annotations = Annotation.objects.exclude(dropped_safety_annotations())
    if batches is not None:
        batches = list(batches)
        annotations = annotations.filter(batch__in=batches)
    counts: dict[int, int] = dict(
        annotations.values_list("batch").annotate(n=Count("id")).order_by()
    )
    references = (
        reference_only_comparisons(batches).values_list("batch").annotate(n=Count("id")).order_by()
    )
    for batch_id, count in references:
        counts[batch_id] = counts.get(batch_id, 0) + count
    return counts


def batches_for_training() -> list[Batch]:
    """Every batch, newest first, each with ``exportable_pairs`` set."""
    batches = list(Batch.objects.order_by("-created_at", "-pk"))
    counts = exportable_pair_counts()
    for batch in batches:
        batch.exportable_pairs = counts.get(batch.pk, 0)
    return batches


def base_model_choices() -> QuerySet[ModelVersion]:
    """The versions a reward model may start from: a policy, or a reward model to continue."""
    return ModelVersion.objects.filter(
        role__in=[ModelVersion.Role.POLICY, *REWARD_ROLE.values()]
    ).order_by("role", "-is_current", "-created_at")


def _check_base_model(kind: str, base_model: ModelVersion) -> None:
    allowed = {ModelVersion.Role.POLICY, REWARD_ROLE[kind]}
    if base_model.role not in allowed:
        raise InvalidInput(
            f"a {kind} reward model starts from a policy or a {kind} reward model, not from "
            f"{base_model.name!r} ({base_model.get_role_display()})",
            "base_model",
        )


def validate_config(kind: str, base_model: ModelVersion, config: Mapping[str, Any]) -> dict:
    """The full training config, checked by ``RewardTrainingConfig.from_dict``.

    Errors name the field as ``config.<name>``.
    """
    if not isinstance(config, Mapping):
        raise InvalidInput("must be an object of hyperparameters", "config")
    for key in RUN_KEYS:
        if key in config:
            raise InvalidInput(
                f"is chosen as the run's {key.replace('_', ' ')}, not in its config",
                f"config.{key}",
            )
    # Checkpoints unless the config says otherwise: a run taken over resumes from the last.
    every = settings.PAIRWISE_TRAINING_CHECKPOINT_EVERY
    try:
        checked = RewardTrainingConfig.from_dict(
            {"checkpoint_every": every, **config, "kind": kind, "base_model": base_model.path}
        )
    except ConfigError as error:
        raise InvalidInput(str(error), f"config.{error.field}") from None
    return checked.to_dict()


# --- starting a run -----------------------------------------------------------------------------


def start_reward_training(
    user,
    kind: str,
    batches: Iterable[Batch],
    base_model: ModelVersion | None = None,
    config: Mapping[str, Any] | None = None,
) -> TrainingRun:
    """Queue a reward-model run on ``batches``; nothing is created if anything is wrong.

    ``base_model`` defaults to the current policy (Llama 2 initialises its reward models from
    the chat model checkpoint); pass the current reward model of ``kind`` to continue it.
    ``config`` holds the hyperparameters (``RewardTrainingConfig`` fields but ``kind`` and
    ``base_model``); missing ones take the library's defaults.
    """
    if kind not in KINDS:
        raise InvalidInput(f"must be one of {list(KINDS)}, not {kind!r}", "kind")
    batches = list(batches)
    if not batches:
        raise InvalidInput("choose at least one batch to train on", "batches")
    # One transaction: registering PAIRWISE_POLICY as the default base is undone too if the
    # request turns out to be bad.
    with transaction.atomic():
        if base_model is None:
            base_model = default_policy()
            if base_model is None:
                raise InvalidInput(
                    "no current policy to start from: choose a base model, or register a policy",
                    "base_model",
                )
        _check_base_model(kind, base_model)
        checked = validate_config(kind, base_model, config or {})
        counts = exportable_pair_counts(batches)
        if not any(counts.get(batch.pk) for batch in batches):
            raise InvalidInput(
                "the chosen batches hold no preference pairs yet (no annotations, and no "
                "imported preferences)",
                "batches",
            )
        run = TrainingRun.objects.create(
            kind=RUN_KIND[kind],
            config=checked,
            base_model=base_model,
            created_by=user if getattr(user, "is_authenticated", False) else None,
        )
        run.batches.set(batches)
        # Sent once committed; with the broker down the run stays queued and is sent later.
        # Without a broker (the embedded demo) it runs in a background thread of this process.
        outbox.enqueue(OutboxMessage.Kind.TRAINING, [{"run_id": run.pk}])
    return run


def promote_run_output(run: TrainingRun) -> ModelVersion:
    """Make the model a succeeded run produced the current one of its role."""
    version = run.outputs.order_by("-created_at").first()
    if run.status != TrainingRun.Status.SUCCEEDED or version is None:
        raise Conflict(f"run {run.pk} produced no model to promote (it is {run.status})")
    return promote(version)


def run_kind(run: TrainingRun) -> str:
    """``helpfulness`` or ``safety``: the kind of reward model a run trains."""
    for kind, value in RUN_KIND.items():
        if run.kind == value:
            return kind
    raise InvalidInput(f"run {run.pk} is a {run.kind} run, not a reward-model run", "kind")
