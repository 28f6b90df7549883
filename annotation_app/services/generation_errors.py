"""What a failed generation tells whom: staff the worker's error, annotators a neutral message.

A worker's error may name the model (``OSError: … /models/acme-secret-policy-v9``), and
annotators judge responses blind to the models that wrote them. The stored error is unchanged;
batch admins and ML staff read it in the admin too.
"""

from __future__ import annotations

from annotation_app.models import Assignment, Comparison
from annotation_app.roles import STAFF_ROLES, user_roles

NEUTRAL_GENERATION_ERROR = (
    "The responses could not be generated. Administrators see it in the list of failed "
    "comparisons; try another comparison."
)


def sees_generation_errors(user) -> bool:
    """Staff (batch admins, ML staff, superusers) see workers' errors; annotators do not."""
    return bool(user.is_superuser or user.is_staff or user_roles(user) & STAFF_ROLES)


def generation_error_for(assignment: Assignment) -> str:
    """The generation error as the assignment's annotator may see it ("" while none).

    An assignment is only ever shown to the annotator who holds it, so its holder is the viewer.
    """
    comparison = assignment.comparison
    if comparison.status != Comparison.Status.FAILED and not comparison.generation_error:
        return ""
    if sees_generation_errors(assignment.annotator):
        return comparison.generation_error or NEUTRAL_GENERATION_ERROR
    return NEUTRAL_GENERATION_ERROR


def mark_failed(comparison_ids: list[int], error: str) -> None:
    """Fail the comparisons whose responses are not in, with the error (staff see it)."""
    Comparison.objects.filter(pk__in=comparison_ids).exclude(
        status__in=[Comparison.Status.READY, Comparison.Status.COMPLETE]
    ).update(status=Comparison.Status.FAILED, generation_error=error)
