"""Forms of the annotation pages: what a posted page means, before a service acts on it.

The services stay the authority on what is valid; a form parses the page's fields and reports
every problem at once, each on the field the annotator must fix.
"""

from __future__ import annotations

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm, UsernameField

from annotation_app.errors import InvalidInput
from annotation_app.models import Batch, ModelVersion
from annotation_app.services.annotations import DISPLAY_SIDES, MAX_RATIONALE_CHARS, Judgement
from annotation_app.services.dialogues import MAX_TURN_CHARS
from annotation_app.services.training.start import KINDS
from rlhf.hyperparameters import ADVANCED, ConfigError, shown_settings
from rlhf.preferences import Strength
from rlhf.reward.config import RewardTrainingConfig

MISSING_RATING = "choose which response is better, and by how much"
# A flag's reason is a note for the batch admins, not data: a few sentences.
MAX_FLAG_REASON_CHARS = 2000
# The longest texts the pages take (one source for the forms, the API's serializers and the
# pages' maxlength attributes, given to the templates under these names).
TEXT_LIMITS = {
    "max_turn_chars": MAX_TURN_CHARS,
    "max_rationale_chars": MAX_RATIONALE_CHARS,
    "max_flag_reason_chars": MAX_FLAG_REASON_CHARS,
}
# The longest user name there can be: a longer one names no one, and django-axes could not
# record the failed sign-in (a database error, where a form error is due). The API's token
# endpoint takes the same bound.
USERNAME_MAX_LENGTH = get_user_model()._meta.get_field(get_user_model().USERNAME_FIELD).max_length
SAFETY_CHOICES = [("safe", "Safe"), ("unsafe", "Unsafe")]
# Which field of the page a service's field name stands for.
PAGE_FIELD = {
    "preferred": "rating",
    "strength": "rating",
    "a_safe": "a_safety",
    "b_safe": "b_safety",
    "rationale": "rationale",
    "time_spent_ms": "time_spent_ms",
}


class JudgementForm(forms.Form):
    """The comparison page's judgement: a rating ("A:better"), safety labels, a rationale."""

    rating = forms.ChoiceField(
        choices=[
            (f"{side}:{s.value}", f"{side}:{s.value}") for side in DISPLAY_SIDES for s in Strength
        ],
        error_messages={"required": MISSING_RATING, "invalid_choice": MISSING_RATING},
    )
    a_safety = forms.ChoiceField(choices=SAFETY_CHOICES, required=False)
    b_safety = forms.ChoiceField(choices=SAFETY_CHOICES, required=False)
    rationale = forms.CharField(required=False, strip=False, max_length=MAX_RATIONALE_CHARS)
    time_spent_ms = forms.IntegerField(required=False)

    def __init__(self, data, *, batch: Batch):
        super().__init__(data)
        self.batch = batch

    def clean(self):
        cleaned = super().clean()
        try:
            self.judgement().validate(self.batch)
        except InvalidInput as error:
            self.add_service_error(error)
        return cleaned

    def judgement(self) -> Judgement:
        data = self.cleaned_data
        side, _, strength = (data.get("rating") or "").partition(":")
        safe = {"safe": True, "unsafe": False}
        return Judgement(
            preferred_side=side,
            strength=strength,
            a_safe=safe.get(data.get("a_safety") or ""),
            b_safe=safe.get(data.get("b_safety") or ""),
            rationale=data.get("rationale") or "",
            time_spent_ms=data.get("time_spent_ms"),
        )

    def add_service_error(self, error: InvalidInput) -> None:
        """Put each problem a service found on the page's field it concerns."""
        for problem in getattr(error, "problems", [error]):
            field = PAGE_FIELD.get(problem.field or "")
            if field in self.errors:
                continue  # already reported, in the page's own words
            self.add_error(field, str(problem))

    def error_messages_by_field(self) -> dict[str, list[str]]:
        """``{field or "__all__": [message, …]}``, plain strings (kept in the session)."""
        return {
            field: [str(message) for message in errors] for field, errors in self.errors.items()
        }


