"""A conveyor exec worker for a flow's nodes (persistent mode), Python's
standard library only. A node's request carries "flow" and "parents":
each parent's status ("succeeded", "dead", "skipped", "cancelled") and
result. A payload with "apis" adds nodes to the flow from the result's
"flow_add": one call per API, and a merge after all of them.
"""
import json
import sys


def handle(job):
    payload, parents = job["payload"], job.get("parents", {})
    node = job["id"].split(":", 1)[1]
    if "apis" in payload:
        calls = {"call-%d" % i: {"queue": job["queue"], "payload": {"api": api}, "after": [node]}
                 for i, api in enumerate(payload["apis"])}
        merge = {"queue": job["queue"], "payload": {"merge": True}, "after": list(calls)}
        return {"calls": len(calls), "flow_add": dict(calls, merge=merge)}
    if "merge" in payload:
        return {"answers": sorted(p["result"]["api"] for p in parents.values())}
    if "api" in payload:
        return {"api": payload["api"]}
    return {"node": node, "after": {name: p["status"] for name, p in parents.items()}}


for line in sys.stdin:
    job = json.loads(line)
    print(json.dumps({"id": job["id"], "status": "ok", "result": handle(job)}), flush=True)
