from django.db import models


class Tag(models.Model):
    name = models.TextField()


class Todo(models.Model):
    id = models.IntegerField(primary_key=True)
    task = models.TextField()
    is_completed = models.BooleanField(default=False)
    tags = models.ManyToManyField(Tag)