class CheckedForm(forms.Form):
    """A form whose first problem is raised as the services raise theirs (``InvalidInput``).

    Django's ``CharField`` refuses NUL characters, which PostgreSQL text cannot hold; the pages
    below parse their text through these forms so that such input is a 400 naming the field.
    """

    def checked(self) -> dict:
        if not self.is_valid():
            field, problems = next(iter(self.errors.items()))
            raise InvalidInput(f"{field.replace('_', ' ')}: {problems[0]}", field)
        return self.cleaned_data


class PromptForm(CheckedForm):
    """The write-prompt page (the service checks emptiness, length and the categories)."""

    prompt = forms.CharField(required=False, strip=False, max_length=MAX_TURN_CHARS)
    risk_category = forms.CharField(required=False, strip=False)
    attack_vector = forms.CharField(required=False, strip=False)


class NextTurnForm(CheckedForm):
    """The continue page's next user turn."""

    text = forms.CharField(required=False, strip=False, max_length=MAX_TURN_CHARS)


class FlagForm(CheckedForm):
    """The task page's flag; an empty reason is allowed (the service says so in its place)."""

    reason = forms.CharField(required=False, strip=False, max_length=MAX_FLAG_REASON_CHARS)


class TrainingForm(CheckedForm):
    """The training page: kind, batches, base model, and the settings the reward config shows on
    forms, one text field each, from their declarations (``rlhf.reward.config``): label, help,
    choices, basic or advanced. A blank setting is left to the library's default; the service
    checks the values (and that batches were chosen)."""

    kind = forms.ChoiceField(choices=[(kind, kind) for kind in KINDS])
    batches = forms.ModelMultipleChoiceField(
        queryset=Batch.objects.all(),
        required=False,
        error_messages={
            "invalid_choice": "no such batch: %(value)s",
            "invalid_pk_value": "not a valid choice",
        },
    )
    base_model = forms.ModelChoiceField(
        queryset=ModelVersion.objects.all(),
        required=False,
        error_messages={"invalid_choice": "no such model version"},
    )

    SETTINGS = shown_settings(RewardTrainingConfig)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for rule in self.SETTINGS:
            self.fields[rule.name] = forms.CharField(
                required=False, label=rule.label, help_text=rule.help
            )

    def config(self) -> dict:
        """The settings typed in, parsed by their declarations; a bad one raises InvalidInput
        naming it (``"Seed must be a whole number, not 'x'"``)."""
        values = {}
        for rule in self.SETTINGS:
            raw = (self.cleaned_data.get(rule.name) or "").strip()
            if not raw:
                continue
            try:
                values[rule.name] = rule.parse(raw)
            except ConfigError as error:
                raise InvalidInput(f"{rule.label} {error.message}", rule.name) from None
        return values

    def settings_shown(self) -> list[dict]:
        """Each setting for the template: its rule, basic or advanced, and its value (what was
        posted, or the library's default)."""
        defaults = RewardTrainingConfig()
        shown = []
        for rule in self.SETTINGS:
            if self.is_bound:
                value = self.data.get(rule.name, "")
            else:  # Python's repr (1e-05), never localised
                default = getattr(defaults, rule.name)
                value = "" if default is None else str(default)
            shown.append({"hp": rule, "advanced": rule.form == ADVANCED, "value": value})
        return shown


class SignInForm(AuthenticationForm):
    """The sign-in page's form: Django's, with the user name bounded as the user model bounds it
    (Django's only sets the ``maxlength`` attribute of the input)."""

    username = UsernameField(
        max_length=USERNAME_MAX_LENGTH, widget=forms.TextInput(attrs={"autofocus": True})
    )


class AdminSignInForm(SignInForm, AdminAuthenticationForm):
    """The admin's sign-in form (staff only), the user name bounded as on the sign-in page."""
