#!/usr/bin/env python3
"""Proxy benchmark: occ-init's authenticating proxy (occ-proxy) against nginx, same machine, same
run, in two parts (method and results: docs/benchmarks.md, "The login proxy").

1. Fast upstream (the proxy's own cost). opencode tops out near 1,300 req/s here, which hides
   what the proxy itself costs, so this part puts a static server behind the proxies: a separate
   nginx (one worker) answering every request at once with a fixed 40-byte JSON body
   (`return 200 '{"healthy":true,...}'`, keep-alive, Content-Length), ~100,000 req/s here.
   Rows: that upstream directly; occ-proxy in front of it; nginx as a reverse proxy in front of
   it, configured as occ-proxy behaves (one worker, as occ-proxy is one thread; `upstream {
   keepalive 64; }`, `proxy_http_version 1.1`, `Connection ""`, no buffering, opencode's
   Authorization sent upstream, X-Forwarded-*), with Basic auth from an htpasswd file twice: a
   `{SHA}` entry (one SHA-1 per request, the nearest thing to occ-proxy's cached login; the row
   the ratios are to) and an apr1 entry (`openssl passwd -apr1`, what `htpasswd` writes by
   default and the opencode rows use: nginx re-reads the file and runs 1,000 MD5 rounds on every
   request, it caches nothing). For each row: wrk at 1 connection (p50/p99) and at 64 connections
   (req/s, p50, p99; the median of --rounds interleaved rounds), and CPU per request: utime+stime
   of the serving process from /proc/PID/stat before and after each wrk run, divided by the
   requests wrk completed (occ-proxy: its one process, all threads; nginx: master and worker; the
   direct row: the upstream). Also shown: the upstream's CPU per request, PID 1's CPU, and "other
   CPU", the machine's busy time minus everything this run started (wrk included), which flags
   runs another job disturbed. Then one "first burst" run: 64 connections at once with a login
   the proxy has not verified yet (what load also meets when a cached login expires).

   How occ-proxy is started for it: not by hand against a fake auth socket. The proxy asks PID 1
   over the auth socket to verify passwords, look up logins, hand over opencode's upstream
   password and keep sessions, so the bench boots a real occ-init as PID 1 of a users sandbox (as
   for the opencode rows) whose `command` is the static nginx instead of opencode:
   `internal_port` pins opencode's port, the command is `sh -c 'exec nginx -g "daemon off;" -c
   CONF' fast-upstream` (the `--hostname/--port` occ-init appends become ignored shell
   arguments), nginx runs in the foreground as the service user, and it answers `/global/health`
   (every path) with `{"healthy":true,...}` so occ-init's probe passes. occ-init then starts and
   supervises occ-proxy exactly as in production (its own user, the public socket as fd 3, the
   real auth socket). The repository's fake opencode (`occ-test-child fake-opencode`) is not used:
   it answers one request per connection (`Connection: close`) on one thread.

1b. TLS (`--tls`, also part of a full run): the same fast upstream behind occ-proxy serving HTTPS
   (`tls = files`, an ECDSA P-256 certificate made with openssl) and behind nginx serving HTTPS
   with the same certificate and key (one worker, TLS 1.2/1.3, Basic from a {SHA} file, session
   cache and tickets off so every new connection is a full handshake for both). Rows: full
   handshakes per second (`openssl s_time -new`, 4 clients at once, no resumption) with the
   server's CPU per handshake; kept-alive requests per second over TLS
   (wrk, 64 connections, the median of --rounds interleaved rounds) with CPU per request; the
   negotiated protocol and cipher; occ-proxy's RSS idle with TLS on.

2. opencode (as before): occ-init with the real opencode; `GET /session` directly, through the
   proxy and through nginx (apr1 Basic file); time to the first server-sent event; terminal echo
   through a WebSocket; the proxy's idle RSS and its RSS holding 1,000 idle connections. opencode
   has a random per-start password behind the proxy: the bench reads the Authorization PID 1 hands
   the proxy (`GET /v1/auth/state` on the auth socket, as root) for the direct row and nginx.

Requests carry HTTP Basic credentials the proxy has already verified (it caches a verified login
for 60 s and re-checks the user's lock every second), so the numbers are the proxy's relay cost,
not yescrypt's: the proxy rows switch to a new bench user whenever the current login would expire
during the next run. Everything started is killed at the end, on failure and on SIGTERM too (and
gets SIGKILL should this script die); every subprocess runs under a deadline, the whole run too.

Run as root after `cargo build --release`: `python3 bench/proxy.py [--fast-only | --opencode-only]
[--tls-only] [--rounds N] [--seconds S] [--wait-idle S] [--bin-dir DIR]` (installs wrk and nginx from Debian
when missing). On a shared machine, `--wait-idle 60` waits before each wrk run for other work to
stop; `--bin-dir` compares another build's occ-init and occ-proxy.
"""
import argparse
import base64
import ctypes
import glob
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OCC = os.path.join(ROOT, "target/release/occ-init")
PROXY_BIN = os.path.join(ROOT, "target/release/occ-proxy")
USER, PASSWORD = "bench", "bench password 1"


