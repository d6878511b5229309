#!/usr/bin/env python3
"""Per-user instances benchmark (method and results: docs/benchmarks.md, "Per-user instances").

Side by side in one run, on this machine:

1. Cold start. opencode's own start, measured directly: `opencode serve` spawned by this script
   in a fresh HOME (as a new user's first start is), timed from the spawn to the first answer
   of `GET /global/health` (polled every 5 ms). Against: occ-init per user, a new login user
   (logged in through the login form first, so the PAM check is not in the number), timed from
   sending their first `GET /session` to its 200, which includes PID 1 starting their opencode
   as them, its readiness probe, and the proxy's relay. Also the warm restart: a user whose
   instance was stopped (`POST /v1/instances/{user}/stop`) and whose home already holds
   opencode's state, against opencode started again in the same HOME. Medians of --runs,
   interleaved. Target: occ-init ≤ opencode's own + 200 ms.
2. Eight users making their first request at once (all logged in before): all must be served;
   the time until the last 200.
3. Warm requests: `GET /session` through the proxy to a user's running instance, against the
   same through the proxy to the one opencode of `instances = "shared"` (a second occ-init in
   the same run), wrk at one connection, p50/p99, the median of --rounds interleaved rounds.
   Target: per-user ≤ shared + 0.1 ms p50.
4. PID 1: RSS and open fds before any instance, with 8 instances running, and after all 8 were
   stopped (no growth).
5. Memory: PSS (from /proc/PID/smaps_rollup, summed over the instance's process group) and RSS
   per idle instance.

Every process started is killed at the end (bench/proxy.py's Runner); every request has a
deadline. Run as root after `cargo build --release`: `python3 bench/instances.py [--runs N]
[--rounds N]`. Needs wrk (installed from Debian when missing) and opencode (npm opencode-ai in
.cache, as tests/deps installs it).
"""
import argparse
import glob
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxy as bp  # noqa: E402  (the Runner, wrk and HTTP helpers)

ROOT = bp.ROOT


def opencode_bin():
    found = sorted(glob.glob(f"{ROOT}/.cache/opencode-*/node_modules/opencode-linux-*/bin/opencode"))
    found = [b for b in found if "baseline" not in b] or found
    if not found:
        sys.exit("no opencode in .cache (run tests/deps)")
    return found[0]


