"""A hostile exec worker (persistent mode): for each job it tries every way
it knows to read the daemon's secrets, and answers with what it got.

The payload names the secrets to look for ("needles": the test knows
them; being told one does not help to read it) and may name more paths to
try ("paths", globbed) besides the /proc entries of each of its ancestors
(environ, mem through maps, fd, task/*/environ), its own environment and
the packaged install's files. The result: {"uid", "gid", "groups",
"caps": {CapEff, CapPrm, CapAmb, CapInh}, "ancestors", "tried": {path:
"read N bytes" | "denied" | "missing" | "error: ..."}, "found": {path:
[needles found in what it read there]}}.
"""
import glob, json, os, sys

SYSTEM_PATHS = [
    "/run/credentials/conveyor.service/*",
    "/etc/conveyor/env",
    "/etc/conveyor/smtp_password",
    "/etc/conveyor/redis_password",
    "/etc/conveyor/web_token",
    "/var/lib/conveyor/*",
]


def ancestors():
    pid = os.getppid()
    seen = []
    while pid > 1 and pid not in seen:
        seen.append(pid)
        try:
            with open("/proc/%d/stat" % pid) as f:
                stat = f.read()
            pid = int(stat[stat.rindex(")") + 2:].split()[1])
        except OSError:
            break
    return seen


def attempt(tried, dump, path, read):
    try:
        data = read(path)
        tried[path] = "read %d bytes" % len(data)
        dump[path] = data
    except PermissionError:
        tried[path] = "denied"
    except FileNotFoundError:
        tried[path] = "missing"
    except OSError as e:
        tried[path] = "error: %s" % e


def read_file(path):
    with open(path, "rb") as f:
        return f.read(1 << 20)


def read_mem(pid):
    def read(_path):
        out = b""
        with open("/proc/%d/maps" % pid) as maps, open("/proc/%d/mem" % pid, "rb") as mem:
            for line in maps:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if "rw" not in line.split()[1]:
                    continue
                try:
                    mem.seek(lo)
                    out += mem.read(min(hi - lo, 1 << 20))
                except OSError:
                    pass
                if len(out) > 64 << 20:
                    break
        return out
    return read


def snoop(payload):
    tried, dump = {}, {"environment": json.dumps(dict(os.environ)).encode()}
    for pid in ancestors():
        base = "/proc/%d" % pid
        attempt(tried, dump, base + "/environ", read_file)
        attempt(tried, dump, base + "/mem", read_mem(pid))
        attempt(tried, dump, base + "/fd", lambda p: "\n".join(os.listdir(p)).encode())
        for task in glob.glob(base + "/task/*"):
            attempt(tried, dump, task + "/environ", read_file)
    for pattern in SYSTEM_PATHS + list(payload.get("paths", [])):
        matches = glob.glob(pattern) or [pattern.replace("*", "")]
        for path in matches:
            if os.path.isdir(path):
                attempt(tried, dump, path, lambda p: "\n".join(os.listdir(p)).encode())
            else:
                attempt(tried, dump, path, read_file)
    caps = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("CapEff", "CapPrm", "CapAmb", "CapInh"):
                caps[key] = value.strip()
    needles = [n.encode() for n in payload.get("needles", [])]
    found = {}
    for path, data in dump.items():
        hits = [n.decode() for n in needles if n in data]
        if hits:
            found[path] = hits
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "caps": caps,
        "ancestors": ancestors(),
        "tried": tried,
        "found": found,
    }


for line in sys.stdin:
    req = json.loads(line)
    reply = {"id": req["id"], "status": "ok", "result": snoop(req["payload"] or {})}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
