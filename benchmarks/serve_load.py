"""Load test of `polytask serve`: 1, 4 and 16 concurrent clients on loopback, each for a bounded time.

Starts the server as a child process (its own store and key in a temporary folder), warms it
up, then for each concurrency level runs that many clients, each sending OpenAI chat
completions back to back until the level's time is up. Prints a table and, as the last line,
one JSON object:

    req_per_s_1, req_per_s_16, batching_speedup (req/s at 16 over req/s at 1),
    p50_s, p99_s (request latency at the highest level), errors_5xx (all levels),
    rss_growth_mb (server memory after the run minus after warm-up)

    python benchmarks/serve_load.py [--model default] [--seconds 20] [--max-tokens 32]

Only 127.0.0.1 is ever contacted. Timings are noisy on shared machines: compare the ratio.
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


def start_server(args, home: Path) -> tuple[subprocess.Popen, str, str]:
    from polytask.serve.keys import KeyStore

    store = home / "store.sqlite"
    key, _ = KeyStore(store).create(["bench"], label="bench")
    port = free_port()
    env = dict(os.environ, POLYTASK_HOME=os.environ.get("POLYTASK_HOME", str(home)))
    cmd = [sys.executable, "-m", "polytask", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--model", args.model, "--store", str(store), "--max-batch", str(args.max_batch),
           "--max-queue", "256", "--max-len", "1024"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url, key
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise SystemExit("server did not come up within 300 s")


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--seconds", type=float, default=20.0, help="per concurrency level")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--levels", default="1,4,16")
    args = p.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    with tempfile.TemporaryDirectory(prefix="polytask-load-") as tmp:
        proc, url, key = start_server(args, Path(tmp))
        server = psutil.Process(proc.pid)
        try:
            run_level(url, key, 2, min(5.0, args.seconds), args.max_tokens)  # warm-up: allocator, caches
            rss_start = server.memory_info().rss
            rows = [run_level(url, key, c, args.seconds, args.max_tokens) for c in levels]
            time.sleep(1.0)  # let the scheduler release its grown cache
            rss_end = server.memory_info().rss
            metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}).text
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    print(f"model={args.model} max_tokens={args.max_tokens} seconds/level={args.seconds} "
          f"max_batch={args.max_batch} cpus={os.cpu_count()}")
    print(f"{'clients':>7} {'requests':>8} {'req/s':>8} {'tok/s':>8} {'p50 s':>7} {'p99 s':>7} {'5xx':>4} {'4xx':>4}")
    for r in rows:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['req_per_s']:>8.2f} {r['tokens_per_s']:>8.1f} "
              f"{r['p50_s']:>7.2f} {r['p99_s']:>7.2f} {r['errors_5xx']:>4} {r['other_errors']:>4}")
    # The OpenAI endpoint runs on the base model's scheduler.
    steps, tokens = (next((line.split()[-1] for line in metrics.splitlines()
                           if line.startswith(f'{name}{{model="base"}} ')), "?")
                     for name in ("polytask_decode_steps_total", "polytask_generated_tokens_total"))
    print(f"server: {steps} batched decode steps, {tokens} tokens generated")
    first, last = rows[0], rows[-1]
    print(json.dumps({
        "req_per_s_1": round(first["req_per_s"], 3),
        f"req_per_s_{last['clients']}": round(last["req_per_s"], 3),
        "batching_speedup": round(last["req_per_s"] / max(first["req_per_s"], 1e-9), 2),
        "p50_s": round(last["p50_s"], 3),
        "p99_s": round(last["p99_s"], 3),
        "errors_5xx": sum(r["errors_5xx"] for r in rows),
        "rss_growth_mb": round((rss_end - rss_start) / 2**20, 1),
    }))


if __name__ == "__main__":
    main()
