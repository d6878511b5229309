#!/usr/bin/env python3
"""Proxy benchmark: GET /session through occ-init's proxy vs opencode directly vs nginx (Debian's
nginx as a plain reverse proxy with Basic auth from a file), same machine, same run; time to the
first server-sent event; the proxy's idle RSS and its RSS holding 1,000 idle connections.

The load comes from wrk (Debian's package). Requests carry HTTP Basic credentials that the proxy
has already verified once (it caches a verified login for 60 s and re-checks the user's lock every
second), so the numbers are the proxy's relay cost, not yescrypt's.
Run as root after `cargo build --release`: `python3 bench/proxy.py` (installs wrk and nginx).
"""
import base64
import glob
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OCC = os.path.join(ROOT, "target/release/occ-init")
USER, PASSWORD = "bench", "bench password 1"
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


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


def get(port, path, headers="", timeout=10):
    """Status of one GET (the body is read by Content-Length; servers may keep the connection)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
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


def wrk(port, conns, seconds=5):
    threads = min(conns, 2)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency",
                          "-H", f"Authorization: {AUTH}", f"http://127.0.0.1:{port}/session"],
                         capture_output=True, text=True, timeout=seconds + 30, check=True).stdout

    def ms(label):
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v = float(m.group(1))
        return {"us": v / 1000, "ms": v, "s": v * 1000}[m.group(2)]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return ms("50%"), ms("99%"), rps, errors


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


def main():
    if os.geteuid() != 0:
        sys.exit("bench/proxy.py: run as root")
    if not shutil.which("wrk") or not shutil.which("nginx"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk", "nginx-light"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    oc = (os.environ.get("OCC_TEST_OPENCODE")
          or next(iter(glob.glob(f"{ROOT}/.cache/opencode-*/node_modules/opencode-linux-x64/bin/opencode")), None))
    if not oc:
        sys.exit("bench/proxy.py: opencode not found (run tests/run once, or set OCC_TEST_OPENCODE)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = tempfile.mkdtemp(prefix="occ-proxy-bench-")
    os.chmod(tmp, 0o755)
    subprocess.run(["cp", "-a", "/etc", f"{tmp}/etc"], check=True)
    shutil.copy(f"{ROOT}/rootfs/etc/pam.d/opencode", f"{tmp}/etc/pam.d/opencode")
    os.makedirs(f"{tmp}/home")
    port = free_port()
    sock = f"{tmp}/run/admin.sock"
    with open(f"{tmp}/init.toml", "w") as f:
        f.write(f"command = ['{oc}', 'serve']\nhost = '127.0.0.1'\nport = {port}\n"
                f"admin_socket = '{sock}'\nauth_socket = '{tmp}/proxy/auth.sock'\n"
                f"users_file = '{tmp}/users.toml'\nservice_user = 'benchoc'\n"
                "env = { OPENCODE_DISABLE_AUTOUPDATE = 'true' }\n")
    env = {**os.environ, "OCC_CONFIG": f"{tmp}/init.toml", "OCC_LOG": "warn"}
    script = (f'mount --bind "{tmp}/etc" /etc && mount --bind "{tmp}/home" /home && '
              'useradd -m benchoc && exec "$@"')
    p = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
                          "sh", "-c", script, "sh", OCC], env=env, stderr=subprocess.DEVNULL)
    nginx = None
    held = []
    try:
        deadline = time.time() + 120
        status = None
        while time.time() < deadline:
            try:
                code, body = unix_request(sock, "GET", "/v1/status")
                status = json.loads(body)
                if status["opencode"]["ready"] and status["proxy"]["ready"]:
                    break
            except (OSError, ValueError, KeyError, TypeError):
                pass
            time.sleep(0.2)
        else:
            sys.exit(f"occ-init did not become ready: {status}")
        code, _ = unix_request(sock, "POST", "/v1/users", json.dumps({"name": USER, "password": PASSWORD}))
        assert code == 201, code
        direct = int(status["opencode"]["listen"].rsplit(":", 1)[1])
        proxy_pid = int(subprocess.run(["pgrep", "-n", "-x", "occ-proxy"], capture_output=True,
                                       text=True, check=True).stdout.split()[0])
        # nginx: plain reverse proxy with Basic auth from a file, SSE unbuffered.
        hashed = subprocess.run(["openssl", "passwd", "-apr1", PASSWORD], capture_output=True,
                                text=True, check=True).stdout.strip()
        open(f"{tmp}/htpasswd", "w").write(f"{USER}:{hashed}\n")
        ng_port = free_port()
        open(f"{tmp}/nginx.conf", "w").write(f"""
worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off; upstream oc {{ server 127.0.0.1:{direct}; keepalive 64; }}
  map $http_upgrade $conn {{ default upgrade; '' ''; }}
  server {{ listen 127.0.0.1:{ng_port}; auth_basic "opencode"; auth_basic_user_file {tmp}/htpasswd;
    location / {{ proxy_pass http://oc; proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $conn; proxy_buffering off; proxy_set_header Authorization ""; }} }} }}
""")
        nginx = subprocess.Popen(["nginx", "-c", f"{tmp}/nginx.conf"], stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        hdr = f"Authorization: {AUTH}\r\n"
        for prt in (direct, port, ng_port):  # warm-up (the proxy verifies the login once here)
            assert get(prt, "/session", hdr, timeout=30) == 200, prt
        idle_rss = rss_kib(proxy_pid)
        rows = []
        for name, prt in (("opencode directly", direct), ("occ-init proxy", port), ("nginx (Basic, file)", ng_port)):
            one = wrk(prt, 1)
            many = wrk(prt, 64)
            sse = sorted(first_event(prt, hdr) for _ in range(5))[2]
            rtt = ws_echo_rtt(prt, hdr)
            rows.append((name, one, many, sse, rtt))
        # 1,000 idle keep-alive connections, each after one request.
        errors = 0
        for _ in range(1000):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(f"GET /global/health HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = s.recv(4096)
            if not data.startswith(b"HTTP/1.1 200"):
                errors += 1
            held.append(s)
        time.sleep(1)
        busy_rss = rss_kib(proxy_pid)
        alive = 0
        for s in held[:50]:
            s.sendall(b"GET /global/health HTTP/1.1\r\nHost: x\r\n\r\n")
            if s.recv(4096).startswith(b"HTTP/1.1 200"):
                alive += 1
        errors += 50 - alive
    finally:
        for s in held:
            s.close()
        if nginx:
            nginx.kill()
            nginx.wait()
        p.kill()
        p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    base = rows[0]
    print("| path | p50 1 client (ms) | p99 1 client (ms) | p50 64 clients (ms) | p99 64 clients (ms) | req/s 64 clients | vs direct | errors | first SSE event (ms) | terminal echo p50 (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, one, many, sse, rtt in rows:
        print(f"| {name} | {one[0]:.3f} | {one[1]:.3f} | {many[0]:.2f} | {many[1]:.2f} | {many[2]:.0f} | "
              f"{many[2] / base[2][2]:.2f}× | {one[3] + many[3]} | {sse:.1f} | {rtt:.2f} |")
    print()
    print(f"Added p50 (1 client): proxy {rows[1][1][0] - base[1][0]:+.3f} ms, nginx {rows[2][1][0] - base[1][0]:+.3f} ms")
    print(f"occ-proxy RSS: idle {idle_rss / 1024:.1f} MiB; holding 1,000 idle connections "
          f"{busy_rss / 1024:.1f} MiB; errors {errors}")


if __name__ == "__main__":
    main()
