"""Models whose primary keys are of types the trail writes as text of their own (UUID, numeric,
timestamptz, date), and one with a composite key: time travel must find each by value."""

from django.db import models


class ByUuid(models.Model):
    id = models.UUIDField(primary_key=True)
    v = models.TextField()


class ByDecimal(models.Model):
    id = models.DecimalField(primary_key=True, max_digits=10, decimal_places=2)
    v = models.TextField()


class ByMoment(models.Model):
    id = models.DateTimeField(primary_key=True)
    v = models.TextField()


class ByDay(models.Model):
    id = models.DateField(primary_key=True)
    v = models.TextField()


class ByPair(models.Model):
    pk = models.CompositePrimaryKey("day", "n")
    day = models.DateField()
    n = models.IntegerField()
    v = models.TextField()
