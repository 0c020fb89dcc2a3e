from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = [("bemi", "0001_initial")]

    operations = [
        migrations.CreateModel(
            name="Tag",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.TextField()),
            ],
        ),
        migrations.CreateModel(
            name="Todo",
            fields=[
                ("id", models.IntegerField(primary_key=True, serialize=False)),
                ("task", models.TextField()),
                ("is_completed", models.BooleanField(default=False)),
                ("tags", models.ManyToManyField(to="todos.tag")),
            ],
        ),
    ]
