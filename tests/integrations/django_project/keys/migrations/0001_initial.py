from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = [("bemi", "0001_initial")]

    operations = [
        migrations.CreateModel(name="ByUuid", fields=[
            ("id", models.UUIDField(primary_key=True, serialize=False)), ("v", models.TextField())]),
        migrations.CreateModel(name="ByDecimal", fields=[
            ("id", models.DecimalField(decimal_places=2, max_digits=10, primary_key=True, serialize=False)),
            ("v", models.TextField())]),
        migrations.CreateModel(name="ByMoment", fields=[
            ("id", models.DateTimeField(primary_key=True, serialize=False)), ("v", models.TextField())]),
        migrations.CreateModel(name="ByDay", fields=[
            ("id", models.DateField(primary_key=True, serialize=False)), ("v", models.TextField())]),
        migrations.CreateModel(name="ByPair", fields=[
            ("pk", models.CompositePrimaryKey("day", "n", blank=True, editable=False, primary_key=True, serialize=False)),
            ("day", models.DateField()), ("n", models.IntegerField()), ("v", models.TextField())]),
    ]
