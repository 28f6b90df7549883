"""The data model of Pairwise (see ``../shared/DESIGN.md``, "Data model").

Invariants that matter are guarded by the database itself, not only by the code that writes:
one annotation per annotator per comparison, at most two responses per comparison (slots 1
and 2), one current model version per role, one lease per annotator per comparison. What
annotators judged is guarded by the models: once a comparison has annotations, its responses,
context turns and conversation, its own content and its batch's kind are read-only
(:class:`JudgedContent`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from annotation_app.errors import Conflict
from rlhf.preferences import STRENGTH_LABELS, SafetyBin, Strength

# --- judged data is read-only ----------------------------------------------------------------


class JudgedDataReadOnly(Conflict):
    """A change to what annotators judged: their annotations would no longer say what they saw.

    ``fields``: the judged fields a refused change touched (none for an addition or a delete).
    """

    def __init__(self, message: str, fields: Sequence[str] = ()):
        super().__init__(message)
        self.fields = list(fields)


def _cannot_change(subject: str, fields: Sequence[str]) -> JudgedDataReadOnly:
    return JudgedDataReadOnly(
        f"{subject}: {', '.join(fields)} cannot change; judged data is read-only", fields
    )


def _annotation_phrase(count: int) -> str:
    return f"{count} annotation{'s' if count != 1 else ''}"


def _judging_comparisons(annotations: QuerySet) -> str | None:
    """The comparisons these annotations judge ("comparison 17, 3 annotations"), or None."""
    counts = dict(
        annotations.order_by("comparison_id").values_list("comparison_id").annotate(n=Count("pk"))
    )
    if not counts:
        return None
    ids = list(counts)
    shown = ", ".join(str(pk) for pk in ids[:5]) + (", …" if len(ids) > 5 else "")
    which = f"comparison {shown}" if len(ids) == 1 else f"comparisons {shown}"
    return f"{which}, {_annotation_phrase(sum(counts.values()))}"


class JudgedContentQuerySet(models.QuerySet):
    """Bulk writes are guarded like single ones: no update of a judged field, no delete."""

    def update(self, **kwargs):
        changed = self.model.judged_fields_in(kwargs)
        if changed:
            self.model.refuse_if_judged(self, f"{', '.join(changed)} cannot change")
        return super().update(**kwargs)

    def delete(self):
        self.model.refuse_if_judged(self, "it cannot be deleted")
        return super().delete()


class JudgedContent(models.Model):
    """Content that annotators judge: read-only once a comparison it belongs to has annotations.

    ``JUDGED_FIELDS`` are what annotators saw or what their judgement is read against (texts,
    slots, context, model and sampling metadata, the links between them); once judged, they
    cannot change and the row cannot be deleted, through ``save``, ``delete`` or a queryset's
    ``update`` / ``delete``. Other fields are bookkeeping that services keep updating (a
    comparison's status and counts). Raw SQL and cascades from a parent are not guarded here:
    annotations protect their comparison (``on_delete=PROTECT``), so no cascade reaches judged
    rows.
    """

    JUDGED_FIELDS: ClassVar[tuple[str, ...]] = ()

    objects = JudgedContentQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        self._refuse_judged_change(kwargs.get("update_fields"))
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        if self.pk is not None:
            type(self).refuse_if_judged(
                type(self)._base_manager.filter(pk=self.pk), "it cannot be deleted"
            )
        return super().delete(*args, **kwargs)

    @classmethod
    def judged(cls, rows: QuerySet) -> QuerySet:
        """The rows among ``rows`` that belong to a comparison with annotations."""
        raise NotImplementedError

    def judged_subject(self) -> str | None:
        """This row and what judged it ("response 2 of comparison 17 (3 annotations)"), or None
        when nothing has judged it (read from the parent links as they are on the instance)."""
        raise NotImplementedError

    @classmethod
    def judged_fields_in(cls, names: Iterable[str]) -> list[str]:
        """The judged fields among field names or attnames (``comparison_id``), by name."""
        names = set(names)
        return [
            name
            for name in cls.JUDGED_FIELDS
            if name in names or cls._meta.get_field(name).attname in names
        ]

    @classmethod
    def refuse_if_judged(cls, rows: QuerySet, detail: str) -> None:
        """Raise :class:`JudgedDataReadOnly` naming the first judged row among ``rows``."""
        judged = cls.judged(cls._base_manager.filter(pk__in=rows.values("pk"))).distinct()
        first = judged.order_by("pk").first()
        subject = first.judged_subject() if first is not None else None
        if subject is None:
            return
        more = judged.count() - 1
        also = f" (and {more} more judged {cls._meta.verbose_name_plural})" if more else ""
        raise JudgedDataReadOnly(f"{subject}: {detail}{also}; judged data is read-only")

    def _refuse_judged_change(self, update_fields: Iterable[str] | None) -> None:
        names = list(self.JUDGED_FIELDS)
        if update_fields is not None:
            names = self.judged_fields_in(update_fields)
        if not names:
            return  # bookkeeping only: no query
        stored = None
        if self.pk is not None:
            stored = type(self)._base_manager.filter(pk=self.pk).first()
        if stored is None:  # a new row: refused under judged content (a third response, say)
            subject = self.judged_subject()
            if subject is not None:
                raise JudgedDataReadOnly(f"{subject}: it cannot be added; judged data is read-only")
            return
        changed = [
            name
            for name in names
            if getattr(stored, self._meta.get_field(name).attname)
            != getattr(self, self._meta.get_field(name).attname)
        ]
        if not changed:
            return
        for row in (stored, self):  # judged as stored, or moved under judged content
            subject = row.judged_subject()
            if subject is not None:
                raise _cannot_change(subject, changed)

    def refuse_judged_changes(self, changes: Mapping[str, Any]) -> None:
        """Raise :class:`JudgedDataReadOnly` if ``changes`` (field name → new value) would change
        a judged field of this row, as saving them would: for forms and services that check
        before they save."""
        changed = [
            name
            for name in self.JUDGED_FIELDS
            if name in changes and changes[name] != getattr(self, name)
        ]
        subject = self.judged_subject() if changed else None
        if subject is not None:
            raise _cannot_change(subject, changed)


class ModelVersion(models.Model):
    """A model directory in Hugging Face format (or a hub id) with a role in the loop."""

    class Role(models.TextChoices):
        POLICY = "policy", "Policy"
        REWARD_HELPFULNESS = "reward_helpfulness", "Helpfulness reward model"
        REWARD_SAFETY = "reward_safety", "Safety reward model"

    name = models.CharField(max_length=200, unique=True)
    role = models.CharField(max_length=32, choices=Role.choices)
    path = models.CharField(max_length=1000, help_text="Model directory or Hugging Face hub id.")
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    training_run = models.ForeignKey(
        "TrainingRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="outputs"
    )
    metrics = models.JSONField(default=dict, blank=True)
    is_current = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["role"], condition=Q(is_current=True), name="one_current_version_per_role"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_role_display()})"


class Batch(JudgedContent):
    """A unit of annotation work, like the weekly batches of Llama 2."""

    # The kind says what the annotations mean (safety labels or not): fixed once judged.
    JUDGED_FIELDS = ("kind",)

    class Kind(models.TextChoices):
        HELPFULNESS = "helpfulness", "Helpfulness"
        SAFETY = "safety", "Safety"

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        ACTIVE = "active", "Active"
        CLOSED = "closed", "Closed"

    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    guidelines = models.TextField(blank=True, help_text="Shown to annotators; Markdown-free text.")
    overlap = models.PositiveSmallIntegerField(
        default=1, help_text="Annotations wanted per comparison, each by a different annotator."
    )
    sampling_plan = models.JSONField(
        default=dict,
        blank=True,
        help_text="Which policy versions and sampling parameters produce the two responses.",
    )
    lease_minutes = models.PositiveSmallIntegerField(default=30)
    allow_annotator_prompts = models.BooleanField(
        default=False, help_text="Annotators may write their own prompts in this batch."
    )
    max_turns = models.PositiveSmallIntegerField(
        default=1,
        help_text="How many user turns an annotator-written dialogue may reach (1: no follow-ups).",
    )
    assigned_annotators = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="assigned_batches",
        help_text="Leave both empty to open the batch to every annotator.",
    )
    assigned_groups = models.ManyToManyField(Group, blank=True, related_name="assigned_batches")
    deadline = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    activated_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "batches"
        permissions = [
            ("annotate", "Can annotate comparisons"),
            ("manage_batches", "Can import into, activate and close batches"),
            ("export_preferences", "Can export preference data"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(overlap__gte=1), name="batch_overlap_positive"),
            models.CheckConstraint(
                condition=Q(lease_minutes__gte=1), name="batch_lease_minutes_positive"
            ),
            models.CheckConstraint(condition=Q(max_turns__gte=1), name="batch_max_turns_positive"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_safety(self) -> bool:
        return self.kind == self.Kind.SAFETY

    @classmethod
    def judged(cls, rows: QuerySet) -> QuerySet:
        return rows.filter(annotations__isnull=False)

    def judged_subject(self) -> str | None:
        count = Annotation.objects.filter(batch_id=self.pk).count() if self.pk else 0
        return f"batch {self.name!r} ({_annotation_phrase(count)})" if count else None


class Conversation(JudgedContent):
    """A dialogue. The context of a comparison is its first ``context_length`` turns."""

    JUDGED_FIELDS = ("batch", "risk_category", "attack_vector", "source")

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="conversations")
    risk_category = models.CharField(max_length=100, blank=True)
    attack_vector = models.CharField(max_length=100, blank=True)
    source = models.CharField(max_length=200, blank=True, help_text="File and line it came from.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="written_conversations",
        help_text="The annotator who wrote it, if any.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"Conversation {self.pk}"

    @classmethod
    def judged(cls, rows: QuerySet) -> QuerySet:
        return rows.filter(comparisons__annotations__isnull=False)

    def judged_subject(self) -> str | None:
        if self.pk is None:
            return None
        judging = _judging_comparisons(Annotation.objects.filter(comparison__conversation=self))
        return f"conversation {self.pk} (dialogue of {judging})" if judging else None


class Turn(JudgedContent):
    JUDGED_FIELDS = ("conversation", "index", "role", "content")

    class Role(models.TextChoices):
        SYSTEM = "system", "System"
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="turns")
    index = models.PositiveIntegerField()
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField()

    class Meta:
        ordering = ["conversation", "index"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "index"], name="one_turn_per_index")
        ]

    def __str__(self) -> str:
        return f"{self.role} turn {self.index} of conversation {self.conversation_id}"

    def as_message(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}

    @classmethod
    def judged(cls, rows: QuerySet) -> QuerySet:
        return rows.filter(conversation__comparisons__annotations__isnull=False)

    def judged_subject(self) -> str | None:
        judging = _judging_comparisons(
            Annotation.objects.filter(comparison__conversation_id=self.conversation_id)
        )
        if judging is None:
            return None
        return f"turn {self.index} of conversation {self.conversation_id} (context of {judging})"


class Comparison(JudgedContent):
    """A context plus exactly two responses, to be judged ``batch.overlap`` times."""

    # What was judged; status, counts, generation error and the gold flag stay bookkeeping.
    JUDGED_FIELDS = (
        "batch",
        "conversation",
        "context_length",
        "reference_preferred_slot",
        "parent",
    )

    class Status(models.TextChoices):
        WAITING = "waiting", "Waiting for generation"
        FAILED = "failed", "Generation failed"
        READY = "ready", "Ready"
        COMPLETE = "complete", "Complete"
        CLOSED = "closed", "Closed"

    # Indexed by (batch, status) and the queue below; an index of its own would only cost writes.
    batch = models.ForeignKey(
        Batch, on_delete=models.CASCADE, related_name="comparisons", db_index=False
    )
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="comparisons"
    )
    context_length = models.PositiveIntegerField(
        help_text="How many turns of the conversation form the context; the last is a user turn."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.WAITING)
    annotation_count = models.PositiveIntegerField(default=0)
    # The leases held on it (status "leased", live or past their expiry) and the earliest of
    # their expiries: next-task reads its free slots from these two, without counting leases
    # (services/assignment.py). Kept under the comparison's row lock with every lease change.
    leased_count = models.PositiveIntegerField(default=0)
    earliest_lease_expiry = models.DateTimeField(null=True, blank=True)
    # Of its annotations, those preferring slot 1: with annotation_count, the batch's agreement
    # figures are sums over its comparisons, not over every annotation (selectors.py).
    slot1_count = models.PositiveIntegerField(default=0)
    flag_count = models.PositiveIntegerField(default=0)
    # The preference an imported pair came with (slot 1 or 2). Never shown to annotators; kept
    # to measure agreement with the source data and for gold checks.
    reference_preferred_slot = models.PositiveSmallIntegerField(null=True, blank=True)
    is_gold = models.BooleanField(
        default=False,
        help_text="A gold check: its reference preference is the known answer, used to measure "
        "annotator accuracy.",
    )
    generation_error = models.TextField(blank=True)
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="continuations",
        help_text="The comparison whose chosen reply this one's dialogue continues.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["batch", "status"]),
            # The order in which next-task walks a batch's ready comparisons.
            models.Index(
                fields=["batch", "-annotation_count", "id"],
                condition=Q(status="ready"),
                name="ready_comparisons_queue",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(reference_preferred_slot__in=[1, 2])
                | Q(reference_preferred_slot__isnull=True),
                name="comparison_reference_slot_valid",
            ),
            models.CheckConstraint(
                condition=Q(is_gold=False) | Q(reference_preferred_slot__isnull=False),
                name="gold_comparison_has_reference",
            ),
        ]

    def __str__(self) -> str:
        return f"Comparison {self.pk}"

    def context_messages(self) -> list[dict[str, str]]:
        # By the conversation's id: one query, without loading the conversation itself.
        turns = Turn.objects.filter(conversation_id=self.conversation_id).order_by("index")
        return [turn.as_message() for turn in turns[: self.context_length]]

    @classmethod
    def judged(cls, rows: QuerySet) -> QuerySet:
        return rows.filter(annotations__isnull=False)

    def judged_subject(self) -> str | None:
        count = Annotation.objects.filter(comparison_id=self.pk).count() if self.pk else 0
        return f"comparison {self.pk} ({_annotation_phrase(count)})" if count else None


class Response(JudgedContent):
    """One of the two responses of a comparison, in slot 1 or 2."""

    # Everything a response holds is what annotators judged, or how it came to be.
    JUDGED_FIELDS = (
        "comparison",
        "slot",
        "text",
        "source",
        "model_version",
        "model_name",
        "sampling_params",
        "seed",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
        "finish_reason",
        "prompt_tokens_dropped",
    )

    class Source(models.TextChoices):
        MODEL = "model", "Model"
        IMPORTED = "imported", "Imported"
        HUMAN = "human", "Human"

    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="responses")
    slot = models.PositiveSmallIntegerField()
    text = models.TextField()
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.IMPORTED)
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="responses"
    )
    model_name = models.CharField(
        max_length=200, blank=True, help_text="Name of the model that wrote an imported response."
    )
    sampling_params = models.JSONField(default=dict, blank=True)
    seed = models.BigIntegerField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    finish_reason = models.CharField(
        max_length=16,
        choices=[("stop", "Ended by the model"), ("length", "Cut at the token limit")],
        blank=True,
        help_text="Why generation stopped; empty for imported and human responses.",
    )
    prompt_tokens_dropped = models.PositiveIntegerField(
        default=0,
        help_text="Tokens cut from the beginning of the context to fit the model: what it "
        "never saw.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["comparison", "slot"]
        constraints = [
            models.UniqueConstraint(fields=["comparison", "slot"], name="one_response_per_slot"),
            models.CheckConstraint(condition=Q(slot__in=[1, 2]), name="response_slot_is_1_or_2"),
        ]

    def __str__(self) -> str:
        return f"Response {self.slot} of comparison {self.comparison_id}"

    @classmethod
    def judged(cls, rows: QuerySet) -> QuerySet:
        return rows.filter(comparison__annotations__isnull=False)

    def judged_subject(self) -> str | None:
        count = Annotation.objects.filter(comparison_id=self.comparison_id).count()
        if not count:
            return None
        return (
            f"response {self.slot} of comparison {self.comparison_id} ({_annotation_phrase(count)})"
        )


class Assignment(models.Model):
    """A lease of one comparison to one annotator. An annotator gets a comparison at most once."""

    class Status(models.TextChoices):
        LEASED = "leased", "Leased"
        SUBMITTED = "submitted", "Submitted"
        SKIPPED = "skipped", "Skipped"
        FLAGGED = "flagged", "Flagged as a problem"
        # Past its expiry, its slot was given to another annotator: it can no longer be submitted.
        EXPIRED = "expired", "Expired, its slot given to another annotator"

    # Both indexed through the composite indexes below, which every lease change writes to.
    comparison = models.ForeignKey(
        Comparison, on_delete=models.CASCADE, related_name="assignments", db_index=False
    )
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="assignments",
        db_index=False,
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.LEASED)
    # Which response the annotator sees on the left ("A"); drawn at random per lease so that
    # neither import order nor generation order leaks.
    left_slot = models.PositiveSmallIntegerField()
    leased_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    flag_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-leased_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["comparison", "annotator"], name="one_assignment_per_annotator"
            ),
            models.CheckConstraint(condition=Q(left_slot__in=[1, 2]), name="left_slot_is_1_or_2"),
        ]
        indexes = [
            models.Index(fields=["comparison", "status", "expires_at"]),
            models.Index(fields=["annotator", "status"]),
            # The leases held now, few at any time: the progress page counts the live ones.
            models.Index(fields=["expires_at"], condition=Q(status="leased"), name="held_leases"),
        ]

    def __str__(self) -> str:
        return f"Assignment {self.pk} of {self.comparison_id} to {self.annotator_id}"

    @property
    def right_slot(self) -> int:
        return 3 - self.left_slot

    def is_live(self, now=None) -> bool:
        return self.status == self.Status.LEASED and self.expires_at > (now or timezone.now())


class Annotation(models.Model):
    """One annotator's judgement of one comparison. Slots refer to ``Response.slot``."""

    STRENGTH_CHOICES = [(strength.value, label) for strength, label in STRENGTH_LABELS.items()]
    SAFETY_BIN_CHOICES = [(b.value, b.value.replace("_", " ").capitalize()) for b in SafetyBin]

    # Indexed through one_annotation_per_annotator (comparison, annotator).
    comparison = models.ForeignKey(
        Comparison, on_delete=models.PROTECT, related_name="annotations", db_index=False
    )
    # The comparison's batch, kept here too (set on save) so that a batch's annotations per
    # annotator are one index range (progress, quality), never a join through its comparisons.
    batch = models.ForeignKey(
        Batch, on_delete=models.PROTECT, related_name="annotations", db_index=False, editable=False
    )
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="annotations"
    )
    assignment = models.OneToOneField(
        Assignment, null=True, blank=True, on_delete=models.SET_NULL, related_name="annotation"
    )
    preferred_slot = models.PositiveSmallIntegerField()
    strength = models.CharField(max_length=24, choices=STRENGTH_CHOICES)
    slot1_safe = models.BooleanField(null=True, blank=True)
    slot2_safe = models.BooleanField(null=True, blank=True)
    safety_bin = models.CharField(max_length=16, choices=SAFETY_BIN_CHOICES, blank=True)
    rationale = models.TextField(blank=True)
    left_slot = models.PositiveSmallIntegerField(help_text="Which response was shown on the left.")
    time_spent_ms = models.PositiveIntegerField(null=True, blank=True)
    is_gold_check = models.BooleanField(default=False)
    idempotency_key = models.UUIDField(unique=True, default=uuid.uuid4)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # A batch's annotations by annotator, in time order: each annotator's count and
            # median time read off the index alone.
            models.Index(
                fields=["batch", "annotator", "time_spent_ms"], name="annotations_by_batch"
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["comparison", "annotator"], name="one_annotation_per_annotator"
            ),
            models.CheckConstraint(
                condition=Q(preferred_slot__in=[1, 2]), name="preferred_slot_is_1_or_2"
            ),
            models.CheckConstraint(
                condition=Q(left_slot__in=[1, 2]), name="annotation_left_slot_is_1_or_2"
            ),
            models.CheckConstraint(
                condition=Q(strength__in=[s.value for s in Strength]), name="strength_is_known"
            ),
        ]

    def __str__(self) -> str:
        return f"Annotation {self.pk} of {self.comparison_id} by {self.annotator_id}"

    def save(self, *args, **kwargs) -> None:
        # The batch is the comparison's, always.
        if self.batch_id is None:
            self.batch_id = self.comparison.batch_id
        elif self.batch_id != self.comparison.batch_id:
            raise ValueError(
                f"annotation of comparison {self.comparison_id} (batch "
                f"{self.comparison.batch_id}) cannot belong to batch {self.batch_id}"
            )
        super().save(*args, **kwargs)

    @property
    def rejected_slot(self) -> int:
        return 3 - self.preferred_slot

    def is_safe(self, slot: int) -> bool | None:
        return self.slot1_safe if slot == 1 else self.slot2_safe


