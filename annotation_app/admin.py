"""Django admin for batch admins and ML staff: filters, search, progress and bulk actions."""

from __future__ import annotations

import io
import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.utils.html import format_html

from annotation_app.errors import InvalidInput, PairwiseError
from annotation_app.models import (
    Annotation,
    Assignment,
    Batch,
    Comparison,
    Conversation,
    ModelVersion,
    Response,
    TrainingRun,
    Turn,
)
from annotation_app.services.batches import activate_batch, close_batch
from annotation_app.services.generation import retry_failed, validate_sampling_plan
from annotation_app.services.imports import FORMATS, import_comparisons
from annotation_app.services.registry import inspect_model, promote

admin.site.site_header = "Pairwise administration"
admin.site.site_title = "Pairwise"
admin.site.index_title = "Batches, data and models"


class ImportForm(forms.Form):
    file = forms.FileField(help_text="JSONL, CSV, or either gzip-compressed.")
    format = forms.ChoiceField(
        choices=[("", "Detect from the first record")] + [(f, f) for f in FORMATS],
        required=False,
    )


class BatchForm(forms.ModelForm):
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
        try:
            validate_sampling_plan(plan)
        except InvalidInput as error:
            raise forms.ValidationError(f"{error.field}: {error}") from None
        return plan


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    form = BatchForm
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
                    io.BytesIO(upload.read()),
                    upload.name,
                    form.cleaned_data["format"] or None,
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


class ResponseInline(admin.StackedInline):
    model = Response
    extra = 0
    max_num = 2
    fields = [
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
    ]


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
class ComparisonAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "batch",
        "status",
        "annotation_count",
        "flag_count",
        "is_gold",
        "created_at",
    ]
    list_filter = ["status", "batch__kind", FlaggedFilter, "is_gold", "batch"]
    search_fields = ["conversation__turns__content", "responses__text"]
    list_select_related = ["batch"]
    readonly_fields = ["annotation_count", "flag_count", "flag_reasons", "generation_error"]
    inlines = [ResponseInline]
    actions = ["retry_generation"]

    @admin.action(
        description="Retry generation of the selected failed comparisons", permissions=["change"]
    )
    def retry_generation(self, request, queryset):
        requests = retry_failed(comparisons=queryset)
        self.message_user(request, f"Queued {requests} responses for generation.", messages.SUCCESS)

    @admin.display(description="Flag reasons")
    def flag_reasons(self, comparison):
        reasons = comparison.assignments.filter(status=Assignment.Status.FLAGGED)
        return "; ".join(reasons.values_list("flag_reason", flat=True)) or "—"


class TurnInline(admin.TabularInline):
    model = Turn
    extra = 0


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
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


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "status", "progress", "created_by", "created_at"]
    list_filter = ["kind", "status"]
    readonly_fields = ["logs", "metrics", "error", "export_path", "export_sha256"]
