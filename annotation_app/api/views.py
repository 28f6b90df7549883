"""REST API, version 1. Thin views: each one checks input, calls a service, renders a result."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import F
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import generics, mixins, status, viewsets
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.decorators import action
from rest_framework.exceptions import Throttled, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import BasePermission, DjangoModelPermissions
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation_app.api import serializers as s
from annotation_app.api import throttles
from annotation_app.api.fields import JSONParser
from annotation_app.models import Annotation, Batch, ModelVersion, TrainingRun
from annotation_app.selectors import batch_progress
from annotation_app.services import assignment as assignment_service
from annotation_app.services import dialogues, registry
from annotation_app.services.annotations import Judgement, submit_annotation
from annotation_app.services.batches import (
    activate_batch,
    close_batch,
    delete_batch,
    update_batch,
)
from annotation_app.services.exports import (
    SKIPPED_COUNT_HEADER,
    SKIPPED_HEADER,
    PreferenceExport,
    skipped_headers,
)
from annotation_app.services.generation import retry_unfinished_generation
from annotation_app.services.imports import import_comparisons
from annotation_app.services.training import report, start
from annotation_app.templatetags.pairwise_text import minutes


class HasPermission(BasePermission):
    """Allows users holding one named permission (``HasPermission.of("app.codename")``)."""

    permission: str = ""

    @classmethod
    def of(cls, permission: str) -> type[HasPermission]:
        return type(f"Has_{permission.replace('.', '_')}", (cls,), {"permission": permission})

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.has_perm(self.permission))


CanAnnotate = HasPermission.of("annotation_app.annotate")
CanExport = HasPermission.of("annotation_app.export_preferences")
CanManageBatches = HasPermission.of("annotation_app.manage_batches")
# Training is ML staff's: batch admins may read runs in the admin, not start or follow them here.
CanTrain = HasPermission.of("annotation_app.add_trainingrun")


class ModelPermissionsWithView(DjangoModelPermissions):
    """Django model permissions, with reading guarded by the ``view_`` permission too."""

    perms_map = {
        **DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
    }


class BatchViewSet(viewsets.ModelViewSet):
    """Annotation batches: create, configure, import into, activate, close, watch progress."""

    queryset = Batch.objects.prefetch_related("assigned_annotators", "assigned_groups")
    serializer_class = s.BatchSerializer
    permission_classes = [ModelPermissionsWithView]

    def get_permissions(self):
        if self.action in {"import_file", "activate", "close", "retry_generation"}:
            return [CanManageBatches()]
        if self.action == "write_prompt":
            return [CanAnnotate()]
        return super().get_permissions()

    def get_object(self):
        if self.action == "write_prompt":
            # Annotators hold no batch permissions; the service checks the batch is open to them.
            # DRF's get_object_or_404: an id that is not a number is a 404 too, not a 500.
            return generics.get_object_or_404(Batch, pk=self.kwargs["pk"])
        return super().get_object()

    def perform_create(self, serializer):
        serializer.save(created_by=self.request.user)

    def perform_update(self, serializer):
        # Kind is fixed once annotated; a new overlap recomputes the comparisons' statuses.
        serializer.instance = update_batch(serializer.instance, serializer.validated_data)

    def perform_destroy(self, instance):
        delete_batch(instance)

    @extend_schema(
        request={"multipart/form-data": s.ImportSerializer},
        responses={201: s.ImportReportSerializer},
    )
    @action(
        detail=True,
        methods=["post"],
        url_path="import",
        parser_classes=[MultiPartParser, FormParser],
    )
    def import_file(self, request, pk=None):
        """Import a file of prompts or comparisons; a bad record rejects the whole file."""
        batch = self.get_object()
        form = s.ImportSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        upload = form.validated_data["file"]
        report = import_comparisons(
            batch,
            upload.file,
            upload.name,
            form.validated_data.get("format") or None,
            imported_by=request.user,
            allow_duplicate=form.validated_data["allow_duplicate"],
        )
        return Response(s.ImportReportSerializer(report).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=s.BatchSerializer)
    @action(detail=True, methods=["post"])
    def activate(self, request, pk=None):
        batch = activate_batch(self.get_object())
        return Response(self.get_serializer(batch).data)

    @extend_schema(request=None, responses=s.BatchSerializer)
    @action(detail=True, methods=["post"])
    def close(self, request, pk=None):
        batch = close_batch(self.get_object())
        return Response(self.get_serializer(batch).data)

    @extend_schema(request=None, responses=s.RetryGenerationSerializer)
    @action(detail=True, methods=["post"], url_path="retry-generation")
    def retry_generation(self, request, pk=None):
        """Ask again for the responses of the batch's failed comparisons, and of its waiting ones
        whose generation is unanswered (sent again at once); returns how many."""
        return Response({"requests": retry_unfinished_generation(batch=self.get_object())})

    @extend_schema(request=s.WritePromptSerializer, responses={201: s.TaskSerializer})
    @action(detail=True, methods=["post"], url_path="prompts")
    def write_prompt(self, request, pk=None):
        """An annotator's own prompt: responses are generated, then it is theirs to compare."""
        form = s.WritePromptSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        assignment = dialogues.write_prompt(
            request.user,
            self.get_object(),
            data["prompt"],
            risk_category=data["risk_category"],
            attack_vector=data["attack_vector"],
        )
        return Response(s.TaskSerializer(assignment).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["get"])
    def progress(self, request, pk=None):
        """Counts by status, annotations done and wanted, agreement, per-annotator quality."""
        return Response(batch_progress(self.get_object()))