class TrainingRun(models.Model):
    """A reward-model, SFT, rejection-sampling or PPO run and the exact data it used."""

    class Kind(models.TextChoices):
        REWARD_HELPFULNESS = "reward_helpfulness", "Helpfulness reward model"
        REWARD_SAFETY = "reward_safety", "Safety reward model"
        SFT = "sft", "Supervised fine-tuning"
        REJECTION_SAMPLING = "rejection_sampling", "Rejection sampling"
        PPO = "ppo", "PPO"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    kind = models.CharField(max_length=32, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    config = models.JSONField(default=dict, blank=True)
    batches = models.ManyToManyField(Batch, blank=True, related_name="training_runs")
    base_model = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    export_path = models.CharField(max_length=1000, blank=True)
    export_sha256 = models.CharField(max_length=64, blank=True)
    progress = models.FloatField(default=0.0)
    logs = models.TextField(blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    # Written with every batch of events its job sends while running: a running run whose
    # heartbeat stops lost its worker, and the relay sends it again (services.training).
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # How many records of its job's event log are mirrored here: a batch of events sent twice,
    # or out of order, is applied once and in order.
    events_mirrored = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(progress__gte=0.0) & Q(progress__lte=1.0), name="progress_in_unit_range"
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} run {self.pk}"


class OutboxMessage(models.Model):
    """A task for the workers, recorded in the same transaction as the work that needs it.

    A transactional outbox: the row commits with the comparisons (or the training run) it is
    about, is relayed to the broker after the commit, and is relayed again until the work is
    answered (``done_at``), so that a broker outage or a lost worker never strands work.
    """

    class Kind(models.TextChoices):
        GENERATION = "generation", "Generation"
        TRAINING = "training", "Training"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    payload = models.JSONField(help_text="The task's arguments: plain data, no model objects.")
    comparisons = models.ManyToManyField(
        Comparison,
        related_name="outbox_messages",
        blank=True,
        help_text="For generation: the comparisons whose responses it asks for.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True, help_text="Last handed to the broker.")
    # Sends, answered or not (not those refused by a broker that was down): past
    # PAIRWISE_OUTBOX_MAX_ATTEMPTS unanswered, the message is given up (services.outbox).
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    done_at = models.DateTimeField(
        null=True, blank=True, help_text="When the work it asked for was answered."
    )

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(
                fields=["kind", "sent_at"], condition=Q(done_at__isnull=True), name="outbox_pending"
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} message {self.pk}"


class ImportedFile(models.Model):
    """A file imported into a batch, known by the SHA-256 of its (uncompressed) content.

    Importing the same content into the same batch again is refused unless asked for, so that a
    file sent twice by mistake does not silently double the batch. Every import is recorded,
    deliberate repeats included, hence no unique constraint: the batch's row lock serialises the
    check and the write (``services.imports``).
    """

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="imported_files")
    sha256 = models.CharField(max_length=64, help_text="SHA-256 of the uncompressed content.")
    filename = models.CharField(max_length=1000)
    records = models.PositiveIntegerField()
    comparisons = models.PositiveIntegerField()
    imported_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["batch", "sha256"], name="imported_file_by_content")]

    def __str__(self) -> str:
        return f"{self.filename} into batch {self.batch_id}"
