-- W1, plain and full identity: a request that creates a todo and completes it.
-- The table is the variant's todo, chosen by search_path (PGOPTIONS).
\set uid random(1, 100000)
BEGIN;
INSERT INTO todo (task, owner, priority, payload)
  VALUES ('task of ' || :uid, 'user ' || :uid, :uid % 5, repeat('p', 100)) RETURNING id AS todo_id \gset
UPDATE todo SET is_completed = true WHERE id = :todo_id;
COMMIT;
