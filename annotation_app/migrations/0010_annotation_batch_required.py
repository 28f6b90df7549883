from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("annotation_app", "0009_progress_counters"),
    ]

    operations = [
        migrations.AlterField(
            model_name="annotation",
            name="batch",
            field=models.ForeignKey(
                db_index=False,
                editable=False,
                on_delete=models.deletion.PROTECT,
                related_name="annotations",
                to="annotation_app.batch",
            ),
        ),
        migrations.AddIndex(
            model_name="annotation",
            index=models.Index(
                fields=["batch", "annotator", "time_spent_ms"], name="annotations_by_batch"
            ),
        ),
        migrations.AddIndex(
            model_name="assignment",
            index=models.Index(
                condition=models.Q(status="leased"), fields=["expires_at"], name="held_leases"
            ),
        ),
    ]