def basic(user, password=PASSWORD):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


AUTH = basic(USER)
HDR = f"Authorization: {AUTH}\r\n"
CLK_TCK = os.sysconf("SC_CLK_TCK")
FAST_BODY = '{"healthy":true,"bench":"fast upstream"}'


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def unix_request(sock, method, path, body=""):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(sock)
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


def tls_context():
    """A client context that accepts the bench's own certificate (verification is the tests')."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def get(port, path, headers="", timeout=10, tls=False):
    """Status of one GET (the body is read by Content-Length; servers may keep the connection)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls:
        s = tls_context().wrap_socket(s, server_hostname="localhost")
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"content-length:\s*(\d+)", head, re.I)
    while m and len(body) < int(m.group(1)):
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    s.close()
    return int(head.split(b" ", 2)[1])


WAIT_IDLE = 0.0  # --wait-idle


def wait_idle():
    """With --wait-idle S: wait (at most S seconds) until the other work on the machine, outside
    this run's idle servers, is under 5% of the CPUs for a whole second."""
    deadline = time.time() + WAIT_IDLE
    while time.time() < deadline and busy_percent(1.0) >= 5:
        pass


def wrk(port, conns, seconds=5, path="/session", auth=None, wait=True, scheme="http"):
    """One wrk run: dict with p50/p99/max (ms), rps, requests, errors."""
    if wait:
        wait_idle()
    threads = min(conns, 2)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency",
                          "-H", f"Authorization: {auth or AUTH}", f"{scheme}://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=seconds + 30, check=True).stdout

    def ms(label):
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v = float(m.group(1))
        return {"us": v / 1000, "ms": v, "s": v * 1000}[m.group(2)]
    m = re.search(r"^\s*Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\s", out, re.M)
    worst = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"^\s*(\d+) requests in", out, re.M).group(1))
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return {"p50": ms("50%"), "p99": ms("99%"), "max": worst, "rps": rps, "requests": requests, "errors": errors}


def first_event(port, headers):
    t = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET /global/event HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{headers}\r\n".encode())
    data = b""
    while b"server.connected" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    return (time.perf_counter() - t) * 1000


def post_json(port, path, headers, body="{}"):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
              f"{headers}Content-Length: {len(body)}\r\n\r\n{body}".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    m = re.search(rb"content-length:\s*(\d+)", head, re.I)
    if m:
        while len(rest) < int(m.group(1)):
            rest += s.recv(65536)
    elif re.search(rb"transfer-encoding:\s*chunked", head, re.I):
        while not rest.endswith(b"0\r\n\r\n"):
            rest += s.recv(65536)
        body, raw = b"", rest
        while True:
            size_line, _, raw = raw.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body, raw = body + raw[:size], raw[size + 2:]
        rest = body
    s.close()
    try:
        return json.loads(rest)
    except ValueError:
        sys.exit(f"POST {path} on port {port}: unexpected answer {head[:200]!r} {rest[:200]!r}")


