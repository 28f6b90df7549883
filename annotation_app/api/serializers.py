"""API representations. Annotators' views never include model names or stored slot order."""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.authtoken.serializers import AuthTokenSerializer

from annotation_app.api.fields import (
    StorableModelSerializer,
    StorableSlugRelatedField,
    storable_json,
)
from annotation_app.errors import InvalidInput
from annotation_app.forms import MAX_FLAG_REASON_CHARS, USERNAME_MAX_LENGTH
from annotation_app.models import Annotation, Assignment, Batch, ModelVersion, TrainingRun
from annotation_app.services.annotations import MAX_RATIONALE_CHARS, MAX_TIME_SPENT_MS
from annotation_app.services.dialogues import MAX_TURN_CHARS
from annotation_app.services.exports import EXPORT_FORMATS
from annotation_app.services.generation import validate_sampling_plan
from annotation_app.services.generation_errors import generation_error_for
from annotation_app.services.imports import FORMATS
from annotation_app.services.training.start import RUN_KEYS
from rlhf.hyperparameters import rules
from rlhf.preferences import MARGIN_TABLES, Strength
from rlhf.reward.config import RewardTrainingConfig


class BatchSerializer(StorableModelSerializer):
    assigned_annotators = StorableSlugRelatedField(
        many=True, required=False, slug_field="username", queryset=get_user_model().objects.all()
    )
    assigned_groups = StorableSlugRelatedField(
        many=True, required=False, slug_field="name", queryset=Group.objects.all()
    )
    comparison_count = serializers.IntegerField(source="comparisons.count", read_only=True)

    class Meta:
        model = Batch
        fields = [
            "id",
            "name",
            "kind",
            "status",
            "guidelines",
            "overlap",
            "sampling_plan",
            "lease_minutes",
            "allow_annotator_prompts",
            "max_turns",
            "assigned_annotators",
            "assigned_groups",
            "deadline",
            "comparison_count",
            "created_at",
            "activated_at",
            "closed_at",
        ]
        read_only_fields = ["status", "created_at", "activated_at", "closed_at"]
        # The database's check constraints, said up front (a 400, not an IntegrityError).
        extra_kwargs = {
            "kind": {"help_text": "Fixed once the batch has annotations."},
            "overlap": {
                "min_value": 1,
                "help_text": "Annotations wanted per comparison. A change recomputes which "
                "comparisons are complete (annotations are never removed); it may not go below "
                "a comparison's annotations plus open leases while a lease is open.",
            },
            "lease_minutes": {"min_value": 1},
            "max_turns": {"min_value": 1},
        }

    def validate_sampling_plan(self, plan: dict) -> dict:
        try:
            validate_sampling_plan(plan)
        except InvalidInput as error:
            raise serializers.ValidationError(f"{error.field}: {error}") from None
        return plan


@extend_schema_field({"type": "string", "format": "binary"})
class UploadField(serializers.FileField):
    """A file uploaded in a multipart body (the schema says so: binary, not a URL)."""


class ImportSerializer(serializers.Serializer):
    file = UploadField(
        help_text="JSONL, or CSV (a name ending in .csv or .csv.gz), in UTF-8; gzip-compressed "
        "or not (known from the content)."
    )
    format = serializers.ChoiceField(
        choices=FORMATS,
        required=False,
        allow_null=True,
        help_text="Detected from the first record when omitted.",
    )
    allow_duplicate = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Import even when the same content was imported into this batch before "
        "(refused with 409 otherwise).",
    )


class ImportReportSerializer(serializers.Serializer):
    format = serializers.CharField()
    records = serializers.IntegerField()
    comparisons = serializers.IntegerField()
    waiting_for_generation = serializers.IntegerField()


class RetryGenerationSerializer(serializers.Serializer):
    requests = serializers.IntegerField(help_text="How many responses were asked for again.")


class NextTaskRequestSerializer(serializers.Serializer):
    batch = serializers.IntegerField(
        required=False, allow_null=True, help_text="Only take work from this batch."
    )


