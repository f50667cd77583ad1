#!/usr/bin/env python3
"""Writes to a file at a steady rate, with an fsync every 250 ms, like the SQLite ledger's log
under load: for measuring what disk writes beside a server do to its latency on a given machine
(bench/relay/RESULTS.md, "the tail at concurrency 1 is the disk").

    bench/relay/disk-load.py MB_PER_SECOND SECONDS [FILE]   (FILE: ./disk-load.dat, removed after)

The writes are 16 KiB pwrites cycling over a 16 MiB file (the ledger's log restarts in place at
that size), paced so the rate holds over the run.
"""
import os
import sys
import time

rate, seconds = float(sys.argv[1]), float(sys.argv[2])
path = sys.argv[3] if len(sys.argv) > 3 else "disk-load.dat"
chunk = os.urandom(16 * 1024)
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
try:
    start = last_sync = time.monotonic()
    written, offset = 0, 0
    while (now := time.monotonic()) - start < seconds:
        os.pwrite(fd, chunk, offset)
        offset = (offset + len(chunk)) % (16 << 20)
        written += len(chunk)
        ahead = written / (rate * 1e6) - (now - start)
        if ahead > 0:
            time.sleep(ahead)
        if now - last_sync >= 0.25:
            os.fsync(fd)
            last_sync = now
finally:
    os.close(fd)
    os.remove(path)
