#!/usr/bin/env python3
"""Boot benchmark: how long occ-init's default start takes before opencode runs.

In a sandbox (private copy of /etc with the service user, new mount + PID namespace):
  exec -> spawned   start of occ-init (empty manifest, local bind) -> opencode's process runs,
                    measured with a child that writes a FIFO, vs the same child started directly
  exec -> ready     start -> GET /global/health answers {"healthy":true}, occ-init vs opencode
                    started directly (the real opencode when installed, else the fake one)
Median of N runs. Run as root after `cargo build --release`: `python3 bench/boot.py`.
"""
import glob
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OCC = os.path.join(ROOT, "target/release/occ-init")
CHILD = os.path.join(ROOT, "target/release/occ-test-child")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def sandbox():
    tmp = tempfile.mkdtemp(prefix="occ-boot-")
    os.chmod(tmp, 0o755)
    subprocess.run(["cp", "-a", "/etc", f"{tmp}/etc"], check=True)
    os.makedirs(f"{tmp}/home")
    os.makedirs(f"{tmp}/run")
    inside(tmp, ["useradd", "-m", "-l", "opencoder"]).wait(timeout=30)
    return tmp


def inside(tmp, argv, env=None, **kw):
    script = f'mount --bind "{tmp}/etc" /etc && mount --bind "{tmp}/home" /home && exec "$@"'
    return subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
         "sh", "-c", script, "sh", *argv],
        env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, **kw)


def occ_env(tmp, command, port):
    return {
        "OCC_COMMAND": " ".join(command), "OCC_HOST": "127.0.0.1", "OCC_PORT": str(port),
        "OCC_USERS_FILE": f"{tmp}/users.toml", "OCC_ADMIN_SOCKET": f"{tmp}/run/admin.sock",
        "OCC_CONFIG": f"{tmp}/none.toml", "OCC_LOG": "warn", "OCC_STOP_GRACE": "2s",
    }


def to_spawn(tmp, via_occ, n=20):
    fifo = f"{tmp}/spawn.fifo"
    if not os.path.exists(fifo):
        os.mkfifo(fifo)
        os.chmod(fifo, 0o666)
    with open(f"{tmp}/none.toml", "w"):
        pass
    samples = []
    for _ in range(n):
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        port = free_port()
        t0 = time.perf_counter()
        if via_occ:
            p = inside(tmp, [OCC], occ_env(tmp, [CHILD, "touch", fifo], port), stderr=subprocess.DEVNULL)
        else:
            p = inside(tmp, [CHILD, "touch", fifo])
        os.set_blocking(fd, True)
        while not os.read(fd, 1):
            time.sleep(0.0001)
        samples.append((time.perf_counter() - t0) * 1000)
        os.close(fd)
        p.kill()
        p.wait(timeout=10)
    return statistics.median(samples)


def healthy(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/global/health", timeout=1) as r:
            return b'"healthy":true' in r.read()
    except Exception:
        return False


def to_ready(tmp, opencode, via_occ, n=5):
    samples = []
    for _ in range(n):
        port = free_port()
        t0 = time.perf_counter()
        if via_occ:
            p = inside(tmp, [OCC], occ_env(tmp, opencode, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            p = inside(tmp, [*opencode, "--hostname", "127.0.0.1", "--port", str(port)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = t0 + 120
        while not healthy(port):
            if time.perf_counter() > deadline:
                raise RuntimeError("never ready")
            time.sleep(0.02)
        samples.append((time.perf_counter() - t0) * 1000)
        p.kill()
        p.wait(timeout=10)
        time.sleep(0.2)
    return statistics.median(samples)


def main():
    if os.geteuid() != 0:
        sys.exit("bench/boot.py: run as root")
    real = os.environ.get("OCC_TEST_OPENCODE") or next(iter(glob.glob(f"{ROOT}/.cache/opencode-*/node_modules/opencode-linux-*/bin/opencode")), None)
    opencode = [real, "serve"] if real else [CHILD, "fake-opencode"]
    tmp = sandbox()
    try:
        spawn_occ = to_spawn(tmp, True)
        spawn_direct = to_spawn(tmp, False)
        ready_occ = to_ready(tmp, opencode, True)
        ready_direct = to_ready(tmp, opencode, False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    name = "opencode " + (os.path.basename(os.path.dirname(os.path.dirname(real))) if real else "(fake)")
    print("| measurement | occ-init (ms) | direct (ms) | added by occ-init (ms) |")
    print("|---|---|---|---|")
    print(f"| exec → child spawned | {spawn_occ:.2f} | {spawn_direct:.2f} | {spawn_occ - spawn_direct:.2f} |")
    print(f"| exec → ready ({name}) | {ready_occ:.0f} | {ready_direct:.0f} | {ready_occ - ready_direct:.0f} |")


if __name__ == "__main__":
    main()
