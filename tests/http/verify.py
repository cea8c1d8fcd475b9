"""Verifies a recorded request's Standard Webhooks signature with the
specification's own library (PyPI standardwebhooks), as a receiver would.

    python3 tests/http/verify.py SECRET < request.json

Exits 0 when the signature verifies; prints the library's error otherwise.
"""

import json
import sys

from standardwebhooks.webhooks import Webhook

request = json.load(sys.stdin)
try:
    Webhook(sys.argv[1]).verify(request["body"], request["headers"])
except Exception as e:  # noqa: BLE001 - any failure is a failed verification
    print("not verified: %r" % e)
    sys.exit(1)
print("verified")
