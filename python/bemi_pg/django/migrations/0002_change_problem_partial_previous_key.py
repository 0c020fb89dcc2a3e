"""bemi.changes in 1.1: problem, partial and previous_key (the model is unmanaged: no SQL)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("bemi", "0001_initial")]

    operations = [
        migrations.AddField("bemichange", "problem", models.TextField(null=True)),
        migrations.AddField("bemichange", "partial", models.BooleanField(default=False)),
        migrations.AddField("bemichange", "previous_key", models.TextField(null=True)),
    ]
