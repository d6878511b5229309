#!/usr/bin/env python3
"""A process that never stays put: it forks and the parent exits, over and over, so that at
any moment one process of the chain is alive, with a new pid each time (what a scan of /proc
keeps missing). Writes a heartbeat (time and pid) to BEAT now and then. Usage: hopper.py BEAT
SECONDS."""
import os
import sys
import time

beat, seconds = sys.argv[1], float(sys.argv[2])
end = time.time() + seconds
n = 0
while time.time() < end:
    if os.fork() > 0:
        os._exit(0)
    n += 1
    if n % 200 == 0:
        with open(beat, "w") as f:
            f.write(f"{time.time()} {os.getpid()}\n")
