#!/usr/bin/env python3
"""Crash-restart soak: occ-init (release) as PID 1 of a users sandbox supervises an "opencode"
that exits at once (/bin/false) with a 10 ms backoff, and the authenticating proxy beside it (the
second supervised service). At each checkpoint (restarts of opencode) it prints PID 1's open fds,
threads, VmRSS and anonymous RSS, and the proxy's restarts: fds and threads must never grow, RSS
must stop growing after warm-up.
Run as root after `cargo build --release`: `python3 bench/restarts.py [CHECKPOINT ...]`
(default 500 2000 5000 10000).
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


def status(sock):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock)
    s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    return json.loads(data.partition(b"\r\n\r\n")[2])


def proc_facts(pid):
    st = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        st[k] = v.strip()
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return fds, int(st["Threads"]), int(st["VmRSS"].split()[0]), int(st.get("RssAnon", "0 kB").split()[0])


def occ_pid(unshare_pid):
    # unshare --fork: its child (sh, then exec'd occ-init) is PID 1 of the namespace.
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            kids = open(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read().split()
            if kids and open(f"/proc/{kids[0]}/comm").read().strip() == "occ-init":
                return int(kids[0])
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit("occ-init did not start")


def main():
    if os.geteuid() != 0:
        sys.exit("bench/restarts.py: run as root")
    checkpoints = [int(a) for a in sys.argv[1:]] or [500, 2000, 5000, 10000]
    tmp = tempfile.mkdtemp(prefix="occ-restart-bench-")
    os.chmod(tmp, 0o755)
    subprocess.run(["cp", "-a", "/etc", f"{tmp}/etc"], check=True)
    os.makedirs(f"{tmp}/home")
    sock = f"{tmp}/run/admin.sock"
    port = 0
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with open(f"{tmp}/init.toml", "w") as f:
        f.write(f"command = ['/bin/false']\nhost = '127.0.0.1'\nport = {port}\n"
                f"admin_socket = '{sock}'\nauth_socket = '{tmp}/proxy/auth.sock'\n"
                f"users_file = '{tmp}/users.toml'\nservice_user = 'benchoc'\n"
                "restart_backoff_initial = '10ms'\nrestart_backoff_max = '10ms'\n")
    env = {**os.environ, "OCC_CONFIG": f"{tmp}/init.toml", "OCC_LOG": "error"}
    script = (f'mount --bind "{tmp}/etc" /etc && mount --bind "{tmp}/home" /home && '
              'useradd -m benchoc && exec "$@"')
    p = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
                          "sh", "-c", script, "sh", OCC], env=env, stderr=subprocess.DEVNULL)
    rows = []
    try:
        pid = occ_pid(p.pid)
        while not os.path.exists(sock):
            time.sleep(0.05)
        t0 = time.time()
        for cp in checkpoints:
            while True:
                st = status(sock)
                if st["opencode"]["restarts"] >= cp:
                    break
                time.sleep(0.2)
            fds, threads, rss, anon = proc_facts(pid)
            rows.append((st["opencode"]["restarts"], time.time() - t0, fds, threads, rss, anon,
                         (st.get("proxy") or {}).get("restarts"), (st.get("proxy") or {}).get("state")))
    finally:
        p.kill()
        p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print("| opencode restarts | elapsed (s) | PID 1 fds | threads | VmRSS (KiB) | RssAnon (KiB) | proxy restarts | proxy state |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.0f} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]} | {r[7]} |")


if __name__ == "__main__":
    main()
