"""Drives POST /v1/images/generations at an Easel server with keep-alive connections, and reports
the server process's CPU time per request (from /proc/PID/stat, so only Easel's CPU counts).

Usage: client.py BASE_URL PID SIZE REQUESTS CONCURRENCY
"""

import http.client
import json
import os
import sys
import threading
import time
import urllib.parse

base, pid, size, requests, concurrency = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
url = urllib.parse.urlparse(base)
body = json.dumps({"model": "relay", "prompt": "A cute baby sea otter wearing a beret", "size": size}).encode()
ticks = os.sysconf("SC_CLK_TCK")


def cpu_times():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) / ticks, int(fields[12]) / ticks  # utime, stime


def worker(count, failures):
    conn = http.client.HTTPConnection(url.hostname, url.port)
    for _ in range(count):
        conn.request("POST", "/v1/images/generations", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200 or b'"b64_json"' not in data:
            failures.append((response.status, data[:200]))


def run(count):
    failures = []
    threads = [threading.Thread(target=worker, args=(count // concurrency, failures)) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        sys.exit(f"{len(failures)} requests failed, first: {failures[0]}")


run(max(concurrency * 10, requests // 10))  # warm-up: connections, tokenizer, upstream pool
(user0, sys0), start = cpu_times(), time.perf_counter()
run(requests)
(user1, sys1), wall = cpu_times(), time.perf_counter() - start
done = requests // concurrency * concurrency
user, system = (user1 - user0) * 1000 / done, (sys1 - sys0) * 1000 / done
print(f"{size:>9} body: {done} requests in {wall:.2f} s, Easel CPU {user + system:.3f} ms per request "
      f"(user {user:.3f}, system {system:.3f}; {done / wall:.0f} req/s, concurrency {concurrency})")