def ws_echo_rtt(port, headers, rounds=20):
    """Median time from sending `echo TOKEN` into a terminal WebSocket to reading TOKEN back."""
    pty = post_json(port, "/pty", headers)
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET /pty/{pty['id']}/connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              f"Sec-WebSocket-Version: 13\r\n{headers}\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    s.settimeout(10)

    def send(text):
        data = text.encode()
        mask = b"\x01\x02\x03\x04"
        s.sendall(bytes([0x81, 0x80 | len(data)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def read_until(token):
        seen = b""
        while token not in seen:
            seen += s.recv(65536)
    times = []
    for i in range(rounds):
        # The shell echoes what is typed: the command says $((i+1)), only its output has it.
        t = time.perf_counter()
        send(f"echo rtt{i}x$(({i}+1))y\n")
        read_until(f"rtt{i}x{i + 1}y".encode())
        times.append((time.perf_counter() - t) * 1000)
    s.close()
    return sorted(times)[len(times) // 2]


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def comm(pid):
    try:
        return open(f"/proc/{pid}/comm").read().strip()
    except OSError:
        return None


def descendants(pid):
    """PIDs below `pid` (as seen from here, outside any PID namespace)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                kids = [int(k) for k in open(f"/proc/{p}/task/{t}/children").read().split()]
                out += kids
                todo += kids
        except OSError:
            pass
    return out


def cpu_split(pids):
    """(utime, stime) in clock ticks summed over `pids` (each a whole process, all its threads)."""
    user = system = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user, system = user + int(fields[11]), system + int(fields[12])  # fields 14 and 15
    return user, system


def cpu_ticks(pids):
    return sum(cpu_split(pids))


def machine_ticks():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(f), sum(f) - f[3] - f[4]  # all, busy (not idle or iowait)


def busy_percent(seconds=2.0):
    """Share of all CPUs not idle over `seconds` (other work on the machine skews every row)."""
    all0, busy0 = machine_ticks()
    time.sleep(seconds)
    all1, busy1 = machine_ticks()
    return 100.0 * (busy1 - busy0) / max(all1 - all0, 1)


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


class Runner:
    """Everything this run starts, killed at the end (also on failure or a signal)."""

    def __init__(self):
        self.procs = []
        self.socks = []
        self.tmp = tempfile.mkdtemp(prefix="occ-proxy-bench-")
        os.chmod(self.tmp, 0o755)

    def popen(self, argv, **kw):
        # Own process group (killed as a group at the end) and SIGKILL should this script die.
        libc = ctypes.CDLL(None, use_errno=True)
        p = subprocess.Popen(argv, start_new_session=True, preexec_fn=lambda: libc.prctl(1, 9), **kw)
        self.procs.append(p)
        return p

    def stop(self, p, grace=5):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=grace)
            except (OSError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(p.pid, signal.SIGKILL)  # leftovers in its group (nginx workers)
        except OSError:
            pass
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass

    def close(self):
        for s in self.socks:
            s.close()
        self.socks = []
        for p in reversed(self.procs):
            self.stop(p)
        self.procs = []
        shutil.rmtree(self.tmp, ignore_errors=True)

    def boot(self, name, command, extra=""):
        """occ-init as PID 1 of a users sandbox (own /etc and /home); waits until opencode (here:
        `command`) and the proxy are ready and adds the bench user."""
        d = f"{self.tmp}/{name}"
        os.makedirs(f"{d}/home")
        os.chmod(d, 0o755)
        subprocess.run(["cp", "-a", "/etc", f"{d}/etc"], check=True, timeout=60)
        shutil.copy(f"{ROOT}/rootfs/etc/pam.d/opencode", f"{d}/etc/pam.d/opencode")
        port = free_port()
        sock = f"{d}/run/admin.sock"
        with open(f"{d}/init.toml", "w") as f:
            f.write(f"command = {json.dumps(command)}\nhost = '127.0.0.1'\nport = {port}\n"
                    f"admin_socket = '{sock}'\nauth_socket = '{d}/proxy/auth.sock'\n"
                    f"users_file = '{d}/users.toml'\nservice_user = 'benchoc'\n"
                    f"proxy_command = '{PROXY_BIN}'\n"
                    "env = { OPENCODE_DISABLE_AUTOUPDATE = 'true' }\n"
                    + ("" if "instances =" in extra else "instances = 'shared'\n") + extra)
        env = {**os.environ, "OCC_CONFIG": f"{d}/init.toml", "OCC_LOG": os.environ.get("BENCH_OCC_LOG", "warn")}
        script = (f'mount --bind "{d}/etc" /etc && mount --bind "{d}/home" /home && '
                  'useradd -m benchoc && exec "$@"')
        log = open(f"{d}/occ-init.log", "w")
        p = self.popen(["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc", "--kill-child",
                        "sh", "-c", script, "sh", OCC], env=env, stdout=log, stderr=log)
        deadline = time.time() + 120
        status = None
        while time.time() < deadline and p.poll() is None:
            try:
                code, body = unix_request(sock, "GET", "/v1/status")
                status = json.loads(body)
                if status["opencode"]["ready"] and status["proxy"]["ready"]:
                    break
            except (OSError, ValueError, KeyError, TypeError):
                pass
            time.sleep(0.2)
        else:
            tail = open(f"{d}/occ-init.log").read()[-2000:]
            sys.exit(f"occ-init ({name}) did not become ready: {status}\n{tail}")
        code, _ = unix_request(sock, "POST", "/v1/users", json.dumps({"name": USER, "password": PASSWORD}))
        assert code == 201, code
        below = descendants(p.pid)
        pid1 = next(q for q in below if comm(q) == "occ-init")
        proxy = [q for q in below if comm(q) == "occ-proxy"]
        assert len(proxy) == 1, proxy
        # Behind the proxy opencode gets a random password at every start; PID 1 hands the proxy
        # the matching Authorization over the auth socket (root may ask too). The direct rows and
        # nginx send it as the proxy does.
        code, body = unix_request(f"{d}/proxy/auth.sock", "GET", "/v1/auth/state")
        upstream_auth = json.loads(body).get("upstream_authorization") if code == 200 else None
        listen = status["opencode"]["listen"].rsplit(":", 1)
        return {"dir": d, "proc": p, "port": port, "sock": sock, "status": status, "pid1": pid1,
                "proxy": proxy[0], "upstream": int(listen[1]) if len(listen) == 2 else None,
                "upstream_auth": upstream_auth or AUTH, "tls": "tls = 'files'" in extra}

    def nginx_proxy(self, name, upstream_port, htpasswd_line, upstream_auth, tls=None):
        """Debian's nginx as a reverse proxy with Basic auth from a file, configured as occ-proxy
        behaves: upstream keep-alive, no buffering, WebSocket upgrades, the client's Authorization
        replaced by opencode's, X-Forwarded-For/-Proto/-Host set; one worker (occ-proxy is one
        thread). With `tls` = (cert, key): HTTPS, TLS 1.2/1.3, session cache and tickets off (every
        new connection a full handshake). Returns (port, proc)."""
        d = f"{self.tmp}/{name}"
        os.makedirs(d)
        os.chmod(d, 0o755)
        open(f"{d}/htpasswd", "w").write(f"{USER}:{htpasswd_line}\n")
        os.chmod(f"{d}/htpasswd", 0o644)
        port = free_port()
        ssl = "" if tls is None else (
            f" ssl; ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]}; "
            "ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off")
        open(f"{d}/nginx.conf", "w").write(f"""
worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 64; keepalive_requests 1000000; }}
  map $http_upgrade $conn {{ default upgrade; '' ''; }}
  server {{ listen 127.0.0.1:{port}{ssl}; auth_basic "opencode"; auth_basic_user_file {d}/htpasswd;
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $conn; proxy_buffering off; proxy_set_header Authorization "{upstream_auth}";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host; }} }} }}
""")
        p = self.popen(["nginx", "-e", f"{d}/nginx.err", "-c", f"{d}/nginx.conf"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port, p, f"{d}/nginx.err")
        return port, p


def wait_port(port, proc, log, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}: {open(log).read()[-2000:] if os.path.exists(log) else ''}")


def basic_cache_ttl():
    """How long occ-proxy trusts a verified Basic login (read from its source; 60 s today)."""
    try:
        src = open(f"{ROOT}/src/proxy/server.rs").read()
        return int(re.search(r"BASIC_CACHE_TTL: Duration = Duration::from_secs\((\d+)\)", src).group(1))
    except (OSError, AttributeError):
        return 60


class Logins:
    """Basic credentials for the proxy rows, each used only well within the proxy's cache of its
    verification: the steady rows measure the relay with a cached login; what a cache miss under
    load costs (the entry expiring, or a client's first burst) is measured on its own (`burst`)."""

    def __init__(self, sb):
        self.sb, self.n, self.at, self.auth = sb, 0, 0.0, None
        self.ttl = basic_cache_ttl()

    def new_user(self):
        self.n += 1
        name = f"{USER}{self.n}"
        code, _ = unix_request(self.sb["sock"], "POST", "/v1/users", json.dumps({"name": name, "password": PASSWORD}))
        assert code == 201, code
        return basic(name)

    def fresh(self, seconds):
        """A credential the proxy has verified and will still trust `seconds` (+5) from now."""
        if self.auth is None or time.time() + seconds + 5 > self.at + self.ttl:
            auth = self.new_user()
            self.at = time.time()
            assert get(self.sb["port"], "/session", f"Authorization: {auth}\r\n", timeout=30,
                       tls=self.sb.get("tls", False)) == 200
            self.auth = auth
        return self.auth


def measure(port, conns, seconds, pids, upstream_pids, pid1, auth=None, scheme="http"):
    """A wrk run plus the CPU (µs per request) of `pids`, of the upstream and of PID 1, and the
    share of the machine's CPU that went to anything else (other work skews the row)."""
    everyone = sorted(set(pids) | set(upstream_pids) | ({pid1} if pid1 else set()))

    def snap():
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once waited for
        return (cpu_ticks(pids), cpu_ticks(upstream_pids), cpu_ticks([pid1]) if pid1 else 0,
                cpu_ticks(everyone) + (ru.ru_utime + ru.ru_stime) * CLK_TCK, *machine_ticks(),
                cpu_split(pids)[0])
    wait_idle()
    if callable(auth):  # chosen after the wait (a cached login must not age during it)
        auth = auth()
    before = snap()
    r = wrk(port, conns, seconds, auth=auth, wait=False, scheme=scheme)
    after = snap()
    d = [a - b for a, b in zip(after, before)]
    per = [x * 1e6 / CLK_TCK / max(r["requests"], 1) for x in d[:2] + [d[6]]]
    r["cpu_us"], r["up_cpu_us"], r["user_us"] = per
    r["pid1_ms"] = d[2] * 1000 / CLK_TCK
    r["other_pct"] = max(0.0, 100.0 * (d[5] - d[3]) / max(d[4], 1))
    return r


def fast_part(run, args):
    # The service user (created in the sandbox) writes the upstream's pid and temp files.
    up_port, cmd = fast_upstream(run)
    sb = run.boot("fast", cmd, f"internal_port = {up_port}\n")
    assert sb["upstream"] == up_port, sb["status"]
    upstream_pids = [q for q in descendants(sb["pid1"]) if comm(q) == "nginx"]
    assert len(upstream_pids) == 2, upstream_pids  # master and one worker
    sha = "{SHA}" + base64.b64encode(hashlib.sha1(PASSWORD.encode()).digest()).decode()
    apr1 = subprocess.run(["openssl", "passwd", "-apr1", PASSWORD], capture_output=True,
                          text=True, check=True, timeout=10).stdout.strip()
    ng_sha, ng_sha_p = run.nginx_proxy("nginx-sha", up_port, sha, sb["upstream_auth"])
    ng_apr, ng_apr_p = run.nginx_proxy("nginx-apr1", up_port, apr1, sb["upstream_auth"])
    paths = [  # name, port, serving processes
        ("fast upstream directly", up_port, upstream_pids),
        ("occ-init proxy", sb["port"], [sb["proxy"]]),
        ("nginx (Basic, {SHA} file)", ng_sha, [ng_sha_p.pid] + descendants(ng_sha_p.pid)),
        ("nginx (Basic, apr1 file)", ng_apr, [ng_apr_p.pid] + descendants(ng_apr_p.pid)),
    ]
    logins = Logins(sb)

    def auth_for(prt):
        if prt == sb["port"]:
            return logins.fresh(args.seconds)
        return sb["upstream_auth"] if prt == up_port else AUTH
    for _, prt, _ in paths:  # warm-up (the proxy verifies a login here)
        assert get(prt, "/session", f"Authorization: {auth_for(prt)}\r\n", timeout=30) == 200, prt
        wrk(prt, 8, 1, auth=auth_for(prt))
    one, many = {}, {n: [] for n, _, _ in paths}
    for name, prt, pids in paths:
        one[name] = measure(prt, 1, args.seconds, pids, upstream_pids, sb["pid1"], lambda: auth_for(prt))
    for i in range(args.rounds):
        order = paths[i % len(paths):] + paths[:i % len(paths)]
        for name, prt, pids in order:
            many[name].append(measure(prt, 64, args.seconds, pids, upstream_pids, sb["pid1"],
                                      lambda: auth_for(prt)))
    # A cache miss under load: 64 connections at once with a login the proxy has not verified yet
    # (a client's first burst; also what every request sees when a cached login expires).
    burst = measure(sb["port"], 64, 3, [sb["proxy"]], upstream_pids, sb["pid1"], logins.new_user)
    proxy_now = [q for q in descendants(sb["pid1"]) if comm(q) == "occ-proxy"]
    assert proxy_now == [sb["proxy"]], f"the proxy restarted during the run: {proxy_now}"
    rows = []
    for name, _, _ in paths:
        rs = many[name]
        rows.append((name, one[name], {k: median([r[k] for r in rs]) for k in rs[0]},
                     sum(r["errors"] for r in rs) + one[name]["errors"], rs))
    return rows, burst, logins.ttl


def fast_upstream(run):
    """The static nginx that stands in for opencode: (port, command for occ-init, its dir)."""
    nginx_bin = shutil.which("nginx")
    up_port = free_port()
    u = f"{run.tmp}/upstream"
    os.makedirs(u)
    os.chmod(u, 0o1777)
    open(f"{u}/nginx.conf", "w").write(f"""
worker_processes 1; pid {u}/nginx.pid; error_log {u}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path {u}/body; proxy_temp_path {u}/proxy; fastcgi_temp_path {u}/fastcgi;
  uwsgi_temp_path {u}/uwsgi; scgi_temp_path {u}/scgi;
  server {{ listen 127.0.0.1:{up_port}; default_type application/json;
    location / {{ return 200 '{FAST_BODY}'; }} }} }}
""")
    os.chmod(f"{u}/nginx.conf", 0o644)
    cmd = ["/bin/sh", "-c", f"exec {nginx_bin} -e {u}/nginx.err -g 'daemon off;' -c {u}/nginx.conf", "fast-upstream"]
    return up_port, cmd


def handshakes(port, seconds, pids, clients=4):
    """Full TLS handshakes per second: `clients` `openssl s_time -new` at once (no resumption;
    without -www s_time only connects and handshakes). Returns (per second, server CPU µs each)."""
    wait_idle()
    before = cpu_ticks(pids)
    procs = [subprocess.Popen(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new",
                               "-time", str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True) for _ in range(clients)]
    total = 0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 30)
        m = re.search(r"(\d+) connections in ([\d.]+)s", out)
        total += int(m.group(1)) if m else 0
    cpu = cpu_ticks(pids) - before
    return total / seconds, cpu * 1e6 / CLK_TCK / max(total, 1)