def http(port, method, path, headers="", body="", timeout=60):
    """(status, headers text, body) of one request on a fresh connection."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall((f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{headers}"
               f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head.decode("latin1"), rest


def login(port, user, password):
    """The session cookie header for `user` (login form: the password is checked here)."""
    form = f"username={user}&password={password.replace(' ', '+')}&next=/"
    code, head, _ = http(port, "POST", "/_occ/login",
                         "Content-Type: application/x-www-form-urlencoded\r\n", form)
    assert code == 303, (code, head)
    cookie = next(l.split(":", 1)[1].strip().split(";")[0] for l in head.split("\r\n")
                  if l.lower().startswith("set-cookie:"))
    return f"Cookie: {cookie}\r\n"


def timed_get(port, headers):
    t = time.perf_counter()
    code, _, body = http(port, "GET", "/session", headers)
    if code != 200:
        print(f"GET /session: {code} after {time.perf_counter() - t:.1f}s {body[:300]!r}", file=sys.stderr)
    return code, (time.perf_counter() - t) * 1000


def own_start(run, binary, home):
    """ms from spawning opencode (HOME=`home`) to its first healthy answer."""
    port = bp.free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "TMPDIR": f"{home}/.tmp",
           "OPENCODE_DISABLE_AUTOUPDATE": "true", "OPENCODE_SERVER_PASSWORD": "bench"}
    os.makedirs(f"{home}/.tmp", exist_ok=True)
    os.makedirs(f"{home}/workspace", exist_ok=True)
    t = time.perf_counter()
    p = run.popen([binary, "serve", "--hostname", "127.0.0.1", "--port", str(port)], env=env,
                  cwd=f"{home}/workspace", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    auth = f"Authorization: {bp.basic('opencode', 'bench')}\r\n"
    deadline = time.time() + 60
    healthy = None
    while time.time() < deadline:
        try:
            if healthy is None and bp.get(port, "/global/health", auth, timeout=2) == 200:
                healthy = (time.perf_counter() - t) * 1000
            if healthy is not None and bp.get(port, "/session", auth, timeout=10) == 200:
                ms = (time.perf_counter() - t) * 1000
                run.stop(p)
                return healthy, ms
        except OSError:
            pass
        time.sleep(0.005)
    run.stop(p)
    sys.exit("opencode did not start within 60 s")


def add_user(sb, name, password):
    code, body = bp.unix_request(sb["sock"], "POST", "/v1/users", json.dumps({"name": name, "password": password}))
    assert code == 201, (code, body)


def instances(sb):
    code, body = bp.unix_request(sb["sock"], "GET", "/v1/instances")
    assert code == 200, (code, body)
    return json.loads(body)["instances"]


def stop_all(sb):
    for i in instances(sb):
        bp.unix_request(sb["sock"], "POST", f"/v1/instances/{i['user']}/stop")
    deadline = time.time() + 60
    while time.time() < deadline and instances(sb):
        time.sleep(0.1)
    assert not instances(sb), instances(sb)


def ns_host_pid(pid1_host, ns_pid):
    """Host pid of `ns_pid` in the PID namespace whose PID 1 is host pid `pid1_host`."""
    ns = os.readlink(f"/proc/{pid1_host}/ns/pid")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{d}/ns/pid") != ns:
                continue
            for line in open(f"/proc/{d}/status"):
                if line.startswith("NSpid:") and int(line.split()[-1]) == ns_pid:
                    return int(d)
        except OSError:
            continue
    return None


def group_memory(pgid):
    """(PSS KiB, RSS KiB) of the processes in process group `pgid` (host pids)."""
    pss = rss = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read()
            if int(stat[stat.rfind(")") + 2:].split()[2]) != pgid:
                continue
            for line in open(f"/proc/{d}/smaps_rollup"):
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return pss, rss


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="cold/warm starts measured (median)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved warm-request rounds")
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, timeout=600)
    binary = opencode_bin()
    run = bp.Runner()
    try:
        cmd = [binary, "serve"]
        per = run.boot("per-user", cmd, "instances = 'per-user'\nmax_instances = 16\n"
                       "instance_idle_timeout = '0'\ninstance_start_timeout = '60s'\n")
        shared = run.boot("shared", cmd, "instances = 'shared'\n")
        port = per["port"]
        pid1 = per["pid1"]

        # 1. Cold and warm starts, interleaved with opencode's own.
        own_cold, own_warm, occ_cold, occ_warm = [], [], [], []
        for i in range(args.runs):
            home = f"{run.tmp}/own-{i}"
            own_cold.append(own_start(run, binary, home))
            own_warm.append(own_start(run, binary, home))
            run.procs = [q for q in run.procs if q.poll() is None]
            name, pw = f"cold{i}", "cold start pw 1"
            add_user(per, name, pw)
            cookie = login(port, name, pw)
            code, ms = timed_get(port, cookie)
            assert code == 200, code
            occ_cold.append(ms)
            bp.unix_request(per["sock"], "POST", f"/v1/instances/{name}/stop")
            deadline = time.time() + 30
            while time.time() < deadline and any(x["user"] == name for x in instances(per)):
                time.sleep(0.05)
            # The proxy trusts a ready view for 0.5 s (proxy/instances.rs FRESH): past it, the
            # request asks PID 1 and starts the instance again.
            time.sleep(0.6)
            code, ms = timed_get(port, cookie)
            assert code == 200, code
            occ_warm.append(ms)
        stop_all(per)

        # 4 (before) and 2. Eight users at once.
        base_rss, base_fds = bp.rss_kib(pid1), fds(pid1)
        cookies = []
        for i in range(8):
            name, pw = f"eight{i}", "eight users pw 1"
            add_user(per, name, pw)
            cookies.append(login(port, name, pw))
        results = [None] * 8
        start = time.perf_counter()

        def first(k):
            code, _, _ = http(port, "GET", "/session", cookies[k])
            results[k] = (code, (time.perf_counter() - start) * 1000)
        threads = [threading.Thread(target=first, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        served = sum(1 for r in results if r and r[0] == 200)
        last = max(r[1] for r in results if r)
        time.sleep(2)
        eight_rss, eight_fds = bp.rss_kib(pid1), fds(pid1)
        cycles = []

        # 5. Memory per idle instance (after they settled).
        time.sleep(5)
        mem = []
        for inst in instances(per):
            host = ns_host_pid(pid1, inst["pid"])
            if host:
                mem.append(group_memory(host))

        # 4 (cycles). Stop all 8 and start them again, twice: PID 1 must not grow per cycle.
        for _ in range(2):
            stop_all(per)
            time.sleep(1)
            stopped = (bp.rss_kib(pid1), fds(pid1))
            time.sleep(0.6)
            threads = [threading.Thread(target=first, args=(k,)) for k in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            cycles.append((stopped, (bp.rss_kib(pid1), fds(pid1))))
        stop_all(per)

        # 3. Warm requests: a per-user instance vs shared, interleaved, both opencodes warmed up
        # first (a fresh opencode answers slowly for a while) and nothing else running.
        wa = bp.basic("warm", "warm request pw 1")
        add_user(per, "warm", "warm request pw 1")
        add_user(shared, "warm", "warm request pw 1")
        assert bp.get(port, "/session", f"Authorization: {wa}\r\n", timeout=60) == 200
        assert bp.get(shared["port"], "/session", f"Authorization: {wa}\r\n", timeout=60) == 200
        for sb in (per, shared):
            bp.wrk(sb["port"], 1, 10, auth=wa, wait=False)
        warm = {"per-user": [], "shared": []}
        for _ in range(args.rounds):
            for label, sb in (("per-user", per), ("shared", shared)):
                warm[label].append(bp.wrk(sb["port"], 1, args.seconds, auth=wa, wait=False))
        stop_all(per)
        time.sleep(1)
        after_rss, after_fds = bp.rss_kib(pid1), fds(pid1)

        med = statistics.median
        print(f"# per-user instances, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, build {bp.build_id()}\n")
        print("| start | opencode's own: healthy (ms) | its first GET /session (ms) | first GET /session through occ-init (ms) | difference |")
        print("|---|---:|---:|---:|---:|")
        for label, own, occ in (("cold (new user, fresh HOME)", own_cold, occ_cold),
                                ("warm (HOME with opencode's state)", own_warm, occ_warm)):
            h, first = med(x[0] for x in own), med(x[1] for x in own)
            print(f"| {label} | {h:.0f} | {first:.0f} | {med(occ):.0f} | {med(occ) - first:+.0f} |")
        print(f"\nruns: own cold {[round(x[1]) for x in own_cold]}, occ cold {[round(x) for x in occ_cold]}, "
              f"own warm {[round(x[1]) for x in own_warm]}, occ warm {[round(x) for x in occ_warm]}")
        print(f"\n8 users' first requests at once: {served}/8 served, the last after {last:.0f} ms")
        print("\n| warm GET /session, 1 connection | p50 (ms) | p99 (ms) | req/s |")
        print("|---|---:|---:|---:|")
        for label in ("shared", "per-user"):
            rows = warm[label]
            print(f"| {label} | {med(r['p50'] for r in rows):.3f} | {med(r['p99'] for r in rows):.3f} "
                  f"| {med(r['rps'] for r in rows):.0f} |")
        d = med(r["p50"] for r in warm["per-user"]) - med(r["p50"] for r in warm["shared"])
        print(f"\nper-user − shared, p50: {d:+.3f} ms")
        print("\n| PID 1 | RSS (KiB) | fds |")
        print("|---|---:|---:|")
        print(f"| no instance | {base_rss} | {base_fds} |")
        print(f"| 8 instances running | {eight_rss} | {eight_fds} |")
        for n, (stopped, running) in enumerate(cycles, 1):
            print(f"| cycle {n}: all stopped | {stopped[0]} | {stopped[1]} |")
            print(f"| cycle {n}: 8 started again | {running[0]} | {running[1]} |")
        print(f"| all stopped at the end | {after_rss} | {after_fds} |")
        if mem:
            print(f"\nidle instance memory ({len(mem)} instances): PSS median {med(p for p, _ in mem) / 1024:.0f} MiB, "
                  f"RSS median {med(r for _, r in mem) / 1024:.0f} MiB")
    finally:
        run.close()


if __name__ == "__main__":
    main()
