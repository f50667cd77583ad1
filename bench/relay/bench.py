"""The measuring half of bench/relay/run.sh (standard library only).

    bench.py fixtures DIR
        writes small.json (a 32x32 PNG) and big.json (a 1024x1024 PNG whose base64 is about
        1 MiB): gpt-image answers as nginx serves them.
    bench.py run --duration S --rounds N --concurrency "1 16 64" --sizes "small big" \
            --server NAME PID BASE [--server ...] [--json FILE]
        BASE is the URL before /v1/images/generations; `{size}` in it becomes small or big. For
        each round, size and concurrency the servers run back to back: a check request, a 1 s wrk
        warm-up, then `wrk --latency` for S seconds. CPU is utime + stime of PID and its
        descendants from /proc, over the measured window, divided by the requests wrk counted.
        Exits 1 when a server answers anything but a 200 with base64.
"""

import base64
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import urllib.request
import zlib

TICKS = os.sysconf("SC_CLK_TCK")
PROMPT = "A cute baby sea otter wearing a beret"
SIZES = {"small": "32x32", "big": "1024x1024"}


def png(width, height, noisy_rows):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    flat = b"\x00" + bytes([40, 90, 160]) * width
    rows = b"".join(b"\x00" + os.urandom(3 * width) if y < noisy_rows else flat for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b""))


def answer(image, size):
    return json.dumps({
        "created": 1713833628,
        "data": [{"b64_json": base64.b64encode(image).decode()}],
        "background": "opaque", "output_format": "png", "quality": "low", "size": size,
        "usage": {"total_tokens": 290, "input_tokens": 18, "output_tokens": 272,
                  "input_tokens_details": {"text_tokens": 18, "image_tokens": 0}},
    })


def fixtures(out):
    os.makedirs(out, exist_ok=True)
    with open(f"{out}/small.json", "w") as f:
        f.write(answer(png(32, 32, 0), "32x32"))
    # 256 rows of noise: about 0.75 MiB of PNG, 1 MiB of base64.
    with open(f"{out}/big.json", "w") as f:
        f.write(answer(png(1024, 1024, 256), "1024x1024"))


def cpu_ticks(root):
    """utime + stime of `root` and every live descendant."""
    parents, ticks = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total


def body(size):
    return json.dumps({"model": f"relay-{size}", "prompt": PROMPT, "size": SIZES[size]})