class TaskSerializer(serializers.Serializer):
    """A leased comparison as the annotator sees it: A is shown left, B right."""

    assignment = serializers.IntegerField(source="pk")
    batch = serializers.SerializerMethodField()
    context = serializers.SerializerMethodField()
    responses = serializers.SerializerMethodField()
    safety_labels_required = serializers.BooleanField(source="comparison.batch.is_safety")
    status = serializers.CharField()
    comparison_status = serializers.CharField(source="comparison.status")
    generation_error = serializers.SerializerMethodField(
        help_text="Why generating the responses failed: the worker's error for staff, a neutral "
        "message for annotators; empty unless the comparison failed."
    )
    expires_at = serializers.DateTimeField()

    def get_batch(self, assignment: Assignment) -> dict:
        batch = assignment.comparison.batch
        return {
            "id": batch.pk,
            "name": batch.name,
            "kind": batch.kind,
            "guidelines": batch.guidelines,
        }

    def get_generation_error(self, assignment: Assignment) -> str:
        return generation_error_for(assignment)

    def get_context(self, assignment: Assignment) -> list[dict]:
        return assignment.comparison.context_messages()

    def get_responses(self, assignment: Assignment) -> dict[str, str] | None:
        """A is shown left, B right; None while the responses are still being generated."""
        texts = {r.slot: r.text for r in assignment.comparison.responses.all()}
        if len(texts) < 2:
            return None
        return {"A": texts[assignment.left_slot], "B": texts[assignment.right_slot]}


class SubmitSerializer(serializers.Serializer):
    assignment = serializers.IntegerField()
    preferred = serializers.ChoiceField(choices=["A", "B"])
    strength = serializers.ChoiceField(choices=[s.value for s in Strength])
    a_safe = serializers.BooleanField(required=False, allow_null=True, default=None)
    b_safe = serializers.BooleanField(required=False, allow_null=True, default=None)
    rationale = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        trim_whitespace=True,
        max_length=MAX_RATIONALE_CHARS,
    )
    time_spent_ms = serializers.IntegerField(
        required=False, allow_null=True, min_value=0, max_value=MAX_TIME_SPENT_MS
    )
    idempotency_key = serializers.UUIDField(
        required=True,
        help_text="Required. Chosen by the client, a new one for each judgement; retrying with "
        "the same key never creates a second annotation.",
    )


class AnnotationSerializer(serializers.ModelSerializer):
    """An annotator's own annotation, in the display sides they saw."""

    preferred = serializers.SerializerMethodField()
    a_safe = serializers.SerializerMethodField()
    b_safe = serializers.SerializerMethodField()

    class Meta:
        model = Annotation
        fields = [
            "id",
            "assignment",
            "comparison",
            "preferred",
            "strength",
            "a_safe",
            "b_safe",
            "safety_bin",
            "rationale",
            "time_spent_ms",
            "idempotency_key",
            "created_at",
        ]

    def get_preferred(self, annotation: Annotation) -> str:
        return "A" if annotation.preferred_slot == annotation.left_slot else "B"

    def get_a_safe(self, annotation: Annotation) -> bool | None:
        return annotation.is_safe(annotation.left_slot)

    def get_b_safe(self, annotation: Annotation) -> bool | None:
        return annotation.is_safe(3 - annotation.left_slot)


class FlagSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=MAX_FLAG_REASON_CHARS)


class ExportQuerySerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=EXPORT_FORMATS, default="canonical")
    batch = serializers.ListField(child=serializers.IntegerField(), required=False)
    margin = serializers.ChoiceField(choices=sorted(MARGIN_TABLES), default="small")


class WritePromptSerializer(serializers.Serializer):
    prompt = serializers.CharField(max_length=MAX_TURN_CHARS)
    risk_category = serializers.CharField(required=False, allow_blank=True, default="")
    attack_vector = serializers.CharField(required=False, allow_blank=True, default="")


