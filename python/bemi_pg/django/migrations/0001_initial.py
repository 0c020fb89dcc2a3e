"""Creates the bemi extension (idempotent; nothing where bemi-pg install installed bemi as plain
SQL), and records the unmanaged BemiChange model."""

from django.db import migrations, models


# A plain install (bemi-pg install, where extension files cannot be installed) has the same
# objects without an extension: CREATE EXTENSION would fail there (no files, schema bemi taken).
CREATE_EXTENSION = """
DO $$
BEGIN
  IF pg_catalog.to_regclass('bemi.plain_install') IS NULL THEN
    CREATE EXTENSION IF NOT EXISTS bemi;
  END IF;
END
$$
"""


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.RunSQL(CREATE_EXTENSION, reverse_sql=migrations.RunSQL.noop),
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
