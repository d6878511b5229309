#!/usr/bin/env python3
"""PID-1 benchmark: occ-init side by side with tini, dumb-init and catatonit, in one run.

Every init runs as PID 1 of a fresh PID namespace (unshare --pid --fork --mount-proc) over the
same fixture (occ-test-child). Prints a Markdown table with ratios to tini:
  idle RSS        VmRSS of PID 1 while it supervises `sleep`            (median of 5)
  reap 10k        orphans released at once -> the last one reaped       (median of 9, interleaved)
  reap CPU        CPU time PID 1 spent meanwhile (utime+stime, 10 ms ticks; the steadier figure)
  signal p50/p99  kill(PID 1, SIGUSR1) -> the child has it (over 1,000)
  exec->child     start of the init -> the child runs (median of 30; a row without init too)
Run as root: `python3 bench/pid1.py [--occ PATH] [--child PATH]`.
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]


def init_cmds(occ):
    return {
        "occ-init": [occ, "run", "--"],
        "tini": ["tini", "--"],
        "dumb-init": ["dumb-init"],
        "catatonit": ["catatonit", "--"],
    }


def init_pid(outer, timeout=10.0):
    """Host pid of the process unshare forked (PID 1 of the namespace)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if int(fields[1]) == outer:
                return int(entry)
        time.sleep(0.001)
    raise RuntimeError("init never started")


def start(cmd, **kw):
    return subprocess.Popen(UNSHARE + cmd, stdin=subprocess.DEVNULL, **kw)


def stop(p):
    if p.poll() is None:
        p.kill()
    p.wait(timeout=10)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def idle_rss(init):
    samples = []
    for _ in range(5):
        p = start(init + ["sleep", "1000"])
        try:
            pid = init_pid(p.pid)
            time.sleep(0.3)
            samples.append(rss_kib(pid))
        finally:
            stop(p)
    return statistics.median(samples)


def reap_once(init, child, n):
    """One run: wall time from release to the last orphan reaped (ms), and PID 1's CPU (ms)."""
    p = start(init + [child, "orphans", str(n)], stdout=subprocess.PIPE, text=True)
    try:
        out, _ = p.communicate(timeout=300)
    finally:
        stop(p)
    line = [l for l in out.splitlines() if l.startswith("all reaped in")]
    if p.returncode != 0 or not line:
        raise RuntimeError(f"orphans failed: rc={p.returncode} {out!r}")
    words = line[0].replace(",", "").split()
    return int(words[3]) / 1000.0, int(words[7])


def reap_times(inits, child, n, rounds=9):
    """Medians over `rounds`, the inits interleaved round by round so drift hits all alike."""
    wall = {name: [] for name in inits}
    cpu = {name: [] for name in inits}
    for _ in range(rounds):
        for name, init in inits.items():
            w, c = reap_once(init, child, n)
            wall[name].append(w)
            cpu[name].append(c)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in inits}


def signal_latency(init, child, tmp, n=1000):
    fifo = os.path.join(tmp, "sig.fifo")
    if os.path.exists(fifo):
        os.unlink(fifo)
    os.mkfifo(fifo)
    p = start(init + [child, "echo-signals", fifo])
    try:
        pid = init_pid(p.pid)
        fd = os.open(fifo, os.O_RDONLY)
        try:
            assert os.read(fd, 1) == b"r"
            lat = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                os.kill(pid, signal.SIGUSR1)
                if os.read(fd, 1) != b"s":
                    raise RuntimeError("echo lost")
                lat.append((time.perf_counter_ns() - t0) / 1000.0)
        finally:
            os.close(fd)
    finally:
        stop(p)
    lat.sort()
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99) - 1]


def exec_latency(init, child, tmp, n=30):
    fifo = os.path.join(tmp, "exec.fifo")
    if os.path.exists(fifo):
        os.unlink(fifo)
    os.mkfifo(fifo)
    samples = []
    for _ in range(n):
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        t0 = time.perf_counter_ns()
        p = start(init + [child, "touch", fifo])
        try:
            os.set_blocking(fd, True)
            while True:
                b = os.read(fd, 1)
                if b:
                    break
                time.sleep(0.0001)
            samples.append((time.perf_counter_ns() - t0) / 1e6)
        finally:
            os.close(fd)
            p.wait(timeout=10)
    return statistics.median(samples)


def ratio(v, base):
    return f"{v / base:.2f}x" if base else "-"


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--occ", default=os.path.join(root, "target/release/occ-init"))
    ap.add_argument("--child", default=os.path.join(root, "target/release/occ-test-child"))
    ap.add_argument("--orphans", type=int, default=10000)
    ap.add_argument("--signals", type=int, default=1000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/pid1.py: run as root (it creates PID namespaces)")
    inits = init_cmds(args.occ)
    missing = [n for n, c in inits.items() if not shutil.which(c[0])]
    if missing:
        sys.exit(f"bench/pid1.py: missing {', '.join(missing)} (apt-get install tini dumb-init catatonit)")
    results = {}
    print("measuring reaping (all inits interleaved)...", file=sys.stderr)
    reaps = reap_times(inits, args.child, args.orphans)
    with tempfile.TemporaryDirectory() as tmp:
        for name, init in inits.items():
            print(f"measuring {name}...", file=sys.stderr)
            p50, p99 = signal_latency(init, args.child, tmp, args.signals)
            reap, reap_cpu = reaps[name]
            results[name] = {
                "rss": idle_rss(init),
                "reap": reap,
                "reap_cpu": reap_cpu,
                "p50": p50,
                "p99": p99,
                "exec": exec_latency(init, args.child, tmp),
            }
        direct = exec_latency([], args.child, tmp)
    base = results["tini"]
    print(f"| init | idle RSS (KiB) | reap {args.orphans} orphans (ms) | PID 1 CPU for it (ms) | signal p50 (µs) | signal p99 (µs) | exec→child (ms) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['rss']:.0f} ({ratio(r['rss'], base['rss'])}) "
            f"| {r['reap']:.1f} ({ratio(r['reap'], base['reap'])}) "
            f"| {r['reap_cpu']:.0f} ({ratio(r['reap_cpu'], base['reap_cpu'])}) "
            f"| {r['p50']:.0f} ({ratio(r['p50'], base['p50'])}) "
            f"| {r['p99']:.0f} ({ratio(r['p99'], base['p99'])}) "
            f"| {r['exec']:.2f} ({ratio(r['exec'], base['exec'])}) |"
        )
    print(f"| (no init) | - | - | - | - | - | {direct:.2f} |")
    print(f"\nRatios are to tini. {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, kernel {os.uname().release}.")


if __name__ == "__main__":
    main()
