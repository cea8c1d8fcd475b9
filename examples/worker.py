#!/usr/bin/env python3
"""A conveyor exec worker (persistent mode), standard library only.

Each line on stdin is one job: {"id", "queue", "attempt", "payload"}.
Answer each with one line on stdout; log on stderr (stdout is for replies).
"""
import json
import sys


def handle(payload):
    """Your code. Return a result (any JSON), or raise to fail the job."""
    return {"greeting": "Hello, %s!" % payload["name"]}


for line in sys.stdin:
    job = json.loads(line)
    try:
        reply = {"id": job["id"], "status": "ok", "result": handle(job["payload"])}
    except KeyError as e:  # bad payload: retrying cannot help
        reply = {"id": job["id"], "status": "fail", "error": "missing %s" % e}
    except Exception as e:  # anything else: try again later
        reply = {"id": job["id"], "status": "retry", "error": str(e)}
    print(json.dumps(reply), flush=True)
