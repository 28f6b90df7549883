"""Django admin for batch admins and ML staff: filters, search, progress and bulk actions."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Count, OuterRef, Q, Subquery
from django.db.models.fields.json import KT
from django.db.models.functions import Substr
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.text import Truncator

from annotation_app.admin_helpers import (
    PresentChoicesFilter,
    SamplingPlanField,
    annotator_users,
    plan_cell_name,
)
from annotation_app.errors import InvalidInput, PairwiseError
from annotation_app.forms import AdminSignInForm
from annotation_app.models import (
    Annotation,
    Assignment,
    Batch,
    Comparison,
    Conversation,
    ImportedFile,
    JudgedDataReadOnly,
    ModelVersion,
    OutboxMessage,
    Response,
    TrainingRun,
    Turn,
)
from annotation_app.services.batches import (
    activate_batch,
    check_batch_changes,
    close_batch,
    update_batch,
)
from annotation_app.services.generation import retry_unfinished_generation, validate_sampling_plan
from annotation_app.services.imports import FORMATS, import_comparisons
from annotation_app.services.outbox import send_again
from annotation_app.services.registry import inspect_model, promote

admin.site.site_header = "Pairwise administration"
admin.site.site_title = "Pairwise"
admin.site.index_title = "Batches, data and models"
# The app list is one click away (Home): its sidebar would take a quarter of a laptop screen
# from the lists.
admin.site.enable_nav_sidebar = False
admin.site.login_form = AdminSignInForm  # a user name too long for any user is a form error

PROMPT_PREVIEW_CHARS = 80  # the comparisons list shows the start of each prompt


def is_judged(obj) -> bool:
    """Whether annotators have judged ``obj`` (a batch, conversation, comparison, …)."""
    if obj is None or obj.pk is None:
        return False
    model = type(obj)
    return model.judged(model._base_manager.filter(pk=obj.pk)).exists()


class JudgedReadOnlyAdmin:
    """Judged rows are read-only here as in the models (``JudgedContent``): their judged fields
    are shown, not edited, they cannot be deleted, and a change the models refuse (sent from a
    page older than the first annotation) is answered with a message, never a server error."""

    # Off where a form error names the field instead (the batch's kind).
    judged_fields_read_only = True

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if self.judged_fields_read_only and is_judged(obj):
            fields += [name for name in self.model.JUDGED_FIELDS if name not in fields]
        return fields

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and not is_judged(obj)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except PairwiseError as error:  # the transaction was rolled back: nothing was saved
            self.message_user(request, str(error), messages.ERROR)
            return redirect(request.get_full_path())

    def delete_view(self, request, object_id, extra_context=None):
        obj = self.get_object(request, unquote(object_id))
        if obj is not None:
            try:
                self.model.refuse_if_judged(
                    self.model._base_manager.filter(pk=obj.pk), "it cannot be deleted"
                )
            except JudgedDataReadOnly as error:
                self.message_user(request, str(error), messages.ERROR)
                opts = self.model._meta
                return redirect(f"admin:{opts.app_label}_{opts.model_name}_change", obj.pk)
        return super().delete_view(request, object_id, extra_context)


class JudgedReadOnlyInline:
    """The responses (turns) of a judged comparison (conversation) are shown, not edited."""

    def has_add_permission(self, request, obj):
        return super().has_add_permission(request, obj) and not is_judged(obj)

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and not is_judged(obj)

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and not is_judged(obj)


class ImportForm(forms.Form):
    file = forms.FileField(help_text="JSONL, CSV, or either gzip-compressed.")
    format = forms.ChoiceField(
        choices=[("", "Detect from the first record")] + [(f, f) for f in FORMATS],
        required=False,
    )
    allow_duplicate = forms.BooleanField(
        label="Import again",
        required=False,
        help_text="Import even if the same content was imported into this batch before "
        "(otherwise refused).",
    )


class BatchForm(forms.ModelForm):
    sampling_plan = SamplingPlanField(
        label="Sampling plan",
        help_text="How the two responses of each comparison are generated. An empty cell "
        "takes the default it shows in grey (the model version's: the current policy).",
    )

    class Meta:
        model = Batch
        fields = [
            "name",
            "kind",
            "guidelines",
            "overlap",
            "sampling_plan",
            "lease_minutes",
            "allow_annotator_prompts",
            "max_turns",
            "assigned_annotators",
            "assigned_groups",
            "deadline",
        ]

    def clean_sampling_plan(self):
        plan = self.cleaned_data["sampling_plan"]
        if self.instance.pk is not None and "sampling_plan" not in self.changed_data:
            plan = self.instance.sampling_plan  # kept as stored, not as the table spells it
        try:
            validate_sampling_plan(plan)
        except InvalidInput as error:
            raise forms.ValidationError(f"{plan_cell_name(error.field)}: {error}") from None
        return plan

    def clean(self):
        cleaned = super().clean()
        if self.instance.pk is not None:  # the instance still holds the stored values here
            changes = {name: cleaned[name] for name in ("kind", "overlap") if name in cleaned}
            try:
                check_batch_changes(self.instance, changes)
            except InvalidInput as error:
                self.add_error(error.field if error.field in self.fields else None, str(error))
        return cleaned


@admin.register(Batch)
class BatchAdmin(JudgedReadOnlyAdmin, admin.ModelAdmin):
    form = BatchForm
    judged_fields_read_only = False  # BatchForm.clean names a changed kind
    list_display = [
        "name",
        "kind",
        "status",
        "overlap",
        "comparison_total",
        "progress_bar",
        "deadline",
        "created_at",
    ]
    list_filter = ["kind", "status"]
    search_fields = ["name", "guidelines"]
    filter_horizontal = ["assigned_annotators", "assigned_groups"]
    readonly_fields = ["status", "created_at", "activated_at", "closed_at", "created_by"]
    actions = ["activate_selected", "close_selected"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                comparison_total=Count("comparisons", distinct=True),
                annotation_total=Count("comparisons__annotations", distinct=True),
            )
        )

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if db_field.name == "assigned_annotators":  # only annotators can work on a batch
            kwargs["queryset"] = annotator_users()
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    @admin.display(description="Comparisons", ordering="comparison_total")
    def comparison_total(self, batch):
        return batch.comparison_total

    @admin.display(description="Annotations")
    def progress_bar(self, batch):
        wanted = batch.comparison_total * batch.overlap
        percent = round(100 * batch.annotation_total / wanted) if wanted else 0
        return format_html(
            '<a href="{}">{} / {} ({}%)</a>',
            reverse("batch-progress", args=[batch.pk]),
            batch.annotation_total,
            wanted,
            percent,
        )

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
            super().save_model(request, obj, form, change)
            return
        # Through the service, as the API: what the form changed (its many-to-many fields are
        # saved with the form, after this), and a new overlap recomputes the comparisons'
        # statuses. The service checks again under its lock: a lease taken since the form was
        # checked can make a lower overlap invalid after all. Its InvalidInput reaches
        # changeform_view (JudgedReadOnlyAdmin), which rolls the whole save back and says why.
        many_to_many = {field.name for field in Batch._meta.many_to_many}
        changes = {
            name: form.cleaned_data[name] for name in form.changed_data if name not in many_to_many
        }
        update_batch(obj, changes)

    def _run_on_selected(self, request, queryset, operation, verb):
        for batch in queryset:
            try:
                operation(batch)
            except PairwiseError as error:
                self.message_user(request, f"{batch.name}: {error}", messages.WARNING)
            else:
                self.message_user(request, f"{batch.name}: {verb}.", messages.SUCCESS)

    @admin.action(description="Activate selected batches", permissions=["manage"])
    def activate_selected(self, request, queryset):
        self._run_on_selected(request, queryset, activate_batch, "activated")

    @admin.action(description="Close selected batches", permissions=["manage"])
    def close_selected(self, request, queryset):
        self._run_on_selected(request, queryset, close_batch, "closed")

    def has_manage_permission(self, request):
        return request.user.has_perm("annotation_app.manage_batches")

    def get_urls(self):
        return [
            path(
                "<int:batch_id>/import/",
                self.admin_site.admin_view(self.import_view),
                name="annotation_app_batch_import",
            ),
            *super().get_urls(),
        ]

    def import_view(self, request, batch_id: int):
        """Upload a file into a batch; errors list file, line and field, and nothing is kept."""
        if not self.has_manage_permission(request):
            raise PermissionDenied("You may not import into batches.")
        batch = get_object_or_404(Batch, pk=batch_id)
        form = ImportForm(request.POST or None, request.FILES or None)
        errors: list[str] = []
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                report = import_comparisons(
                    batch,
                    upload.file,  # streamed: the import's size limits apply as it is read
                    upload.name,
                    form.cleaned_data["format"] or None,
                    imported_by=request.user,
                    allow_duplicate=form.cleaned_data["allow_duplicate"],
                )
            except PairwiseError as error:
                errors = str(error).splitlines()
            else:
                self.message_user(
                    request,
                    f"Imported {report.comparisons} comparisons ({report.format}) "
                    f"from {upload.name}.",
                    messages.SUCCESS,
                )
                return redirect("admin:annotation_app_batch_change", batch.pk)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "batch": batch,
            "form": form,
            "errors": errors,
            "title": f"Import into {batch.name}",
        }
        return render(request, "admin/annotation_app/batch/import.html", context)


class ResponseInline(JudgedReadOnlyInline, admin.StackedInline):
    model = Response
    extra = 0
    max_num = 2
    # Everything judged about a response, its comparison aside (the page it is shown on).
    fields = [name for name in Response.JUDGED_FIELDS if name != "comparison"]


class AnnotationInline(admin.TabularInline):
    """The judgements of a comparison, read-only (annotations are evidence)."""

    model = Annotation
    extra = 0
    can_delete = False
    show_change_link = True
    fields = [
        "annotator",
        "preferred_slot",
        "strength",
        "slot1_safe",
        "slot2_safe",
        "rationale",
        "time_spent_ms",
        "created_at",
    ]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class FlaggedFilter(admin.SimpleListFilter):
    title = "flagged"
    parameter_name = "flagged"

    def lookups(self, request, model_admin):
        return [("yes", "Flagged"), ("no", "Not flagged")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(flag_count__gt=0)
        if self.value() == "no":
            return queryset.filter(flag_count=0)
        return queryset


@admin.register(Comparison)
class ComparisonAdmin(JudgedReadOnlyAdmin, admin.ModelAdmin):
    list_display = [
        "id",
        "prompt",
        "batch",
        "status",
        "annotations",
        "preference",
        "flags",
        "is_gold",
    ]
    list_filter = ["status", "batch__kind", FlaggedFilter, "is_gold", "batch"]
    search_fields = ["conversation__turns__content", "responses__text"]
    list_select_related = ["batch"]
    readonly_fields = ["annotation_count", "flag_count", "flag_reasons", "generation_error"]
    inlines = [ResponseInline, AnnotationInline]
    actions = ["retry_generation"]

    def get_queryset(self, request):
        first_user_turn = Turn.objects.filter(
            conversation=OuterRef("conversation"), role=Turn.Role.USER
        ).order_by("index")
        return (
            super()
            .get_queryset(request)
            .annotate(
                prompt_start=Substr(Subquery(first_user_turn.values("content")[:1]), 1, 200),
                preferring_1=Count("annotations", filter=Q(annotations__preferred_slot=1)),
                preferring_2=Count("annotations", filter=Q(annotations__preferred_slot=2)),
            )
        )

    @admin.display(description="Prompt")
    def prompt(self, comparison):
        text = " ".join((comparison.prompt_start or "").split())
        return format_html(
            '<span title="{}">{}</span>', text, Truncator(text).chars(PROMPT_PREVIEW_CHARS)
        )

    @admin.display(description="Annotations", ordering="annotation_count")
    def annotations(self, comparison):
        return f"{comparison.annotation_count} / {comparison.batch.overlap}"

    @admin.display(description="Preferred (agreement)")
    def preference(self, comparison):
        """The response most annotators preferred, and how many of them did."""
        votes = {1: comparison.preferring_1, 2: comparison.preferring_2}
        total = votes[1] + votes[2]
        if not total:
            return "—"
        if votes[1] == votes[2]:
            return f"split {votes[1]}–{votes[2]}"
        slot = 1 if votes[1] > votes[2] else 2
        return f"response {slot} ({votes[slot]} of {total})"

    @admin.display(description="Flags", ordering="flag_count")
    def flags(self, comparison):
        return comparison.flag_count or "—"

    @admin.action(
        description="Retry generation of the selected failed or waiting comparisons",
        permissions=["change"],
    )
    def retry_generation(self, request, queryset):
        requests = retry_unfinished_generation(comparisons=queryset)
        self.message_user(request, f"Queued {requests} responses for generation.", messages.SUCCESS)

    @admin.display(description="Flag reasons")
    def flag_reasons(self, comparison):
        reasons = comparison.assignments.filter(status=Assignment.Status.FLAGGED)
        return "; ".join(reasons.values_list("flag_reason", flat=True)) or "—"


class TurnInline(JudgedReadOnlyInline, admin.TabularInline):
    model = Turn
    extra = 0


@admin.register(Conversation)
class ConversationAdmin(JudgedReadOnlyAdmin, admin.ModelAdmin):
    list_display = ["id", "batch", "risk_category", "attack_vector", "source", "created_at"]
    list_filter = ["batch__kind", "risk_category", "attack_vector"]
    search_fields = ["turns__content", "source"]
    inlines = [TurnInline]


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ["id", "comparison", "annotator", "status", "leased_at", "expires_at"]
    list_filter = ["status", "comparison__batch"]
    search_fields = ["annotator__username"]
    list_select_related = ["annotator", "comparison"]
    raw_id_fields = ["comparison", "annotator"]


@admin.register(Annotation)
class AnnotationAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "comparison",
        "annotator",
        "preferred_slot",
        "strength",
        "safety_bin",
        "time_spent_ms",
        "created_at",
    ]
    list_filter = [
        "strength",
        "safety_bin",
        "is_gold_check",
        "comparison__batch__kind",
        "comparison__batch",
    ]
    search_fields = ["annotator__username", "rationale"]
    list_select_related = ["annotator", "comparison"]
    raw_id_fields = ["comparison", "annotator", "assignment"]

    def has_change_permission(self, request, obj=None):
        return False  # annotations are evidence: never edited after the fact


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["name", "role", "is_current", "parent", "parameters", "created_at"]
    list_filter = ["role", "is_current"]
    search_fields = ["name", "path"]
    readonly_fields = ["is_current", "summary"]
    actions = ["promote_selected"]

    @admin.display(description="Parameters")
    def parameters(self, version):
        count = inspect_model(version)["parameter_count"]
        return f"{count:,}" if count is not None else "—"

    @admin.display(description="Config, parameters and lineage")
    def summary(self, version):
        if version.pk is None:
            return "—"
        return format_html("<pre>{}</pre>", json.dumps(inspect_model(version), indent=2))

    @admin.action(
        description="Make the selected version current for its role", permissions=["change"]
    )
    def promote_selected(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version to promote.", messages.WARNING)
            return
        version = promote(queryset.get())
        self.message_user(
            request, f"{version.name} is now the current {version.role}.", messages.SUCCESS
        )


class RunKindFilter(PresentChoicesFilter):
    title = "kind"
    parameter_name = "kind"


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    """Runs are records of what trained which model: read-only here. They are started, watched
    and promoted on the training pages, where the admin's "add" leads."""

    list_display = ["id", "kind", "status", "percent_done", "pairs", "created_by", "created_at"]
    list_filter = [RunKindFilter, "status"]
    list_select_related = ["created_by"]
    fields = [
        "run_page",
        "kind",
        "status",
        "percent_done",
        "pairs",
        "batches",
        "base_model",
        "config",
        "export_path",
        "export_sha256",
        "error",
        "logs",
        "created_by",
        "created_at",
        "started_at",
        "finished_at",
    ]
    readonly_fields = fields

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .defer("logs", "metrics")
            .annotate(train_pairs=KT("metrics__train_pairs"), eval_pairs=KT("metrics__eval_pairs"))
        )

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied("You may not start training runs.")
        return redirect("training")

    @admin.display(description="Page")
    def run_page(self, run):
        return format_html(
            '<a href="{}">Run {} on the training page</a>',
            reverse("training-run", args=[run.pk]),
            run.pk,
        )

    @admin.display(description="Progress", ordering="progress")
    def percent_done(self, run):
        return f"{round(100 * run.progress)} %"

    @admin.display(description="Pairs (trained on / held out)")
    def pairs(self, run):
        if run.train_pairs is None:
            return "—"
        return f"{run.train_pairs} / {run.eval_pairs}"