def check(name, url, size):
    request = urllib.request.Request(url, body(size).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            data = response.read()
            ok = response.status == 200 and b'"b64_json"' in data
    except OSError as e:
        ok, data = False, str(e).encode()
    if not ok:
        sys.exit(f"{name} ({size}) did not answer with an image: {data[:300]!r}")
    return len(data)


def seconds(value, unit):
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def wrk(url, script, concurrency, duration):
    threads = min(2, concurrency)
    command = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{duration}s", "--timeout", "60s", "--latency",
               "-s", script, url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result = {"requests": int(re.search(r"(\d+) requests in", out).group(1))}
    result["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        result[f"p{pct}"] = seconds(*m.groups()) * 1000
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    result["bad"] = int(bad.group(1)) if bad else 0
    result["socket_errors"] = errors.group(1) if errors else ""
    return result


def run(args):
    servers, i = [], 0
    options = {"--duration": "10", "--rounds": "1", "--concurrency": "1 16 64", "--sizes": "small big",
               "--json": ""}
    while i < len(args):
        if args[i] == "--server":
            servers.append((args[i + 1], int(args[i + 2]), args[i + 3]))
            i += 4
        else:
            options[args[i]] = args[i + 1]
            i += 2
    duration, rounds = options["--duration"], int(options["--rounds"])
    concurrencies = [int(c) for c in options["--concurrency"].split()]
    sizes = options["--sizes"].split()
    scripts = {}
    for size in sizes:
        fd, path = tempfile.mkstemp(suffix=".lua")
        with os.fdopen(fd, "w") as f:
            f.write(f'wrk.method = "POST"\nwrk.body = \'{body(size)}\'\n'
                    f'wrk.headers["Content-Type"] = "application/json"\n')
        scripts[size] = path
    results, failed = [], False
    for round_ in range(rounds):
        for size in sizes:
            for concurrency in concurrencies:
                for name, pid, base in servers:
                    url = base.replace("{size}", size) + "/v1/images/generations"
                    length = check(name, url, size)
                    wrk(url, scripts[size], concurrency, 1)
                    before = cpu_ticks(pid)
                    r = wrk(url, scripts[size], concurrency, duration)
                    cpu = cpu_ticks(pid) - before
                    r.update(server=name, size=size, concurrency=concurrency, round=round_, bytes=length,
                             cpu_ms=cpu / TICKS * 1000 / max(r["requests"], 1))
                    results.append(r)
                    flag = ""
                    if r["bad"] or r["requests"] == 0:
                        flag, failed = f"  FAILED: {r['bad']} non-2xx", True
                    print(f"round {round_ + 1} {size:>5} c={concurrency:<3} {name:<11} {r['rps']:9.1f} req/s  "
                          f"p50 {r['p50']:8.2f} ms  p99 {r['p99']:8.2f} ms  CPU {r['cpu_ms']:7.3f} ms/req  "
                          f"({length} B answers){flag}", flush=True)
    if options["--json"]:
        with open(options["--json"], "w") as f:
            json.dump(results, f, indent=1)
    report(results, [s[0] for s in servers], sizes, concurrencies)
    sys.exit(1 if failed else 0)


def span(values, digits):
    lo, hi = min(values), max(values)
    fmt = f"{{:,.{digits}f}}"
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"


def report(results, names, sizes, concurrencies):
    def pick(name, size, c, key):
        return [r[key] for r in results if (r["server"], r["size"], r["concurrency"]) == (name, size, c)]

    print("\n| answer | conc. | server | req/s | p50 ms | p99 ms | CPU ms/request |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for size in sizes:
        for c in concurrencies:
            for name in names:
                print(f"| {size} | {c} | {name} | {span(pick(name, size, c, 'rps'), 0)} | "
                      f"{span(pick(name, size, c, 'p50'), 2)} | {span(pick(name, size, c, 'p99'), 2)} | "
                      f"{span(pick(name, size, c, 'cpu_ms'), 3)} |")
    if "easel" not in names:
        return
    # Ratios per round (each round's servers ran back to back), then their spread.
    rounds = sorted({r["round"] for r in results})

    def ratios(other, size, c, key, easel_over_other):
        out = []
        for round_ in rounds:
            get = {r["server"]: r[key] for r in results
                   if (r["size"], r["concurrency"], r["round"]) == (size, c, round_)}
            if other in get and get["easel"] > 0 and get[other] > 0:
                out.append(get["easel"] / get[other] if easel_over_other else get[other] / get["easel"])
        return span(out, 1) + "×" if out else "–"

    headers = []
    if "litellm" in names:
        headers += ["LiteLLM CPU ÷ Easel CPU", "Easel req/s ÷ LiteLLM req/s", "LiteLLM p99 ÷ Easel p99"]
    if "nginx" in names:
        headers += ["Easel CPU ÷ nginx CPU"]
    if "nginx-proxy" in names:
        headers += ["Easel CPU ÷ nginx-proxy CPU", "Easel req/s ÷ nginx-proxy req/s", "Easel p99 ÷ nginx-proxy p99"]
    print("\n| answer | conc. | " + " | ".join(headers) + " |")
    print("|---|---:|" + "---:|" * len(headers))
    for size in sizes:
        for c in concurrencies:
            cells = []
            if "litellm" in names:
                cells += [ratios("litellm", size, c, "cpu_ms", False), ratios("litellm", size, c, "rps", True),
                          ratios("litellm", size, c, "p99", False)]
            if "nginx" in names:
                cells += [ratios("nginx", size, c, "cpu_ms", True)]
            if "nginx-proxy" in names:
                cells += [ratios("nginx-proxy", size, c, "cpu_ms", True), ratios("nginx-proxy", size, c, "rps", True),
                          ratios("nginx-proxy", size, c, "p99", True)]
            print(f"| {size} | {c} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "fixtures":
        fixtures(sys.argv[2])
    elif len(sys.argv) >= 2 and sys.argv[1] == "run":
        run(sys.argv[2:])
    else:
        sys.exit(__doc__)
