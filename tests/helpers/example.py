"""The trail of the example every user reads first (bemi_pg.seed_example), as the tests expect it:
(primary_key, table, operation, before, after, context) per change."""

SEED = [
    ("26", "todo", "CREATE", {}, {"id": 26, "task": "Sleep", "is_completed": False},
     {"user_id": 187234, "endpoint": "/todo", "method": "POST"}),
    ("27", "todo", "CREATE", {}, {"id": 27, "task": "Eat", "is_completed": False},
     {"user_id": 187234, "endpoint": "/todo", "method": "POST"}),
    ("28", "todo", "CREATE", {}, {"id": 28, "task": "Repeat", "is_completed": False},
     {"user_id": 187234, "endpoint": "/todo", "method": "POST"}),
    ("26", "todo", "UPDATE", {"id": 26, "task": "Sleep", "is_completed": False},
     {"id": 26, "task": "Sleep", "is_completed": True},
     {"user_id": 187234, "endpoint": "/todo/complete", "method": "PUT"}),
    ("27", "todo", "DELETE", {"id": 27, "task": "Eat", "is_completed": False}, {},
     {"user_id": 187234, "endpoint": "/todo/27", "method": "DELETE"}),
]