class ReadOnlyRecordAdmin(admin.ModelAdmin):
    """Records the platform writes for itself: looked at here, never written."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class PendingFilter(admin.SimpleListFilter):
    title = "answered"
    parameter_name = "answered"

    def lookups(self, request, model_admin):
        return [("no", "Not yet"), ("yes", "Answered")]

    def queryset(self, request, queryset):
        if self.value() in ("no", "yes"):
            return queryset.filter(done_at__isnull=self.value() == "no")
        return queryset


@admin.register(OutboxMessage)
class OutboxMessageAdmin(ReadOnlyRecordAdmin):
    """Work sent to the workers (services/outbox.py): what is waiting, sent, or failed to send."""

    list_display = ["id", "kind", "created_at", "sent_at", "attempts", "done_at", "error_start"]
    list_filter = ["kind", PendingFilter]
    fields = ["kind", "created_at", "sent_at", "attempts", "done_at", "last_error", "payload"]
    readonly_fields = fields
    actions = ["send_selected_again"]

    @admin.display(description="Last error")
    def error_start(self, message):
        return Truncator(message.last_error).chars(80) or "—"

    @admin.action(
        description="Send the selected unanswered messages again now", permissions=["resend"]
    )
    def send_selected_again(self, request, queryset):
        count = send_again(queryset)
        self.message_user(request, f"{count} message(s) will be sent again.", messages.SUCCESS)

    def has_resend_permission(self, request):
        return request.user.has_perm("annotation_app.manage_batches")


@admin.register(ImportedFile)
class ImportedFileAdmin(ReadOnlyRecordAdmin):
    """Every file imported into a batch, by content hash: what a refused re-import points to."""

    list_display = ["filename", "batch", "records", "comparisons", "imported_by", "created_at"]
    list_filter = ["batch"]
    list_select_related = ["batch", "imported_by"]
    search_fields = ["filename", "sha256"]