def negotiated(port):
    """The protocol and cipher a default client gets."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with tls_context().wrap_socket(raw, server_hostname="localhost") as s:
            return f"{s.version()} {s.cipher()[0]}"


def tls_part(run, args):
    up_port, cmd = fast_upstream(run)
    c = f"{run.tmp}/certs"
    os.makedirs(c)
    os.chmod(c, 0o755)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", f"{c}/key.pem", "-out", f"{c}/cert.pem", "-days", "30",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    os.chmod(f"{c}/key.pem", 0o600)
    sb = run.boot("tls", cmd, f"internal_port = {up_port}\ntls = 'files'\n"
                  f"tls_cert_file = '{c}/cert.pem'\ntls_key_file = '{c}/key.pem'\n")
    upstream_pids = [q for q in descendants(sb["pid1"]) if comm(q) == "nginx"]
    sha = "{SHA}" + base64.b64encode(hashlib.sha1(PASSWORD.encode()).digest()).decode()
    ng, ng_p = run.nginx_proxy("nginx-tls", up_port, sha, sb["upstream_auth"],
                               tls=(f"{c}/cert.pem", f"{c}/key.pem"))
    logins = Logins(sb)
    paths = [("occ-init proxy (TLS)", sb["port"], [sb["proxy"]]),
             ("nginx (TLS, Basic {SHA} file)", ng, [ng_p.pid] + descendants(ng_p.pid))]

    def auth_for(prt):
        return logins.fresh(args.seconds) if prt == sb["port"] else AUTH
    for _, prt, _ in paths:  # warm-up
        assert get(prt, "/session", f"Authorization: {auth_for(prt)}\r\n", timeout=30, tls=True) == 200, prt
        wrk(prt, 8, 1, auth=auth_for(prt), scheme="https")
    idle_rss = rss_kib(sb["proxy"])
    hs = {n: [] for n, _, _ in paths}
    ka = {n: [] for n, _, _ in paths}
    for i in range(args.rounds):
        order = paths[i % 2:] + paths[:i % 2]
        for name, prt, pids in order:
            hs[name].append(handshakes(prt, args.seconds, pids))
            ka[name].append(measure(prt, 64, args.seconds, pids, upstream_pids, sb["pid1"],
                                    lambda: auth_for(prt), scheme="https"))
    proxy_now = [q for q in descendants(sb["pid1"]) if comm(q) == "occ-proxy"]
    assert proxy_now == [sb["proxy"]], f"the proxy restarted during the run: {proxy_now}"
    rows = []
    for name, prt, _ in paths:
        rows.append((name, negotiated(prt), median([h[0] for h in hs[name]]), median([h[1] for h in hs[name]]),
                     {k: median([r[k] for r in ka[name]]) for k in ka[name][0]},
                     sum(r["errors"] for r in ka[name]), hs[name], ka[name]))
    return rows, idle_rss


def print_tls(rows, idle_rss, args):
    ref = rows[1]
    print(f"TLS (same fast upstream, same certificate and key, ECDSA P-256); medians of {args.rounds} "
          f"interleaved {args.seconds}-s rounds; ratios are to nginx")
    print()
    print("| path | negotiated | full handshakes/s (4 clients) | vs nginx | CPU/handshake (µs) | req/s 64 kept-alive | "
          "vs nginx | p50 64 (ms) | p99 64 (ms) | CPU/req (µs) | CPU/req vs nginx | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, neg, hps, hcpu, m, errors, _, _ in rows:
        print(f"| {name} | {neg} | {hps:.0f} | {hps / ref[2]:.2f}× | {hcpu:.0f} | {m['rps']:.0f} | "
              f"{m['rps'] / ref[4]['rps']:.2f}× | {m['p50']:.2f} | {m['p99']:.2f} | {m['cpu_us']:.1f} | "
              f"{m['cpu_us'] / ref[4]['cpu_us']:.2f}× | {errors} |")
    print()
    for name, _, _, _, _, _, hs, ka in rows:
        print(f"  {name}: rounds handshakes/s " + ", ".join(f"{h[0]:.0f}" for h in hs)
              + "; req/s " + ", ".join(f"{r['rps']:.0f}" for r in ka)
              + "; other CPU % " + ", ".join(f"{r['other_pct']:.0f}" for r in ka))
    print()
    print(f"occ-proxy RSS with TLS, idle after the warm-up: {idle_rss / 1024:.1f} MiB")
    print()


def print_fast(rows, burst, ttl, args):
    ref = rows[2][2]  # nginx, {SHA}
    print(f"Fast upstream (nginx `return 200`, {len(FAST_BODY)}-byte JSON); 64-connection figures are "
          f"medians of {args.rounds} interleaved {args.seconds}-s rounds; ratios are to nginx ({{SHA}} file)")
    other = max(r["other_pct"] for row in rows for r in row[4] + [row[1]])
    print(f"Other work on the machine took at most {other:.0f}% of the CPUs during any of these runs.")
    print()
    print("| path | p50 1 conn (ms) | p99 1 conn (ms) | req/s 64 conns | req/s vs nginx | p50 64 (ms) | p99 64 (ms) "
          "| p99 vs nginx | CPU/req (µs) | CPU/req vs nginx | upstream CPU/req (µs) | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    def vs(m, key, direct):
        return "-" if direct else f"{m[key] / ref[key]:.2f}×"
    for i, (name, one, m, errors, _) in enumerate(rows):
        direct = i == 0
        print(f"| {name} | {one['p50']:.3f} | {one['p99']:.3f} | {m['rps']:.0f} | {vs(m, 'rps', direct)} | "
              f"{m['p50']:.2f} | {m['p99']:.2f} | {vs(m, 'p99', direct)} | {m['cpu_us']:.1f} | "
              f"{vs(m, 'cpu_us', direct)} | {m['up_cpu_us']:.1f} | {errors} |")
    print()
    for name, _, _, _, rs in rows:
        print(f"  {name}: rounds req/s " + ", ".join(f"{r['rps']:.0f}" for r in rs)
              + "; p99 " + ", ".join(f"{r['p99']:.2f}" for r in rs)
              + "; CPU/req (of it user) " + ", ".join(f"{r['cpu_us']:.1f} ({r['user_us']:.1f})" for r in rs)
              + "; PID 1 CPU ms " + ", ".join(f"{r['pid1_ms']:.0f}" for r in rs)
              + "; other CPU % " + ", ".join(f"{r['other_pct']:.0f}" for r in rs))
    print()
    print(f"occ-proxy, 64 connections from the start with a login not yet verified (a client's first burst; "
          f"what load sees when a cached login expires, every {ttl} s): {burst['requests']} requests in 3 s, "
          f"{burst['errors']} errors (non-2xx), p99 {burst['p99']:.2f} ms, slowest {burst['max']:.0f} ms, "
          f"PID 1 CPU {burst['pid1_ms']:.0f} ms")
    print()


def opencode_part(run):
    oc = (os.environ.get("OCC_TEST_OPENCODE")
          or next(iter(glob.glob(f"{ROOT}/.cache/opencode-*/node_modules/opencode-linux-x64/bin/opencode")), None))
    if not oc:
        sys.exit("bench/proxy.py: opencode not found (run tests/run once, or set OCC_TEST_OPENCODE)")
    # All the bench's connections come from 127.0.0.1: lift the per-address cap for the 1,000.
    cap = ("max_connections_per_client = 2000\n"
           if "max_connections_per_client" in open(f"{ROOT}/src/config.rs").read() else "")
    sb = run.boot("opencode", [oc, "serve"], cap)
    port, direct, proxy_pid = sb["port"], sb["upstream"], sb["proxy"]
    hdr_for = {direct: f"Authorization: {sb['upstream_auth']}\r\n"}
    # nginx: plain reverse proxy with Basic auth from a file (apr1), SSE unbuffered.
    apr1 = subprocess.run(["openssl", "passwd", "-apr1", PASSWORD], capture_output=True,
                          text=True, check=True, timeout=10).stdout.strip()
    ng_port, ng = run.nginx_proxy("nginx-oc", direct, apr1, sb["upstream_auth"])
    oc_pids = [q for q in descendants(sb["pid1"]) if q != proxy_pid]  # opencode and its children
    for prt in (direct, port, ng_port):  # warm-up (the proxy verifies the login once here)
        assert get(prt, "/session", hdr_for.get(prt, HDR), timeout=30) == 200, prt
    idle_rss = rss_kib(proxy_pid)
    rows = []
    for name, prt, pids in (("opencode directly", direct, oc_pids), ("occ-init proxy", port, [proxy_pid]),
                            ("nginx (Basic, file)", ng_port, [ng.pid] + descendants(ng.pid))):
        auth = sb["upstream_auth"] if prt == direct else AUTH
        one = measure(prt, 1, 5, pids, oc_pids, sb["pid1"], auth)
        many = measure(prt, 64, 5, pids, oc_pids, sb["pid1"], auth)
        time.sleep(1)  # let opencode finish what the load left behind
        sse = sorted(first_event(prt, hdr_for.get(prt, HDR)) for _ in range(5))[2]
        rtt = ws_echo_rtt(prt, hdr_for.get(prt, HDR))
        rows.append((name, one, many, sse, rtt))
    # 1,000 idle keep-alive connections, each after one request.
    errors = 0
    for _ in range(1000):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        run.socks.append(s)
        s.sendall(b"GET /global/health HTTP/1.1\r\nHost: x\r\n\r\n")
        data = s.recv(4096)
        if not data.startswith(b"HTTP/1.1 200"):
            errors += 1
    time.sleep(1)
    busy_rss = rss_kib(proxy_pid)
    alive = 0
    for s in run.socks[:50]:
        s.sendall(b"GET /global/health HTTP/1.1\r\nHost: x\r\n\r\n")
        if s.recv(4096).startswith(b"HTTP/1.1 200"):
            alive += 1
    errors += 50 - alive
    return rows, idle_rss, busy_rss, errors


def print_opencode(rows, idle_rss, busy_rss, errors):
    base = rows[0]
    print("opencode (GET /session)")
    print()
    print("| path | p50 1 client (ms) | p99 1 client (ms) | p50 64 clients (ms) | p99 64 clients (ms) | req/s 64 clients | vs direct | errors | first SSE event (ms) | terminal echo p50 (ms) | CPU/req 64 (µs) | other CPU % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, one, many, sse, rtt in rows:
        print(f"| {name} | {one['p50']:.3f} | {one['p99']:.3f} | {many['p50']:.2f} | {many['p99']:.2f} | {many['rps']:.0f} | "
              f"{many['rps'] / base[2]['rps']:.2f}× | {one['errors'] + many['errors']} | {sse:.1f} | {rtt:.2f} | "
              f"{many['cpu_us']:.0f} | {max(one['other_pct'], many['other_pct']):.0f} |")
    print("(CPU/req: the serving process, opencode's own for the direct row; other CPU: the most any other work"
          " took of the CPUs during the two wrk runs)")
    print()
    print(f"Added p50 (1 client): proxy {rows[1][1]['p50'] - base[1]['p50']:+.3f} ms, "
          f"nginx {rows[2][1]['p50'] - base[1]['p50']:+.3f} ms")
    print(f"occ-proxy RSS: idle {idle_rss / 1024:.1f} MiB; holding 1,000 idle connections "
          f"{busy_rss / 1024:.1f} MiB; errors {errors}")


def build_id():
    def git(*a):
        return subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True, timeout=10).stdout.strip()
    dirty = git("status", "--porcelain", "--untracked-files=no")
    digest = hashlib.sha256(open(PROXY_BIN, "rb").read()).hexdigest()[:12]
    built = time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(PROXY_BIN)))
    where = os.path.dirname(PROXY_BIN)
    if os.path.realpath(where) != os.path.realpath(os.path.join(ROOT, "target/release")):
        return f"occ-proxy {PROXY_BIN} built {built}, sha256 {digest} (built elsewhere: source not known here)"
    return (f"occ-proxy built {built}, sha256 {digest}, this tree at {git('rev-parse', '--short', 'HEAD')}"
            + (f" + uncommitted changes in {len(dirty.splitlines())} file(s)" if dirty else "")
            + " (the binary may be older than the tree)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    part = ap.add_mutually_exclusive_group()
    part.add_argument("--fast-only", action="store_true", help="only the fast-upstream rows")
    part.add_argument("--opencode-only", action="store_true", help="only the opencode rows")
    part.add_argument("--tls-only", action="store_true", help="only the TLS rows")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved 64-connection rounds (fast upstream)")
    ap.add_argument("--seconds", type=int, default=5, help="length of each wrk run (fast upstream)")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="S",
                    help="before each wrk run wait up to S seconds for other work on the machine to stop")
    ap.add_argument("--deadline", type=float, default=900, metavar="S",
                    help="give up (and clean up) after S seconds, plus what --wait-idle may add")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target/release"),
                    help="where occ-init and occ-proxy are (default target/release; to compare builds)")
    args = ap.parse_args()
    global OCC, PROXY_BIN, WAIT_IDLE
    WAIT_IDLE = args.wait_idle
    OCC, PROXY_BIN = os.path.join(args.bin_dir, "occ-init"), os.path.join(args.bin_dir, "occ-proxy")
    # The image's proxy is built with the `proxy` profile (opt-level 3); use that build when there.
    speed = os.path.join(ROOT, "target/proxy/occ-proxy")
    if args.bin_dir == os.path.join(ROOT, "target/release") and os.path.exists(speed):
        PROXY_BIN = speed
    if os.geteuid() != 0:
        sys.exit("bench/proxy.py: run as root")
    if not shutil.which("wrk") or not shutil.which("nginx"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk", "nginx-light"], check=True, timeout=600,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench/proxy.py: terminated"))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit("bench/proxy.py: hung up"))
    signal.signal(signal.SIGALRM, lambda *_: sys.exit("bench/proxy.py: deadline passed"))
    signal.alarm(int(args.deadline + 30 * args.wait_idle))
    print(build_id())
    print(subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=10).stderr.strip()
          + f", {os.cpu_count()} CPUs, kernel {os.uname().release}")
    print()
    fast = oc = tls = None
    busy = [busy_percent()]
    run = Runner()
    try:
        if not args.opencode_only and not args.tls_only:
            fast = fast_part(run, args)
            run.close()  # the fast part's processes are gone before the next part starts
            run = Runner()
            busy.append(busy_percent())
        if not args.opencode_only and not args.fast_only:
            tls = tls_part(run, args)
            run.close()
            run = Runner()
            busy.append(busy_percent())
        if not args.fast_only and not args.tls_only:
            oc = opencode_part(run)
    finally:
        run.close()
    busy.append(busy_percent())
    print("CPU busy with other work before/between/after the parts: "
          + ", ".join(f"{b:.0f}%" for b in busy) + (" (not idle: expect noise)" if max(busy) > 10 else ""))
    print()
    if fast:
        print_fast(*fast, args)
    if tls:
        print_tls(*tls, args)
    if oc:
        print_opencode(*oc)


if __name__ == "__main__":
    main()
