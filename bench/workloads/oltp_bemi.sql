-- W1, bemi: the context is set once per transaction, sent with BEGIN in one round trip
-- (one simple-protocol query, as drivers that can pipeline or batch statements send it, and
-- as bemi_pg.with_context sends it).
\set uid random(1, 100000)
BEGIN \; CALL bemi.use_context('{"user_id": :uid, "endpoint": "/todo", "method": "POST"}');
INSERT INTO todo (task, owner, priority, payload)
  VALUES ('task of ' || :uid, 'user ' || :uid, :uid % 5, repeat('p', 100)) RETURNING id AS todo_id \gset
UPDATE todo SET is_completed = true WHERE id = :todo_id;
COMMIT;
