-- W1, row-trigger emit: the context rides on every statement as a SQL comment.
\set uid random(1, 100000)
BEGIN;
/*Bemi {"user_id": :uid, "endpoint": "/todo", "method": "POST"} Bemi*/ INSERT INTO todo (task, owner, priority, payload)
  VALUES ('task of ' || :uid, 'user ' || :uid, :uid % 5, repeat('p', 100)) RETURNING id AS todo_id \gset
/*Bemi {"user_id": :uid, "endpoint": "/todo", "method": "POST"} Bemi*/ UPDATE todo SET is_completed = true WHERE id = :todo_id;
COMMIT;