# The id in the assignment and annotation routes is an integer. Their querysets depend on the
# requesting user, so the schema generator cannot derive the type from the model.
_INTEGER_ID = extend_schema(parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH)])


class NextTaskView(APIView):
    """Lease the next comparison to the calling annotator."""

    permission_classes = [CanAnnotate]
    parser_classes = [JSONParser, FormParser]

    @extend_schema(
        request=s.NextTaskRequestSerializer,
        responses={200: s.TaskSerializer, 204: OpenApiResponse(description="No work left.")},
    )
    def post(self, request):
        form = s.NextTaskRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        batch = None
        if form.validated_data.get("batch") is not None:
            # A batch not open to the caller is as unknown to them as a missing one.
            open_batches = assignment_service.batches_open_to(request.user)
            batch = open_batches.filter(pk=form.validated_data["batch"]).first()
            if batch is None:
                raise ValidationError({"batch": "no such batch"})
        assignment = assignment_service.next_assignment(request.user, batch=batch)
        if assignment is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(s.TaskSerializer(assignment).data)


@extend_schema_view(
    retrieve=_INTEGER_ID,
    skip=_INTEGER_ID,
    flag=_INTEGER_ID,
    continue_dialogue=_INTEGER_ID,
    heartbeat=_INTEGER_ID,
)
class AssignmentViewSet(viewsets.GenericViewSet):
    """An annotator's own leases: read one again, skip, flag, keep alive.

    The services answer someone else's lease as a missing one (404), so no check is needed here.
    """

    permission_classes = [CanAnnotate]
    serializer_class = s.TaskSerializer
    lookup_value_regex = r"\d+"

    def retrieve(self, request, pk=None):
        assignment = assignment_service.get_assignment_for(request.user, int(pk))
        return Response(s.TaskSerializer(assignment).data)

    @extend_schema(request=None, responses=s.TaskSerializer)
    @action(detail=True, methods=["post"])
    def skip(self, request, pk=None):
        assignment = assignment_service.release_assignment(request.user, int(pk))
        return Response(s.TaskSerializer(assignment).data)

    @extend_schema(request=s.FlagSerializer, responses=s.TaskSerializer)
    @action(detail=True, methods=["post"])
    def flag(self, request, pk=None):
        form = s.FlagSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        assignment = assignment_service.release_assignment(
            request.user, int(pk), flag_reason=form.validated_data["reason"]
        )
        return Response(s.TaskSerializer(assignment).data)

    @extend_schema(request=s.ContinueSerializer, responses={201: s.TaskSerializer})
    @action(detail=True, methods=["post"], url_path="continue")
    def continue_dialogue(self, request, pk=None):
        """Continue one's own dialogue: the chosen reply joins the context, then this turn."""
        form = s.ContinueSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        follow_up = dialogues.continue_dialogue(request.user, int(pk), form.validated_data["text"])
        return Response(s.TaskSerializer(follow_up).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=s.TaskSerializer)
    @action(detail=True, methods=["post"])
    def heartbeat(self, request, pk=None):
        """Extend the lease while the annotator is still working on it."""
        assignment = assignment_service.extend_lease(request.user, int(pk))
        return Response(s.TaskSerializer(assignment).data)


