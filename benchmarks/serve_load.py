"""Load test of `polytask serve`: 1, 4 and 16 concurrent clients on loopback, each for a bounded time.

Starts one server per backend as a child process (its own store and key in a temporary folder;
models come from the usual cache, so an ONNX export is built only on first use), warms each up,
then for each concurrency level runs that many clients, each sending OpenAI chat completions back
to back until the level's time is up. With several backends all servers stay up and the backends
take turns at each level (the order flips from level to level), so a drift in the machine's speed
falls on all of them alike; the idle server waits without spinning. Prints a table and, as the
last line, one JSON object:

    req_per_s_<clients>, p50_s_<clients>, p99_s_<clients> (each level), req_per_s_1, req_per_s_16,
    batching_speedup (req/s at 16 over req/s at 1), p50_s, p99_s (request latency at the highest
    level), errors_5xx (all levels), rss_start_mb, rss_end_mb (server memory after warm-up and
    after the run), rss_growth_mb (end minus start)

With `--backends torch,onnx` each of those is prefixed with its backend (`onnx_p99_s_16`), and
`onnx_over_torch_<clients>` (req/s of ONNX over torch at that level) and the total `errors_5xx`
are added.

    python benchmarks/serve_load.py [--model default] [--seconds 20] [--max-tokens 32]
    python benchmarks/serve_load.py --backends torch,onnx [--onnx-precision int4]

Only 127.0.0.1 is ever contacted. Timings are noisy on shared machines: compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

TOPICS = ["a lighthouse keeper", "the first train to the coast", "a lost umbrella", "a chess club", "a bakery",
          "the night shift at a museum", "a paper boat", "a mountain village", "a broken clock", "an old map",
          "a city garden", "a violin", "a snowstorm", "a library card", "a ferry crossing", "a market stall"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, backend: str, home: Path) -> tuple[subprocess.Popen, str, str]:
    from polytask.serve.keys import KeyStore

    store = home / f"store-{backend}.sqlite"
    key, _ = KeyStore(store).create(["bench"], label="bench")
    port = free_port()
    cmd = [sys.executable, "-m", "polytask", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--model", args.model, "--store", str(store), "--max-batch", str(args.max_batch),
           "--max-queue", "256", "--max-len", "1024", "--backend", backend]
    if backend == "onnx":
        cmd += ["--precision", args.onnx_precision]
    # stdout to a file, not a pipe: nobody reads it during the run, and a full pipe would block the server
    log = open(home / f"server-{backend}.log", "w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"{backend} server exited with {proc.returncode}:\n{log.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url, key
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    stop_server(proc)
    raise SystemExit(f"{backend} server did not come up within 300 s")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def run_level(url: str, key: str, clients: int, seconds: float, max_tokens: int) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    tokens = [0]
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client(i: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300) as http:
            n = 0
            while time.monotonic() < end:
                topic = TOPICS[(i + n) % len(TOPICS)]
                body = {"model": "default", "max_tokens": max_tokens, "temperature": 0,
                        "messages": [{"role": "user", "content": f"Write a long story about {topic}."}]}
                t0 = time.monotonic()
                try:
                    r = http.post("/v1/chat/completions", json=body)
                    code = r.status_code
                except httpx.HTTPError:
                    code = 599  # connection failure: counted with the server errors
                dt = time.monotonic() - t0
                with lock:
                    statuses[code] = statuses.get(code, 0) + 1
                    if code == 200:
                        latencies.append(dt)
                        tokens[0] += r.json()["usage"]["completion_tokens"]
                n += 1

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start  # includes the requests in flight when the time ran out
    ok = statuses.get(200, 0)
    lat = sorted(latencies)
    return {
        "clients": clients, "requests": ok, "seconds": wall, "req_per_s": ok / wall, "tokens_per_s": tokens[0] / wall,
        "p50_s": statistics.median(lat) if lat else float("nan"),
        "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
        "errors_5xx": sum(n for c, n in statuses.items() if c >= 500),
        "other_errors": sum(n for c, n in statuses.items() if 400 <= c < 500),
    }


def summarize(rows: list[dict], rss_start: int, rss_end: int) -> dict:
    """One backend's figures for the JSON line."""
    first, last = rows[0], rows[-1]
    out = {}
    for r in rows:
        out[f"req_per_s_{r['clients']}"] = round(r["req_per_s"], 3)
        out[f"p50_s_{r['clients']}"] = round(r["p50_s"], 3)
        out[f"p99_s_{r['clients']}"] = round(r["p99_s"], 3)
    return out | {
        "batching_speedup": round(last["req_per_s"] / max(first["req_per_s"], 1e-9), 2),
        "p50_s": round(last["p50_s"], 3),
        "p99_s": round(last["p99_s"], 3),
        "errors_5xx": sum(r["errors_5xx"] for r in rows),
        "rss_start_mb": round(rss_start / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1),
        "rss_growth_mb": round((rss_end - rss_start) / 2**20, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--backends", default="torch", help="comma-separated: torch, onnx (default: torch)")
    p.add_argument("--onnx-precision", default="int4", choices=["fp32", "int8", "int4"],
                   help="the ONNX backend's weights (default: int4)")
    p.add_argument("--seconds", type=float, default=20.0, help="per concurrency level and backend")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--levels", default="1,4,16")
    args = p.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    backends = args.backends.split(",")
    unknown = set(backends) - {"torch", "onnx"}
    if unknown or len(set(backends)) < len(backends):
        p.error(f"--backends: each of torch, onnx at most once, got {args.backends!r}"
                + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""))

    servers: dict[str, tuple[subprocess.Popen, str, str]] = {}
    rows: dict[str, list[dict]] = {b: [] for b in backends}
    rss_start, rss_end, steps = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="polytask-load-") as tmp:
        try:
            for b in backends:  # one at a time: two models loading at once would slow both starts
                servers[b] = start_server(args, b, Path(tmp))
            for b, (proc, url, key) in servers.items():
                run_level(url, key, 2, min(5.0, args.seconds), args.max_tokens)  # warm-up: allocator, caches
                rss_start[b] = psutil.Process(proc.pid).memory_info().rss
            for i, c in enumerate(levels):
                for b in backends if i % 2 == 0 else backends[::-1]:
                    _, url, key = servers[b]
                    rows[b].append(run_level(url, key, c, args.seconds, args.max_tokens))
            time.sleep(1.0)  # let the schedulers release their grown caches
            for b, (proc, url, key) in servers.items():
                rss_end[b] = psutil.Process(proc.pid).memory_info().rss
                metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}).text
                steps[b] = next((line.split()[-1] for line in metrics.splitlines()
                                 if line.startswith('polytask_decode_steps_total{model="base"} ')), "?")
        finally:
            for proc, _, _ in servers.values():
                stop_server(proc)

    print(f"model={args.model} max_tokens={args.max_tokens} seconds/level={args.seconds} "
          f"max_batch={args.max_batch} cpus={os.cpu_count()}")
    name = {b: f"onnx-{args.onnx_precision}" if b == "onnx" else b for b in backends}
    print(f"{'backend':>10} {'clients':>7} {'requests':>8} {'req/s':>8} {'tok/s':>8} {'p50 s':>7} {'p99 s':>7} "
          f"{'5xx':>4} {'4xx':>4}")
    for i in range(len(levels)):
        for b in backends:
            r = rows[b][i]
            print(f"{name[b]:>10} {r['clients']:>7} {r['requests']:>8} {r['req_per_s']:>8.2f} "
                  f"{r['tokens_per_s']:>8.1f} {r['p50_s']:>7.2f} {r['p99_s']:>7.2f} {r['errors_5xx']:>4} "
                  f"{r['other_errors']:>4}")
    for b in backends:
        print(f"{name[b]} server: {steps[b]} batched decode steps, RSS {rss_start[b] / 2**20:.0f} MiB after "
              f"warm-up, {rss_end[b] / 2**20:.0f} MiB after the run")
    summaries = {b: summarize(rows[b], rss_start[b], rss_end[b]) for b in backends}
    if len(backends) == 1:
        print(json.dumps(summaries[backends[0]]))
        return
    base = backends[0]
    result = {}
    for b in backends[1:]:
        for i, c in enumerate(levels):
            ratio = rows[b][i]["req_per_s"] / max(rows[base][i]["req_per_s"], 1e-9)
            result[f"{b}_over_{base}_{c}"] = round(ratio, 2)
            print(f"{b} over {base} at {c} clients: {ratio:.2f}x req/s, p50 "
                  f"{rows[b][i]['p50_s'] / max(rows[base][i]['p50_s'], 1e-9):.2f}x")
    result["errors_5xx"] = sum(s["errors_5xx"] for s in summaries.values())
    for b, summary in summaries.items():
        result |= {f"{b}_{k}": v for k, v in summary.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
