"""The browser UI: server-rendered pages, each a thin wrapper around a service call."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.views.decorators.http import require_POST

from annotation_app import charts
from annotation_app.errors import Conflict, InvalidInput, NotFound
from annotation_app.forms import (
    MISSING_RATING,
    TEXT_LIMITS,
    FlagForm,
    JudgementForm,
    NextTurnForm,
    PromptForm,
    TrainingForm,
)
from annotation_app.models import (
    Assignment,
    Batch,
    Comparison,
    ModelVersion,
    Response,
    TrainingRun,
)
from annotation_app.roles import Role, user_roles
from annotation_app.selectors import annotator_queue, batch_progress
from annotation_app.services import assignment as assignment_service
from annotation_app.services import dialogues
from annotation_app.services.annotations import MISSING_SAFETY_LABEL, submit_annotation
from annotation_app.services.registry import current_version
from annotation_app.services.training import report as run_report
from annotation_app.services.training import start
from rlhf.preferences import STRENGTH_LABELS, TABLE8_SHORT_LABELS, Strength

annotator_required = permission_required("annotation_app.annotate", raise_exception=True)
# Training pages are ML staff's: batch admins can read runs in the admin, not start them.
trainer_required = permission_required("annotation_app.add_trainingrun", raise_exception=True)

# The single rating control: A's strengths from strongest to weakest, then B's from weakest
# to strongest, so the scale reads left (A much better) to right (B much better).
RATING_SCALE = [("A", strength) for strength in Strength] + [
    ("B", strength) for strength in reversed(Strength)
]


def _rating_options() -> list[dict]:
    return [
        {
            "key": str(number),
            "value": f"{side}:{strength.value}",
            "side": side,
            "label": STRENGTH_LABELS[strength],
        }
        for number, (side, strength) in enumerate(RATING_SCALE, start=1)
    ]


@login_required
def home(request: HttpRequest) -> HttpResponse:
    roles = user_roles(request.user)
    context = {
        "roles": {role.value for role in roles},
        "queue": annotator_queue(request.user) if Role.ANNOTATOR in roles else [],
        "batches": Batch.objects.order_by("-created_at")[:50]
        if request.user.has_perm("annotation_app.view_batch")
        else [],
    }
    return render(request, "annotation_app/home.html", context)


def _next_url(batch_id: int | None) -> str:
    url = reverse("annotate")
    return f"{url}?batch={batch_id}" if batch_id else url


@login_required
@annotator_required
def annotate(request: HttpRequest) -> HttpResponse:
    """Lease the next comparison and show it; with ``?batch=`` only from that batch."""
    batch = None
    if request.GET.get("batch"):
        # A batch not open to the annotator is as unknown to them as a missing one.
        if not request.GET["batch"].isdecimal():  # nor can "abc" name one
            raise Http404("No such batch.")
        batch = get_object_or_404(
            assignment_service.batches_open_to(request.user), pk=request.GET["batch"]
        )
    assignment = assignment_service.next_assignment(request.user, batch=batch)
    if assignment is None:
        where = f" in {batch.name}" if batch else ""
        messages.success(request, f"Nothing left to annotate{where}. Thank you!")
        return redirect("home")
    return redirect("task", assignment_id=assignment.pk)


def _context_cut_notice(response_a: Response, response_b: Response) -> str:
    """What the annotator is told when a model did not see the beginning of the dialogue.

    One notice for both responses, with the larger count: a count per response would hint
    that the two come from different models or settings (context windows), which annotators
    are not to know.
    """
    dropped = [response_a.prompt_tokens_dropped, response_b.prompt_tokens_dropped]
    most = max(dropped)
    if not most:
        return ""
    cut = f"{most} token{pluralize(most, ' was,s were')} cut from its beginning"
    if min(dropped) != most:
        cut = f"up to {cut}"
    return f"The model saw only the last part of this conversation: {cut}."


def _pending_form_key(assignment_id: int) -> str:
    return f"task-{assignment_id}-form"


def _render_task(request, assignment: Assignment) -> HttpResponse:
    comparison = assignment.comparison
    responses = {response.slot: response for response in comparison.responses.all()}
    # A refused submit comes back here (the URL stays the task's), with what was chosen.
    pending = request.session.get(_pending_form_key(assignment.pk)) or {}
    errors = pending.get("errors", {})
    context = {
        "assignment": assignment,
        "batch": comparison.batch,
        "conversation": comparison.context_messages(),
        "response_a": responses[assignment.left_slot],
        "response_b": responses[assignment.right_slot],
        "context_cut_notice": _context_cut_notice(
            responses[assignment.left_slot], responses[assignment.right_slot]
        ),
        "rating_options": _rating_options(),
        "idempotency_key": pending.get("idempotency_key") or uuid.uuid4(),
        "form": pending.get("data", {}),
        "errors": errors,
        "error_list": [message for messages_ in errors.values() for message in messages_],
        "missing_rating": MISSING_RATING,
        "missing_label": {side: MISSING_SAFETY_LABEL.format(side=side) for side in "AB"},
        "batch_done": comparison.batch.comparisons.filter(
            annotations__annotator=request.user
        ).count(),
        **TEXT_LIMITS,
    }
    return render(request, "annotation_app/task.html", context)


def _own_assignment(request, assignment_id: int) -> Assignment:
    try:
        return assignment_service.get_assignment_for(request.user, assignment_id)
    except NotFound:
        raise Http404("No such task.") from None


@login_required
@annotator_required
def task(request: HttpRequest, assignment_id: int) -> HttpResponse:
    assignment = _own_assignment(request, assignment_id)
    if assignment.status != Assignment.Status.LEASED:
        request.session.pop(_pending_form_key(assignment.pk), None)
        if assignment.status == Assignment.Status.EXPIRED:
            messages.warning(
                request,
                "Your time on that comparison ran out and it went to another annotator; "
                "here is the next one.",
            )
        else:
            messages.info(request, "That comparison is already done; here is the next one.")
        return redirect(_next_url(assignment.comparison.batch_id))
    if assignment.comparison.status in (Comparison.Status.WAITING, Comparison.Status.FAILED):
        # An annotator-written prompt whose responses are still being generated.
        return render(
            request,
            "annotation_app/generating.html",
            {
                "assignment": assignment,
                "batch": assignment.comparison.batch,
                "conversation": assignment.comparison.context_messages(),
            },
        )
    return _render_task(request, assignment)


@login_required
@annotator_required
@require_POST
def submit(request: HttpRequest, assignment_id: int) -> HttpResponse:
    assignment = _own_assignment(request, assignment_id)
    try:
        key = uuid.UUID(request.POST.get("idempotency_key", ""))
    except ValueError:
        key = uuid.uuid4()
    form = JudgementForm(request.POST, batch=assignment.comparison.batch)
    try:
        if not form.is_valid():
            return _back_to_task(request, assignment, form, key)
        submit_annotation(request.user, assignment.pk, form.judgement(), key)
    except InvalidInput as error:
        form.add_service_error(error)
        return _back_to_task(request, assignment, form, key)
    except Conflict as error:
        request.session.pop(_pending_form_key(assignment.pk), None)
        messages.warning(request, str(error))
        return redirect(_next_url(assignment.comparison.batch_id))
    request.session.pop(_pending_form_key(assignment.pk), None)
    messages.success(request, "Saved.")
    assignment.refresh_from_db()
    if dialogues.can_continue(assignment):
        return redirect("continue", assignment_id=assignment.pk)
    return redirect(_next_url(assignment.comparison.batch_id))


def _back_to_task(request, assignment: Assignment, form: JudgementForm, key) -> HttpResponse:
    """Show the task again at its own URL with every problem and what was chosen; a reload
    shows the same, and the retry reuses the submission key."""
    request.session[_pending_form_key(assignment.pk)] = {
        "data": {name: request.POST.get(name, "") for name in JudgementForm.base_fields},
        "errors": form.error_messages_by_field(),
        "idempotency_key": str(key),
    }
    return redirect("task", assignment_id=assignment.pk)


@login_required
@annotator_required
@require_POST
def release(request: HttpRequest, assignment_id: int) -> HttpResponse:
    """Skip the comparison, or flag it when a reason is posted."""
    assignment = _own_assignment(request, assignment_id)
    flagging = request.POST.get("action") == "flag"
    try:
        assignment_service.release_assignment(
            request.user,
            assignment.pk,
            flag_reason=FlagForm(request.POST).checked()["reason"] if flagging else None,
        )
    except InvalidInput as invalid:  # a reason that cannot be stored: nothing changed, say why
        messages.error(request, f"Not flagged: {invalid}")
        response = _render_task(request, assignment)
        response.status_code = 400
        return response
    except Conflict as error:
        messages.warning(request, str(error))
    else:
        request.session.pop(_pending_form_key(assignment.pk), None)
        messages.info(request, "Flagged for review." if flagging else "Skipped.")
    return redirect(_next_url(assignment.comparison.batch_id))


@login_required
@permission_required("annotation_app.view_batch", raise_exception=True)
def progress(request: HttpRequest, batch_id: int) -> HttpResponse:
    batch = get_object_or_404(Batch, pk=batch_id)
    context = {
        "batch": batch,
        "progress": batch_progress(batch),
        "final": batch.status == Batch.Status.CLOSED,  # nothing changes: the page stops polling
    }
    return render(request, "annotation_app/progress.html", context)


@login_required
@annotator_required
def write_prompt(request: HttpRequest, batch_id: int) -> HttpResponse:
    """Write a prompt; two responses are generated for it while the next page waits."""
    batch = get_object_or_404(assignment_service.batches_open_to(request.user), pk=batch_id)
    if not batch.allow_annotator_prompts:  # said up front, before anything is written
        return render(
            request, "annotation_app/write_prompt_refused.html", {"batch": batch}, status=409
        )
    error = None
    if request.method == "POST":
        try:
            data = PromptForm(request.POST).checked()
            assignment = dialogues.write_prompt(
                request.user,
                batch,
                data["prompt"],
                risk_category=data["risk_category"],
                attack_vector=data["attack_vector"],
            )
        except InvalidInput as invalid:
            error = invalid
        except (Conflict, NotFound) as refused:
            messages.warning(request, str(refused))
            return redirect("home")
        else:
            return redirect("task", assignment_id=assignment.pk)
    return render(
        request,
        "annotation_app/write_prompt.html",
        {
            "batch": batch,
            "error": error,
            "form": request.POST,
            "risk_categories": dialogues.RISK_CATEGORIES,
            "attack_vectors": dialogues.ATTACK_VECTORS,
            **TEXT_LIMITS,
        },
        status=400 if error else 200,
    )


@login_required
@annotator_required
def continue_dialogue(request: HttpRequest, assignment_id: int) -> HttpResponse:
    """After a comparison of their own dialogue: write the next user turn, or finish."""
    assignment = _own_assignment(request, assignment_id)
    if not dialogues.can_continue(assignment):
        return redirect(_next_url(assignment.comparison.batch_id))
    error = None
    if request.method == "POST":
        try:
            follow_up = dialogues.continue_dialogue(
                request.user, assignment.pk, NextTurnForm(request.POST).checked()["text"]
            )
        except InvalidInput as invalid:
            error = invalid
        except Conflict as refused:
            messages.warning(request, str(refused))
            return redirect(_next_url(assignment.comparison.batch_id))
        else:
            return redirect("task", assignment_id=follow_up.pk)
    comparison = assignment.comparison
    chosen = comparison.responses.get(slot=assignment.annotation.preferred_slot)
    return render(
        request,
        "annotation_app/continue.html",
        {
            "assignment": assignment,
            "batch": comparison.batch,
            "conversation": comparison.context_messages(),
            "chosen": chosen,
            "turns_left": comparison.batch.max_turns - dialogues.user_turns(comparison),
            "error": error,
            "form": request.POST,
            **TEXT_LIMITS,
        },
        status=400 if error else 200,
    )


@login_required
@trainer_required
def training_page(request: HttpRequest) -> HttpResponse:
    """Start a reward-model run (kind, batches, base model, hyperparameters); list the runs."""
    error = None
    form = TrainingForm(request.POST if request.method == "POST" else None)
    if request.method == "POST":
        try:
            choices = form.checked()
            run = start.start_reward_training(
                request.user,
                choices["kind"],
                choices["batches"],
                base_model=choices["base_model"],
                config=form.config(),
            )
        except InvalidInput as invalid:
            error = invalid
        else:
            messages.success(request, f"Training run {run.pk} is queued.")
            return redirect("training-run", run_id=run.pk)
    posted = request.POST if error else {}
    policy = current_version(ModelVersion.Role.POLICY)
    context = {
        "error": error,
        "form": posted,
        "kinds": start.KINDS,
        "kind": posted.get("kind", "helpfulness"),
        "batches": start.batches_for_training(),
        "selected_batches": set(posted.getlist("batches")) if posted else set(),
        "base_models": start.base_model_choices(),
        "base_model": posted.get("base_model") if posted else str(policy.pk) if policy else "",
        "hyperparameters": form.settings_shown(),
        "runs": TrainingRun.objects.filter(kind__in=start.RUN_KIND.values())
        .defer("logs", "metrics")
        .select_related("base_model", "created_by")
        .prefetch_related("batches")[:50],
    }
    return render(request, "annotation_app/training.html", context, status=400 if error else 200)


def _run_charts(report: dict) -> dict:
    history = report["history"]
    loss = charts.line_chart(
        [(row["step"], row["loss"]) for row in history if row.get("loss") is not None],
        title="Training loss",
        x_label="step",
        y_label="loss",
    )
    rows = report["rows"]
    buckets = ""
    if rows:
        buckets = charts.bar_chart(
            [
                # Bar labels must fit under five bars: the table has the full names.
                (TABLE8_SHORT_LABELS[key], cell["accuracy"], f"n={cell['pairs']}")
                for key, cell in rows[0]["cells"].items()
                if cell
            ],
            title=f"Accuracy by rating: {rows[0]['label']}",
            y_label="accuracy",
        )
    return {"loss": loss, "buckets": buckets}


@login_required
@trainer_required
def training_run(request: HttpRequest, run_id: int) -> HttpResponse:
    """A run: live status and logs, then its metrics (Table 8 layout), plots and promotion."""
    run = get_object_or_404(
        TrainingRun.objects.select_related("base_model", "created_by"), pk=run_id
    )
    report = run_report.metrics_report(run)
    context = {
        "run": run,
        "batches": run.batches.order_by("created_at", "pk"),
        "outputs": run.outputs.order_by("-created_at"),
        "report": report,
        "charts": _run_charts(report),
        "finished": run.status in (TrainingRun.Status.SUCCEEDED, TrainingRun.Status.FAILED),
        "log_tail": run_report.log_tail(run),
    }
    return render(request, "annotation_app/training_run.html", context)


@login_required
@permission_required("annotation_app.change_modelversion", raise_exception=True)
@require_POST
def promote_training_output(request: HttpRequest, run_id: int) -> HttpResponse:
    """Make the run's model the current one of its role."""
    run = get_object_or_404(TrainingRun, pk=run_id)
    try:
        version = start.promote_run_output(run)
    except Conflict as refused:
        messages.warning(request, str(refused))
    else:
        messages.success(
            request, f"{version.name} is now the current {version.get_role_display().lower()}."
        )
    return redirect("training-run", run_id=run.pk)
