#!/usr/bin/env node
// A conveyor exec worker (persistent mode), Node's standard library only.
//
// Each line on stdin is one job: {"id", "queue", "attempt", "payload"}.
// Answer each with one line on stdout; log on stderr (stdout is for replies).
const readline = require("node:readline");

// Your code. Return a result (any JSON), or throw to fail the job.
async function handle(payload) {
  if (typeof payload.name !== "string") throw new TypeError("missing name");
  return { greeting: `Hello, ${payload.name}!` };
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", async (line) => {
  const job = JSON.parse(line);
  let reply;
  try {
    reply = { id: job.id, status: "ok", result: await handle(job.payload) };
  } catch (e) {
    // A bad payload will not get better; anything else is tried again.
    const status = e instanceof TypeError ? "fail" : "retry";
    reply = { id: job.id, status, error: String(e.message) };
  }
  process.stdout.write(JSON.stringify(reply) + "\n");
});