class ContinueSerializer(serializers.Serializer):
    text = serializers.CharField(max_length=MAX_TURN_CHARS)


class ModelVersionSerializer(StorableModelSerializer):
    parent = StorableSlugRelatedField(
        slug_field="name", queryset=ModelVersion.objects.all(), required=False, allow_null=True
    )
    make_current = serializers.BooleanField(write_only=True, required=False, default=False)

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "name",
            "role",
            "path",
            "parent",
            "training_run",
            "metrics",
            "is_current",
            "created_at",
            "make_current",
        ]
        read_only_fields = ["training_run", "is_current", "created_at"]
        extra_kwargs = {"name": {"required": False}}


class TrainingRunSerializer(serializers.ModelSerializer):
    """A training run: its config, data snapshot, state, logs and metrics."""

    batches = serializers.SerializerMethodField()
    base_model = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    created_by = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    output_models = serializers.SerializerMethodField(
        help_text="Model versions the run registered (not current: promote one with "
        "POST /api/v1/models/{id}/promote/)."
    )

    class Meta:
        model = TrainingRun
        fields = [
            "id",
            "kind",
            "status",
            "config",
            "batches",
            "base_model",
            "export_path",
            "export_sha256",
            "progress",
            "logs",
            "metrics",
            "error",
            "output_models",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_batches(self, run: TrainingRun) -> list[dict]:
        return [{"id": b.pk, "name": b.name, "kind": b.kind} for b in run.batches.all()]

    def get_output_models(self, run: TrainingRun) -> list[dict]:
        return [
            {"id": v.pk, "name": v.name, "role": v.role, "is_current": v.is_current}
            for v in run.outputs.all()
        ]


class TrainingRunSummarySerializer(TrainingRunSerializer):
    """A run in a list: everything but the logs and the metrics."""

    class Meta(TrainingRunSerializer.Meta):
        fields = [f for f in TrainingRunSerializer.Meta.fields if f not in {"logs", "metrics"}]
        read_only_fields = fields


class TrainingRunStatusSerializer(serializers.Serializer):
    """What a page polls while a run is going: small, the logs' last lines only."""

    id = serializers.IntegerField()
    status = serializers.CharField()
    progress = serializers.FloatField()
    error = serializers.CharField()
    log_tail = serializers.CharField()
    train_pairs = serializers.IntegerField(
        allow_null=True, help_text="Pairs trained on; null until the run's data is frozen."
    )
    eval_pairs = serializers.IntegerField(
        allow_null=True, help_text="Pairs held out for evaluation; null until then."
    )
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class StartTrainingSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(
        choices=["helpfulness", "safety"], help_text="Which reward model to train."
    )
    batches = serializers.PrimaryKeyRelatedField(
        many=True,
        queryset=Batch.objects.all(),
        help_text="Batch ids: annotated batches and imported datasets alike.",
    )
    base_model = serializers.PrimaryKeyRelatedField(
        queryset=ModelVersion.objects.all(),
        required=False,
        allow_null=True,
        help_text="Model version to start from: a policy (default: the current one, as in "
        "Llama 2) or a reward model of the same kind to continue.",
    )
    config = serializers.DictField(
        required=False,
        default=dict,
        validators=[storable_json],
        help_text="Hyperparameters, the settings of rlhf.reward.config.RewardTrainingConfig: "
        + ", ".join(
            f"{rule.name} (default {rule.default})"
            for rule in rules(RewardTrainingConfig)
            if rule.name not in RUN_KEYS
        )
        + ". Missing ones take the library's defaults.",
    )


class TokenRequestSerializer(AuthTokenSerializer):
    """A user name and password; the answer holds that user's API token."""

    # Bounded as the sign-in form bounds it (a longer name names no one): a 400, where
    # django-axes could not record the failed sign-in.
    username = serializers.CharField(
        label="Username", write_only=True, max_length=USERNAME_MAX_LENGTH
    )
