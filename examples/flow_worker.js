#!/usr/bin/env node
// A conveyor exec worker for a flow's nodes (persistent mode), Node's
// standard library only. A node's request carries "flow" and "parents":
// each parent's status ("succeeded", "dead", "skipped", "cancelled") and
// result, which this worker returns as its own result.
const readline = require("node:readline");

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const job = JSON.parse(line);
  const after = {};
  for (const [name, parent] of Object.entries(job.parents || {})) after[name] = parent.status;
  const result = { node: job.id.split(":")[1], flow: job.flow, after };
  process.stdout.write(JSON.stringify({ id: job.id, status: "ok", result }) + "\n");
});