@extend_schema_view(retrieve=_INTEGER_ID)
class AnnotationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Submit annotations (idempotently) and read back one's own."""

    permission_classes = [CanAnnotate]
    serializer_class = s.AnnotationSerializer

    def get_queryset(self):
        return Annotation.objects.filter(annotator=self.request.user).order_by("-created_at")

    @extend_schema(
        request=s.SubmitSerializer,
        responses={201: s.AnnotationSerializer, 200: s.AnnotationSerializer},
    )
    def create(self, request):
        form = s.SubmitSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        judgement = Judgement(
            preferred_side=data["preferred"],
            strength=data["strength"],
            a_safe=data.get("a_safe"),
            b_safe=data.get("b_safe"),
            rationale=data.get("rationale", ""),
            time_spent_ms=data.get("time_spent_ms"),
        )
        annotation, created = submit_annotation(
            request.user, data["assignment"], judgement, data["idempotency_key"]
        )
        return Response(
            s.AnnotationSerializer(annotation).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class ExportView(APIView):
    """Stream preference data as JSON Lines (canonical per-annotation, or TRL training pairs).

    A damaged comparison (a response or a context turn missing) is left out, never a failed
    download: the ``Pairwise-Skipped-Count`` and ``Pairwise-Skipped`` headers name each one.
    """

    permission_classes = [CanExport]

    @extend_schema(
        parameters=[
            OpenApiParameter("format", str, enum=["canonical", "trl"]),
            OpenApiParameter("batch", int, many=True, description="Batch ids; all when omitted."),
            OpenApiParameter("margin", str, enum=["none", "small", "large"]),
            OpenApiParameter(
                SKIPPED_COUNT_HEADER,
                int,
                OpenApiParameter.HEADER,
                response=[200],
                description="How many damaged comparisons were left out (absent: none).",
            ),
            OpenApiParameter(
                SKIPPED_HEADER,
                str,
                OpenApiParameter.HEADER,
                response=[200],
                description="Each comparison left out, its batch, what is missing and how many "
                "lines it would have written, separated by ' | ' (the first 20).",
            ),
        ],
        responses={
            (200, "application/jsonl"): OpenApiResponse(
                OpenApiTypes.STR,
                description="JSON Lines. Damaged comparisons are left out and named in headers.",
            )
        },
    )
    def get(self, request):
        form = s.ExportQuerySerializer(
            data={
                "format": request.query_params.get("format", "canonical"),
                "batch": request.query_params.getlist("batch"),
                "margin": request.query_params.get("margin", "small"),
            }
        )
        form.is_valid(raise_exception=True)
        query = form.validated_data
        batches = None
        if query.get("batch"):
            batches = list(Batch.objects.filter(pk__in=query["batch"]))
            missing = set(query["batch"]) - {batch.pk for batch in batches}
            if missing:
                raise ValidationError({"batch": f"no such batch: {sorted(missing)}"})
        export = PreferenceExport(query["format"], batches, query["margin"])
        response = StreamingHttpResponse(
            export.lines(),
            content_type="application/jsonl",
            headers=skipped_headers(export.skipped),
        )
        filename = f"pairwise-{query['format']}.jsonl"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response


class ModelVersionViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """The model registry: register, inspect (config, parameters, lineage) and promote."""

    queryset = ModelVersion.objects.select_related("parent")
    serializer_class = s.ModelVersionSerializer
    permission_classes = [ModelPermissionsWithView]

    def get_permissions(self):
        if self.action == "promote":
            return [HasPermission.of("annotation_app.change_modelversion")()]
        return super().get_permissions()

    def perform_create(self, serializer):
        data = serializer.validated_data
        serializer.instance = registry.register_model(
            data["path"],
            data["role"],
            name=data.get("name"),
            parent=data.get("parent"),
            metrics=data.get("metrics"),
            make_current=data.get("make_current", False),
        )

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def retrieve(self, request, *args, **kwargs):
        version = self.get_object()
        return Response({**self.get_serializer(version).data, **registry.inspect_model(version)})

    @extend_schema(request=None, responses=s.ModelVersionSerializer)
    @action(detail=True, methods=["post"])
    def promote(self, request, pk=None):
        """Make this version the current one of its role."""
        return Response(self.get_serializer(registry.promote(self.get_object())).data)


class TrainingRunViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Reward-model training runs: start one, follow it, read its metrics (ML staff).

    A run that succeeds registers a new reward model version, not current: promote it with
    ``POST /api/v1/models/{id}/promote/``.
    """

    queryset = TrainingRun.objects.select_related("base_model", "created_by").prefetch_related(
        "batches", "outputs"
    )
    permission_classes = [CanTrain]

    def get_serializer_class(self):
        if self.action == "list":
            return s.TrainingRunSummarySerializer
        return s.TrainingRunSerializer

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.action == "list":  # the summary leaves them out: do not read them either
            return queryset.defer("logs", "metrics")
        if self.action == "live_status":  # polled every two seconds: the logs' tail only
            return queryset.defer("metrics").annotate(
                train_pairs=F("metrics__train_pairs"), eval_pairs=F("metrics__eval_pairs")
            )
        return queryset

    @extend_schema(request=s.StartTrainingSerializer, responses={201: s.TrainingRunSerializer})
    def create(self, request):
        """Queue a run; a bad request (a config field, say) is refused and creates nothing."""
        form = s.StartTrainingSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        run = start.start_reward_training(
            request.user,
            data["kind"],
            data["batches"],
            base_model=data.get("base_model"),
            config=data.get("config") or {},
        )
        run = self.get_queryset().get(pk=run.pk)
        return Response(s.TrainingRunSerializer(run).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=s.TrainingRunStatusSerializer)
    @action(detail=True, methods=["get"], url_path="status")
    def live_status(self, request, pk=None):
        """Status, progress and the last lines of the logs: what a page polls."""
        run = self.get_object()
        return Response(
            s.TrainingRunStatusSerializer(
                {
                    "id": run.pk,
                    "status": run.status,
                    "progress": run.progress,
                    "error": run.error,
                    "log_tail": report.log_tail(run),
                    "train_pairs": run.train_pairs,
                    "eval_pairs": run.eval_pairs,
                    "started_at": run.started_at,
                    "finished_at": run.finished_at,
                }
            ).data
        )


class LockedOut(Throttled):
    """Too many failed sign-ins for one user name from one address (django-axes): 429."""

    def __init__(self, cool_off: timedelta):
        super().__init__(
            detail="Too many failed sign-ins for this user name from this address: try again "
            f"in {minutes(cool_off)}."
        )
        self.wait = int(cool_off.total_seconds())  # the Retry-After header


class TokenView(ObtainAuthToken):
    """A user's API token for their user name and password.

    Throttled per client address; after repeated failed sign-ins for one user name from one
    address, refused (429) for a while, as the sign-in form is.
    """

    # ObtainAuthToken has no throttles of its own: count per address, and at the token's rate.
    throttle_classes = [throttles.AnonRateThrottle, throttles.ScopedRateThrottle]
    throttle_scope = "auth_token"
    serializer_class = s.TokenRequestSerializer
    # Not documented: it names no object (404) and changes no state that could conflict (409).
    unanswered_error_codes = ("404", "409")

    def post(self, request, *args, **kwargs):
        try:
            return super().post(request, *args, **kwargs)
        except ValidationError:
            # django-axes' backend runs in authenticate(): it counts the failure and marks the
            # request it was given (DRF's) once the user name is locked out from this address.
            if getattr(request, "axes_locked_out", False):
                raise LockedOut(settings.AXES_COOLOFF_TIME) from None
            raise
