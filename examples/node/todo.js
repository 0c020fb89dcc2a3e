// bemi from Node with node-postgres: two ways to give every write its context.
//
//   DATABASE_URL=postgresql://localhost/app node todo.js
//
// 1. Inside a transaction, SELECT bemi.set_context($1) once; every write after it carries it.
// 2. Outside a transaction (or from a Bemi ORM package), end the write with a
//    /*Bemi {...} Bemi*/ comment: the context trigger reads it when no set_context was made.
// The table "todo" must exist and be tracked: SELECT bemi.track('todo').
"use strict";

const { Client } = require("pg");

// The comment form: JSON as Bemi's packages write it, with "*" escaped so that no value can
// close the comment early (JSON.parse reads \u002a back as "*").
function bemiComment(context) {
  return `/*Bemi ${JSON.stringify(context).replace(/\*/g, "\\u002a")} Bemi*/`;
}

async function main() {
  const client = new Client({ connectionString: process.env.DATABASE_URL });
  await client.connect();
  try {
    const context = { user_id: 187234, endpoint: "/todo", method: "POST" };
    await client.query("BEGIN");
    await client.query("SELECT bemi.set_context($1)", [JSON.stringify(context)]);
    for (const [id, task] of [[26, "Sleep"], [27, "Eat"], [28, "Repeat"]]) {
      await client.query("INSERT INTO todo (id, task, is_completed) VALUES ($1, $2, false)", [id, task]);
    }
    await client.query("COMMIT");

    const complete = { user_id: 187234, endpoint: "/todo/complete", method: "PUT" };
    await client.query(`UPDATE todo SET is_completed = true WHERE id = $1 ${bemiComment(complete)}`, [26]);
    const remove = { user_id: 187234, endpoint: "/todo/27", method: "DELETE", note: "a */ in a value" };
    await client.query(`DELETE FROM todo WHERE id = $1 ${bemiComment(remove)}`, [27]);
  } finally {
    await client.end();
  }
}

main().catch((error) => {
  console.error(`error: ${error.message}`);
  process.exit(1);
});
