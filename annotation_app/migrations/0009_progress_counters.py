from django.db import migrations, models
from django.db.models import Count, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce


def fill_counters(apps, schema_editor):
    """Each annotation's batch (its comparison's), and each comparison's slot-1 preferences."""
    Annotation = apps.get_model("annotation_app", "Annotation")
    Comparison = apps.get_model("annotation_app", "Comparison")
    Annotation.objects.update(
        batch_id=Subquery(
            Comparison.objects.filter(pk=OuterRef("comparison_id")).values("batch_id")
        )
    )
    slot1 = (
        Annotation.objects.filter(comparison_id=OuterRef("pk"))
        .order_by()
        .values("comparison_id")
        .annotate(n=Count("pk", filter=Q(preferred_slot=1)))
        .values("n")
    )
    Comparison.objects.filter(annotation_count__gt=0).update(
        slot1_count=Coalesce(Subquery(slot1), 0)
    )


class Migration(migrations.Migration):
    # The annotations' batch is made required in the next migration: on PostgreSQL a column
    # just filled in a transaction cannot be altered in it (its foreign key checks are pending).

    dependencies = [
        ("annotation_app", "0008_comparison_lease_counts"),
    ]

    operations = [
        migrations.AddField(
            model_name="comparison",
            name="slot1_count",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="annotation",
            name="batch",
            field=models.ForeignKey(
                db_index=False,
                editable=False,
                null=True,
                on_delete=models.deletion.PROTECT,
                related_name="annotations",
                to="annotation_app.batch",
            ),
        ),
        migrations.RunPython(fill_counters, migrations.RunPython.noop),
    ]
