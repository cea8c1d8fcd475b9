"""An endpoint of your web application for conveyor's `http` handler, in
Flask: it checks each request's Standard Webhooks signature with the
specification's own library, then does the job.

    pip install flask standardwebhooks
    WEBHOOK_SECRET=whsec_... python3 examples/receiver.py

The queue that sends it jobs (docs/handlers.md, "http"), with the same secret in the
daemon's environment as CONVEYOR_HTTP_SECRET_GREET:

    [queues.greet]
    handler = "http"
    track = true
    [queues.greet.http]
    url = "http://127.0.0.1:8080/jobs/greet"

What the answer means to conveyor: 2xx is done (a JSON body is the job's
result); 408, 425, 429 and 5xx are retried (honouring Retry-After); any
other status is permanent and the job is dead with it.
"""

import os

from flask import Flask, abort, request
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

app = Flask(__name__)
webhook = Webhook(os.environ["WEBHOOK_SECRET"])


@app.post("/jobs/greet")
def greet():
    try:
        # The signature covers the body exactly as sent, so check the raw
        # bytes; a verified body comes back as JSON.
        job = webhook.verify(request.get_data(), request.headers)
    except WebhookVerificationError:
        abort(401)
    if "name" not in job:
        return {"error": "missing name"}, 422  # permanent: retrying cannot help
    # webhook-id is the job id, the same on every attempt: an idempotency key.
    return {"greeting": "Hello, %s!" % job["name"], "job": request.headers["webhook-id"]}


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))
