#!/usr/bin/env python3
"""Admin endpoint benchmark: GET /v1/status latency (sequential, and 64 concurrent clients)
and POST /v1/users latency, against occ-init booted as PID 1 of a sandbox (private /etc copy).
The status load comes from a Rust client (occ-test-child admin-load: one thread per client,
one connection per request), so the numbers are the server's, not Python's.
Prints a table. Run as root after `cargo build --release`: `python3 bench/admin.py`.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OCC = os.path.join(ROOT, "target/release/occ-init")
HASH = "$6$abcdefgh$dTmIYmW/LpvGK/iiDSK9zlcKIRJ33.7YE9DETLAR1zX9/2./Fv6/8dFZ1tCs/Kfp//7QeoJfyRWP7XdDzP87j1"


def request(path, method="GET", body=None, sock_path=None):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock_path)
    body = body or ""
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return int(data.split(b" ", 2)[1])


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main():
    if os.geteuid() != 0:
        sys.exit("bench/admin.py: run as root")
    tmp = tempfile.mkdtemp(prefix="occ-admin-bench-")
    subprocess.run(["cp", "-a", "/etc", f"{tmp}/etc"], check=True)
    os.makedirs(f"{tmp}/home")
    sock = f"{tmp}/run/admin.sock"
    env = {**os.environ, "OCC_CONFIG": f"{tmp}/none.toml", "OCC_USERS_FILE": f"{tmp}/users.toml",
           "OCC_ADMIN_SOCKET": sock, "OCC_LOG": "warn", "OCC_COMMAND": "true"}
    open(f"{tmp}/none.toml", "w").close()
    script = f'mount --bind "{tmp}/etc" /etc && mount --bind "{tmp}/home" /home && exec "$@"'
    p = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
                          "sh", "-c", script, "sh", OCC], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while not os.path.exists(sock):
            if time.time() > deadline:
                sys.exit("occ-init did not start")
            time.sleep(0.01)
        time.sleep(0.2)
        child = os.path.join(ROOT, "target/release/occ-test-child")

        def load(clients, per_client):
            out = subprocess.run([child, "admin-load", sock, str(clients), str(per_client)],
                                 capture_output=True, text=True, timeout=600, check=True)
            p50, p99, errs = out.stdout.split()
            return int(p50) / 1000, int(p99) / 1000, int(errs)

        load(4, 50)  # warm-up
        seq = load(1, 2000)
        conc = load(64, 100)
        adds = []
        for i in range(20):
            body = json.dumps({"name": f"bench{i}", "password_hash": HASH})
            t = time.perf_counter()
            assert request("/v1/users", "POST", body, sock) == 201
            adds.append((time.perf_counter() - t) * 1000)
    finally:
        p.kill()
        p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print("| measurement | p50 (ms) | p99 (ms) | errors |")
    print("|---|---|---|---|")
    print(f"| GET /v1/status, sequential (2,000) | {seq[0]:.2f} | {seq[1]:.2f} | {seq[2]} |")
    print(f"| GET /v1/status, 64 concurrent clients (6,400) | {conc[0]:.2f} | {conc[1]:.2f} | {conc[2]} |")
    print(f"| POST /v1/users (hash; useradd + chpasswd -e + manifest write), 20 | {pct(adds, .5):.1f} | {pct(adds, .99):.1f} | 0 |")


if __name__ == "__main__":
    main()
