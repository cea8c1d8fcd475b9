#!/usr/bin/env bash
# The Debian package under a real systemd (PID 1 in a systemd-nspawn box):
# installed, enabling nothing by itself; enabled and started; running jobs;
# reloaded with a queue added; stopped cleanly; removed while running (it
# is stopped first); purged. Needs root and target/debian/conveyor_*.deb
# (scripts/package). .ci/run runs it; it is not part of `cargo test`.
#   sudo tests/package/in-systemd.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

box=tests/package/systemd_box.sh
name=conveyor-pkg
deb=$(ls -t target/debian/conveyor_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || { echo "in-systemd: no package; run scripts/package first" >&2; exit 70; }

say() { printf 'in-systemd: %s\n' "$*"; }
fail() { say "FAILED: $*" >&2; "$box" exec "$name" journalctl -u conveyor --no-pager -n 60 >&2 || true; exit 1; }
in_box() { "$box" exec "$name" "$@"; }
# Whether queue $1 has processed at least $2 jobs, by `conveyor stats --json`.
processed() {
  printf '%s' "conveyor stats --json | python3 -c 'import json, sys; q = {r[\"name\"]: r for r in json.load(sys.stdin)[\"queues\"]}; sys.exit(q[\"$1\"][\"processed\"] < $2)'"
}
# Polls CMD (a shell line run in the box) until it succeeds, for up to 30 s.
until_true() {
  local what=$1 cmd=$2 i
  for i in $(seq 300); do
    in_box sh -c "$cmd" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  fail "$what"
}

"$box" setup >/dev/null
"$box" boot "$name" >/dev/null
trap '"$box" stop "$name"' EXIT
"$box" copy "$name" "$deb" /root/conveyor.deb

say "install"
in_box dpkg -i /root/conveyor.deb >/dev/null
[ "$(in_box systemctl is-enabled conveyor || true)" = disabled ] || fail "the package enabled the service by itself"
[ "$(in_box systemctl is-active conveyor || true)" = inactive ] || fail "the package started the service by itself"
in_box id conveyor >/dev/null || fail "no system user conveyor"
in_box test -f /etc/conveyor/smtp_password || fail "no SMTP credential file"
in_box test -f /etc/conveyor/redis_password || fail "no Redis credential file"
in_box test -f /etc/conveyor/web_token || fail "no web token credential file"
in_box conveyor --version | grep -q '^conveyor ' || fail "conveyor is not on the PATH"
in_box test -s /usr/share/bash-completion/completions/conveyor || fail "no bash completion"
in_box man -w conveyor-run >/dev/null 2>&1 || in_box test -s /usr/share/man/man1/conveyor-run.1.gz ||
  fail "no man page"

say "enable --now, run jobs"
until_true "redis-server runs in the box" "redis-cli ping"
in_box systemctl enable --now conveyor >/dev/null 2>&1
until_true "the service is active" "systemctl is-active conveyor"
in_box conveyor check >/dev/null || fail "conveyor check"
for i in 1 2 3; do in_box conveyor enqueue default "{\"n\":$i}" >/dev/null; done
id=$(in_box conveyor enqueue email '{"to": "a@example.com", "subject": "Welcome", "template": "welcome", "vars": {"name": "Alice"}}')
until_true "the email is written to the outbox" "grep -q 'Hello Alice' /var/lib/conveyor/outbox/$id.eml"
until_true "the default jobs ran" "$(processed default 3)"
until_true "the email job's status says succeeded" "conveyor status $id | grep -q succeeded"
# The packaged configuration's web server, on loopback.
get() { printf '%s' "python3 -c 'import urllib.request as u; print(u.urlopen(\"http://127.0.0.1:9740$1\").read().decode())'"; }
until_true "/healthz answers" "$(get /healthz) | grep -q ok"
in_box sh -c "$(get /metrics)" | grep -q '^conveyor_jobs_total{outcome="succeeded",queue="default"} 3$' ||
  fail "/metrics does not count the default queue's jobs"

say "exec workers run as conveyor-worker and find none of the daemon's secrets"
# Known secrets where the daemon keeps them: a credential (read only by the
# daemon's user) and the environment file (read only by root, then in the
# daemon's environment and memory).
in_box id conveyor-worker >/dev/null || fail "no system user conveyor-worker"
in_box sh -c 'printf box-credential-5e8a1c3f > /etc/conveyor/smtp_password'
in_box sh -c 'printf "AWS_SECRET_ACCESS_KEY=box-env-secret-9b2d7f4a\n" > /etc/conveyor/env; chmod 600 /etc/conveyor/env'
in_box mkdir -p /usr/local/lib/conveyor-test
"$box" copy "$name" tests/exec/snoop.py /usr/local/lib/conveyor-test/snoop.py
in_box sh -c 'printf box-control-0c4e6a2b > /usr/local/lib/conveyor-test/control; chmod -R a+rX /usr/local/lib/conveyor-test'
in_box sh -c 'printf "\n[queues.snoop]\nhandler = \"exec\"\nconcurrency = 1\ntrack = true\n[queues.snoop.exec]\ncommand = [\"python3\", \"/usr/local/lib/conveyor-test/snoop.py\"]\n" >> /etc/conveyor/conveyor.toml'
# A restart, not a reload: the credential and the environment file are read
# at start.
in_box systemctl restart conveyor
until_true "the service is active after the restart" "systemctl is-active conveyor"
in_box conveyor check | grep -q 'exec snoop: ok (.*as conveyor-worker:conveyor-worker' ||
  fail "check does not say the snoop queue runs as conveyor-worker"
main_pid=$(in_box systemctl show -p MainPID --value conveyor)
snoop=$(in_box conveyor enqueue snoop "{\"needles\": [\"box-credential-5e8a1c3f\", \"box-env-secret-9b2d7f4a\", \"box-control-0c4e6a2b\"], \"paths\": [\"/proc/$main_pid/environ\", \"/proc/$main_pid/mem\", \"/usr/local/lib/conveyor-test/control\"]}")
until_true "the snoop job succeeded" "conveyor status $snoop | grep -q succeeded"
in_box conveyor status "$snoop" --json >/tmp/in-systemd-snoop.json || fail "conveyor status --json"
python3 - "$main_pid" "$(in_box id -u conveyor-worker)" /tmp/in-systemd-snoop.json <<'PY' || fail "a worker reached a secret (above)"
import json, sys
main_pid, worker_uid, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
record = json.load(open(path))
result = record["result"]
result = json.loads(result) if isinstance(result, str) else result
tried, found = result["tried"], result["found"]
problems = []
if result["uid"] != worker_uid:
    problems.append("the worker runs as uid %s, not conveyor-worker's %s" % (result["uid"], worker_uid))
if any(v != "0000000000000000" for v in result["caps"].values()):
    problems.append("the worker holds capabilities: %s" % result["caps"])
hits = {p: h for p, h in found.items() if h != ["box-control-0c4e6a2b"]}
if hits:
    problems.append("secrets found: %s" % hits)
if not any("box-control-0c4e6a2b" in h for h in found.values()):
    problems.append("the control file was not found: the search is broken")
for p in ["/proc/%s/environ" % main_pid, "/proc/%s/mem" % main_pid,
          "/run/credentials/conveyor.service/", "/etc/conveyor/env", "/etc/conveyor/smtp_password"]:
    if tried.get(p) not in ("denied", "missing"):
        problems.append("%s: %s" % (p, tried.get(p)))
print("in-systemd: the worker tried %d paths; found only the control file" % len(tried))
for p in problems:
    print("in-systemd: " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY

say "reload with a queue added"
in_box sh -c 'printf "\n[queues.extra]\nhandler = \"noop\"\n" >> /etc/conveyor/conveyor.toml'
in_box systemctl reload conveyor
until_true "the reload is logged" "journalctl -u conveyor --no-pager | grep -q 'configuration reloaded'"
in_box conveyor enqueue extra '{}' >/dev/null
until_true "the added queue runs" "$(processed extra 1)"
[ "$(in_box systemctl show -p MainPID --value conveyor)" != 0 ] || fail "not running after the reload"

say "a configuration that does not validate is refused, the service stays up"
in_box sh -c 'cp /etc/conveyor/conveyor.toml /root/good.toml; printf "\n[queues.bad]\nhandlr = \"noop\"\n" >> /etc/conveyor/conveyor.toml'
in_box systemctl reload conveyor
until_true "the refusal is logged" "journalctl -u conveyor --no-pager | grep -q 'reload refused'"
[ "$(in_box systemctl is-active conveyor)" = active ] || fail "a refused reload stopped the service"
in_box cp /root/good.toml /etc/conveyor/conveyor.toml

say "stop"
in_box systemctl stop conveyor
journal=$(in_box journalctl -u conveyor --no-pager)
grep -q 'shutting down' <<<"$journal" || fail "no shutdown in the journal"
grep -q 'stopped node=' <<<"$journal" || fail "no clean stop in the journal"
[ "$(in_box systemctl show -p ExecMainStatus --value conveyor)" = 0 ] || fail "the stop did not exit 0"

say "remove while running: stopped first"
in_box systemctl start conveyor
until_true "the service is active again" "systemctl is-active conveyor"
in_box dpkg -r conveyor >/dev/null
[ "$(in_box systemctl is-active conveyor || true)" != active ] || fail "still running after removal"
[ "$(in_box journalctl -u conveyor --no-pager | grep -c 'stopped node=')" -ge 2 ] || fail "removal did not stop it cleanly"
in_box test -f /etc/conveyor/conveyor.toml || fail "removal took the configuration (a conffile stays until purge)"
in_box dpkg -P conveyor >/dev/null
in_box test ! -e /etc/conveyor/smtp_password || fail "purge left the SMTP credential file"
in_box test ! -e /etc/conveyor/redis_password || fail "purge left the Redis credential file"
in_box test ! -e /etc/conveyor/web_token || fail "purge left the web token file"
say "ok"
