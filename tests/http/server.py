"""A scripted HTTP server for conveyor's http handler tests (standard library).

    python3 tests/http/server.py --out requests.jsonl

It listens on 127.0.0.1 on a free port, prints `ready <port>`, and appends
one JSON object per request to --out: {"path", "method", "headers" (names in
lower case), "body", "port" (the client's)}. With --idle-timeout SECONDS it
closes a keep-alive connection that idle that long, as servers do, and then
appends {"closed": <the client's port>}. The path decides the answer:

  /ok            200 {"ok": true, "n": <requests to /ok so far>}
  /text          200 text/plain
  /flaky         503 the first time, then 200 {"recovered": true}
  /limited       429 with Retry-After: 2 the first time, then 200 {}
  /bad           400 "no such customer"
  /slow          waits 10 s, then 200
  /redirect      302 to /ok
  /reset         closes the connection without an answer (a reset)
  /huge          200 announcing 1 GB, sending zeros until the client stops
  /rates         200 {"rate": 1.1} (GET, for the cache)
  /forge         422 with a body that would forge a log line: a newline, a
                 line that looks like conveyor's, terminal escapes
"""

import argparse
import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COUNTS = {}
LOCK = threading.Lock()


def count(path):
    with LOCK:
        COUNTS[path] = COUNTS.get(path, 0) + 1
        return COUNTS[path]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, code, body=b"", content_type="application/json", extra=()):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        record = {
            "path": self.path,
            "method": self.command,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
            "port": self.client_address[1],
        }
        with LOCK:
            with open(self.server.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        path = self.path.split("?")[0]
        n = count(path)
        if path == "/ok":
            self.answer(200, json.dumps({"ok": True, "n": n}).encode())
        elif path == "/text":
            self.answer(200, b"plain", "text/plain")
        elif path == "/flaky":
            if n == 1:
                self.answer(503, b"try later")
            else:
                self.answer(200, b'{"recovered": true}')
        elif path == "/limited":
            if n == 1:
                self.answer(429, b"slow down", extra=[("Retry-After", "2")])
            else:
                self.answer(200, b"{}")
        elif path == "/bad":
            self.answer(400, b"no such customer", "text/plain")
        elif path == "/slow":
            time.sleep(10)
            self.answer(200, b"{}")
        elif path == "/redirect":
            self.answer(302, b"", extra=[("Location", "/ok")])
        elif path == "/reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
        elif path == "/huge":
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 30))
            self.end_headers()
            chunk = b"0" * 65536
            try:
                for _ in range((1 << 30) // len(chunk)):
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True
        elif path == "/rates":
            self.answer(200, b'{"rate": 1.1}')
        elif path == "/forge":
            body = "nope\n1999-12-31T23:59:59.999999Z ERROR forged by the receiver\x1b[2J\u009b31m\r"
            self.answer(422, body.encode(), "text/plain")
        else:
            self.answer(404, b"not here", "text/plain")

    do_GET = do_POST = do_PUT = handle_any


class Server(ThreadingHTTPServer):
    def shutdown_request(self, request):
        port = request.getpeername()[1]
        super().shutdown_request(request)
        if Handler.timeout is not None:
            with LOCK:
                with open(self.out, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"closed": port}) + "\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--idle-timeout", type=float)
    args = parser.parse_args()
    # The socket's timeout: a connection idle that long is closed.
    Handler.timeout = args.idle_timeout
    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.out = args.out
    print("ready %d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
