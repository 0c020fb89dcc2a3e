-- W1, audit table: the context is a transaction-local setting the audit trigger reads.
\set uid random(1, 100000)
BEGIN;
SELECT set_config('bench.context', '{"user_id": :uid, "endpoint": "/todo", "method": "POST"}', true);
INSERT INTO todo (task, owner, priority, payload)
  VALUES ('task of ' || :uid, 'user ' || :uid, :uid % 5, repeat('p', 100)) RETURNING id AS todo_id \gset
UPDATE todo SET is_completed = true WHERE id = :todo_id;
COMMIT;
