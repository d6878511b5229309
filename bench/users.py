#!/usr/bin/env python3
"""Users benchmark: occ-init's restore vs the equivalent bash loop, in the same sandbox.

Each measurement runs in a private mount namespace over a fresh copy of /etc and an empty
/home (the host's are never touched). Rows:
  100 new users      occ-init `user sync` | bash loop (useradd -m + usermod -p + passwd -u)
                     | floor (100 x useradd -m + one chpasswd -e)
  1,000 in sync      occ-init `user sync` (spawns nothing) | bash loop over the same users
Run as root after `cargo build --release`: `python3 bench/users.py`.
"""
import os
import shutil
import subprocess
import sys
import tempfile

HASH = "$6$abcdefgh$dTmIYmW/LpvGK/iiDSK9zlcKIRJ33.7YE9DETLAR1zX9/2./Fv6/8dFZ1tCs/Kfp//7QeoJfyRWP7XdDzP87j1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OCC = os.path.join(ROOT, "target/release/occ-init")


def sandbox():
    tmp = tempfile.mkdtemp(prefix="occ-bench-")
    subprocess.run(["cp", "-a", "/etc", os.path.join(tmp, "etc")], check=True)
    os.makedirs(os.path.join(tmp, "home"))
    return tmp


def inside(tmp, script, env=None):
    """Run `script` in the sandbox; it prints elapsed nanoseconds of its timed part last."""
    wrapper = f'mount --bind "{tmp}/etc" /etc && mount --bind "{tmp}/home" /home && {script}'
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", wrapper],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=1800,
    )
    if out.returncode != 0:
        raise RuntimeError(f"failed: {script[:80]}...\n{out.stderr}")
    return int(out.stdout.strip().splitlines()[-1]) / 1e6  # ms


def timed(body):
    return f's=$(date +%s%N); {body}; e=$(date +%s%N); echo $((e-s))'


def manifest(tmp, n):
    path = os.path.join(tmp, "users.toml")
    with open(path, "w") as f:
        f.write("version = 1\n")
        for i in range(n):
            f.write(f"[[users]]\nname = \"u{i}\"\npassword_hash = '{HASH}'\n")
    os.chmod(path, 0o600)
    return path


def bash_loop(n):
    return (f'for i in $(seq 0 {n - 1}); do id -u u$i >/dev/null 2>&1 || useradd -m -l u$i; '
            f"usermod -p '{HASH}' u$i; passwd -u u$i >/dev/null; done")


def floor(n):
    return (f'for i in $(seq 0 {n - 1}); do useradd -m -l u$i; done; '
            f"for i in $(seq 0 {n - 1}); do echo \"u$i:{HASH}\"; done | chpasswd -e")


def run_case(script, env=None, prepare=None):
    tmp = sandbox()
    try:
        if prepare:
            prepare(tmp)
        return inside(tmp, script(tmp) if callable(script) else script, env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    if os.geteuid() != 0:
        sys.exit("bench/users.py: run as root")
    rows = []
    # 100 new users.
    occ_new = run_case(lambda t: timed(f"{OCC} user sync --users {manifest(t, 100)} >/dev/null"))
    loop_new = run_case(timed(bash_loop(100)))
    floor_new = run_case(timed(floor(100)))
    rows.append(("100 new users", occ_new, loop_new, floor_new))
    # 1,000 users already in sync.
    def prep(t):
        inside(t, timed(f"{OCC} user sync --users {manifest(t, 1000)} >/dev/null"))
    occ_sync = run_case(lambda t: timed(f"{OCC} user sync --users {t}/users.toml >/dev/null"), prepare=prep)
    loop_sync = run_case(timed(bash_loop(1000)), prepare=prep)
    rows.append(("1,000 users in sync", occ_sync, loop_sync, None))
    print("| case | occ-init (ms) | bash loop (ms) | loop / occ-init | floor (ms) | occ-init / floor |")
    print("|---|---|---|---|---|---|")
    for name, occ, loop, fl in rows:
        fl_s = f"{fl:.0f}" if fl else "-"
        ratio_fl = f"{occ / fl:.2f}" if fl else "-"
        print(f"| {name} | {occ:.1f} | {loop:.0f} | {loop / occ:.1f}x | {fl_s} | {ratio_fl} |")


if __name__ == "__main__":
    main()
