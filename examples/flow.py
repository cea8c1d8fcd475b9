"""Submits two flows with redis-py alone: an order's steps, and 500 image
resizes closed by one zip. conveyor runs each node in its queue once the
nodes it is after have ended.

    REDIS_URL=redis://127.0.0.1:6379/0 python3 examples/flow.py
"""
import json
import os

import redis

r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))

# Charge, then make the invoice, then mail it; audit whatever happens.
r.rpush("conveyor:flows", json.dumps({
    "flow": "order-1001",
    "jobs": {
        "charge": {"queue": "payments", "payload": {"order": 1001}},
        "invoice": {"queue": "invoices", "payload": {"order": 1001}, "after": ["charge"]},
        "mail": {"queue": "mail", "payload": {"to": "ada@example.com"}, "after": ["invoice"]},
        "audit": {"queue": "audit", "payload": {"order": 1001},
                  "after": ["charge", "invoice", "mail"], "when": "finished"},
    },
}))

# Resize 500 images, then zip them: the zip runs once, after all 500.
images = ["img-%d.jpg" % i for i in range(500)]
jobs = {"resize-%d" % i: {"queue": "images", "payload": {"file": f}} for i, f in enumerate(images)}
jobs["zip"] = {"queue": "images", "payload": {"zip": len(images)}, "after": list(jobs)}
r.rpush("conveyor:flows", json.dumps({"flow": "album-7", "jobs": jobs}))
