"""Creates the bemi extension (idempotent), and records the unmanaged BemiChange model."""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.RunSQL("CREATE EXTENSION IF NOT EXISTS bemi", reverse_sql=migrations.RunSQL.noop),
        migrations.CreateModel(
            name="BemiChange",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("database", models.TextField()),
                ("schema", models.TextField()),
                ("table", models.TextField()),
                ("primary_key", models.TextField(null=True)),
                ("operation", models.TextField(choices=[
                    ("CREATE", "Create"), ("UPDATE", "Update"), ("DELETE", "Delete"), ("TRUNCATE", "Truncate"),
                ])),
                ("before", models.JSONField()),
                ("after", models.JSONField()),
                ("context", models.JSONField()),
                ("committed_at", models.DateTimeField()),
                ("queued_at", models.DateTimeField()),
                ("transaction_id", models.BigIntegerField()),
                ("position", models.TextField()),
                ("ordinal", models.IntegerField()),
            ],
            options={"db_table": '"bemi"."changes"', "ordering": ["id"], "managed": False},
        ),
    ]
