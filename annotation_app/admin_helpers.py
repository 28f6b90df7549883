"""Pieces of the Django admin that are more than configuration (used by ``admin.py``).

- :class:`SamplingPlanField`: a batch's sampling plan edited as a small form, one row per
  response (model version, temperature, top p, max new tokens), stored as the plan's JSON and
  checked by ``services.generation.validate_sampling_plan``, the one place that knows the rules.
  A cell shows what the plan stores, or else the default (greyed out, a placeholder): saving
  the form unchanged stores the plan unchanged.
- :class:`PresentChoicesFilter`: a choices filter listing only values some row has.
- :func:`annotator_users`: the users an annotation batch can be assigned to.
"""

from __future__ import annotations

import re

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.utils.html import format_html, format_html_join

from annotation_app.models import ModelVersion
from annotation_app.roles import Role
from annotation_app.services.generation import DEFAULT_SIDES, SIDE_KEYS

SIDES = ("Response 1", "Response 2")
# One column per setting of a side (generation's SIDE_KEYS), in the order the widget shows
# them: the model version (its default is no value: the current policy), then the settings
# with default values, as generation lists them.
SIDE_SETTINGS = [
    (key, key.replace("_", " ").capitalize())
    for key in [*sorted(SIDE_KEYS - set(DEFAULT_SIDES[0])), *DEFAULT_SIDES[0]]
]


def _setting_field(key: str) -> forms.Field:
    if key == "model_version":
        return forms.ModelChoiceField(
            queryset=ModelVersion.objects.filter(role=ModelVersion.Role.POLICY).order_by("name"),
            to_field_name="name",
            required=False,
            empty_label="Current policy",
        )
    if isinstance(DEFAULT_SIDES[0][key], int):
        return forms.IntegerField(required=False)
    return forms.FloatField(required=False)


def _side_fields() -> list[forms.Field]:
    return [_setting_field(key) for key, _ in SIDE_SETTINGS]


class SamplingPlanWidget(forms.MultiWidget):
    """A table: a row per side, a column per setting; an empty cell shows its default."""

    def __init__(self, fields: list[forms.Field]):
        widgets = []
        for index, field in enumerate(fields):
            side_index, setting_index = divmod(index, len(SIDE_SETTINGS))
            key, label = SIDE_SETTINGS[setting_index]
            widget = field.widget
            widget.attrs.update({"aria-label": f"{SIDES[side_index]}: {label.lower()}"})
            if isinstance(field, forms.FloatField | forms.IntegerField):
                widget.attrs.update(
                    {
                        "step": "any" if isinstance(field, forms.FloatField) else "1",
                        "placeholder": DEFAULT_SIDES[side_index][key],
                    }
                )
            widgets.append(widget)
        super().__init__(widgets)

    def decompress(self, value) -> list:
        """The stored plan as the eight values the table shows: only what the plan stores
        (None for a cell it leaves to the default, which the cell shows as a placeholder)."""
        sides = value.get("sides") if isinstance(value, dict) else None
        if not isinstance(sides, list) or len(sides) != 2:
            sides = [{}, {}]
        return [
            side.get(key) if isinstance(side, dict) else None
            for side in sides
            for key, _ in SIDE_SETTINGS
        ]

    def render(self, name, value, attrs=None, renderer=None):
        if not isinstance(value, list):
            value = self.decompress(value)
        base_id = (attrs or {}).get("id") or f"id_{name}"
        cells = [
            widget.render(f"{name}{suffix}", value[index], {"id": f"{base_id}{suffix}"}, renderer)
            for index, (widget, suffix) in enumerate(
                zip(self.widgets, self.widgets_names, strict=True)
            )
        ]
        width = len(SIDE_SETTINGS)
        rows = format_html_join(
            "",
            '<tr><th scope="row">{}</th>{}</tr>',
            (
                (
                    side,
                    format_html_join(
                        "", "<td>{}</td>", ((cell,) for cell in cells[i * width : (i + 1) * width])
                    ),
                )
                for i, side in enumerate(SIDES)
            ),
        )
        head = format_html_join(
            "", '<th scope="col">{}</th>', ((label,) for _, label in SIDE_SETTINGS)
        )
        return format_html(
            '<table class="sampling-plan" id="{}"><thead><tr><td></td>{}</tr></thead>'
            "<tbody>{}</tbody></table>",
            base_id,
            head,
            rows,
        )


class SamplingPlanField(forms.MultiValueField):
    """The two sides of a plan; an empty cell means the default (the current policy for the
    model version). Gives ``{"sides": [side, side]}`` with only the cells that were filled."""

    def __init__(self, **kwargs):
        fields = _side_fields() + _side_fields()
        kwargs.setdefault("required", False)
        super().__init__(
            fields=fields, widget=SamplingPlanWidget(fields), require_all_fields=False, **kwargs
        )

    def compress(self, data_list) -> dict:
        if not data_list or all(value in (None, "") for value in data_list):
            return {}
        width = len(SIDE_SETTINGS)
        sides = []
        for start in range(0, len(data_list), width):
            side = {}
            for (key, _), value in zip(
                SIDE_SETTINGS, data_list[start : start + width], strict=True
            ):
                if isinstance(value, ModelVersion):
                    value = value.name
                if value not in (None, ""):
                    side[key] = value
            sides.append(side)
        return {"sides": sides}


class PresentChoicesFilter(admin.SimpleListFilter):
    """Filter by a field with choices, offering only the values some row has (no entries for
    run kinds nobody started, say). Subclasses set ``parameter_name`` to the field's name."""

    def lookups(self, request, model_admin):
        present = set(
            model_admin.get_queryset(request)
            .order_by()
            .values_list(self.parameter_name, flat=True)
            .distinct()
        )
        field = model_admin.model._meta.get_field(self.parameter_name)
        return [(value, label) for value, label in field.flatchoices if value in present]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(**{self.parameter_name: self.value()})
        return queryset


def annotator_users() -> QuerySet:
    """Users in the annotator group: the only ones an assignment to a batch means anything for."""
    return (
        get_user_model()
        .objects.filter(groups__name=Role.ANNOTATOR.value, is_active=True)
        .order_by("username")
        .distinct()
    )


def plan_cell_name(field: str | None) -> str:
    """``sampling_plan.sides[1].top_p`` (a validation error's field) as the table names it:
    ``Response 2, top p``."""
    match = re.fullmatch(r"sampling_plan\.sides\[(\d)\](?:\.(\w+))?", field or "")
    if not match or int(match[1]) >= len(SIDES):
        return "Sampling plan"
    labels = dict(SIDE_SETTINGS)
    side = SIDES[int(match[1])]
    return f"{side}, {labels[match[2]].lower()}" if match[2] in labels else side
