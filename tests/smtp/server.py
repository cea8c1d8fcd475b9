"""A real SMTP server for conveyor's email tests, built on aiosmtpd.

Run it with a python that can `import aiosmtpd` (Debian's python3-aiosmtpd):

    python3 -W ignore tests/smtp/server.py --out messages.jsonl [options]

It listens on 127.0.0.1 on a free port, prints `ready <port>` on stdout once
it accepts connections, and appends one JSON object per DATA command to
--out: {"mail_from", "rcpt_tos", "data", "reply"}, where "reply" is the code
it answered (250 means the message was accepted). With --sessions FILE it
also appends {"messages": n, "quit": true|false} when a session ends:
whether the client said QUIT before the connection closed.

Options choose the behaviour a test needs:
  --tls-cert/--tls-key  certificate and key for TLS
  --starttls            offer STARTTLS and require it before MAIL
  --implicit-tls        TLS from the first byte (smtps)
  --user/--password     offer AUTH PLAIN and LOGIN and require it
  --replies 451,250     DATA reply codes for the 1st, 2nd, ... message; the
                        last one repeats (so `--replies 550` always refuses)
  --delay-first-ms N    wait N ms before answering the first DATA
  --stall               accept TCP connections and never say anything
"""

import argparse
import asyncio
import json
import socket
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

REASONS = {
    250: "2.0.0 OK: queued",
    421: "4.3.2 Service not available, closing channel",
    450: "4.2.0 Mailbox unavailable",
    451: "4.3.0 Temporary local problem, try again later",
    452: "4.3.1 Insufficient system storage",
    550: "5.1.1 Mailbox unavailable",
    552: "5.3.4 Message too big",
    554: "5.7.1 Transaction failed",
}


class Recorder:
    """Answers DATA with the scripted codes and records every message."""

    def __init__(self, out, replies, delay_first_ms):
        self.out = out
        self.replies = replies
        self.delay_first_ms = delay_first_ms
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        code = self.replies[min(self.count, len(self.replies) - 1)]
        self.count += 1
        if self.count == 1 and self.delay_first_ms:
            await asyncio.sleep(self.delay_first_ms / 1000)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "data": envelope.content.decode("utf-8", errors="replace"),
            "reply": code,
        }
        with open(self.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return f"{code} {REASONS.get(code, 'scripted reply')}"


class Session(SMTP):
    """An SMTP session that notes, when it ends, whether the client said QUIT."""

    def __init__(self, handler, sessions, **options):
        super().__init__(handler, **options)
        self.sessions = sessions
        self.quit = False
        self.messages = 0

    async def smtp_QUIT(self, arg):
        self.quit = True
        await super().smtp_QUIT(arg)

    async def smtp_DATA(self, arg):
        self.messages += 1
        await super().smtp_DATA(arg)

    def connection_lost(self, error):
        if self.sessions:
            with open(self.sessions, "a", encoding="utf-8") as f:
                f.write(json.dumps({"messages": self.messages, "quit": self.quit}) + "\n")
        super().connection_lost(error)


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False)

    return check


async def stall(reader, writer):
    # Hold the connection open and never greet: the client must time out.
    await asyncio.Event().wait()


async def main(args):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)

    loop = asyncio.get_running_loop()
    if args.stall:
        server = await asyncio.start_server(stall, sock=sock)
    else:
        replies = [int(c) for c in args.replies.split(",")]
        handler = Recorder(args.out, replies, args.delay_first_ms)
        options = {"hostname": "localhost", "loop": loop}
        if args.starttls:
            options.update(tls_context=context, require_starttls=True)
        if args.user is not None:
            options.update(
                authenticator=authenticator(args.user, args.password),
                auth_required=True,
                auth_require_tls=args.starttls or args.implicit_tls,
            )
        server = await loop.create_server(
            lambda: Session(handler, args.sessions, **options),
            sock=sock,
            ssl=context if args.implicit_tls else None,
        )
    async with server:
        print(f"ready {port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/dev/null")
    parser.add_argument("--sessions")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--starttls", action="store_true")
    parser.add_argument("--implicit-tls", action="store_true")
    parser.add_argument("--user")
    parser.add_argument("--password", default="")
    parser.add_argument("--replies", default="250")
    parser.add_argument("--delay-first-ms", type=int, default=0)
    parser.add_argument("--stall", action="store_true")
    arguments = parser.parse_args()
    if (arguments.starttls or arguments.implicit_tls) and not arguments.tls_cert:
        sys.exit("--starttls and --implicit-tls need --tls-cert and --tls-key")
    try:
        asyncio.run(main(arguments))
    except KeyboardInterrupt:
        pass
