"""The machine's matmul peak (FLOP/s), the denominator of MFU.

``polytask peak`` times a large square matmul in the training dtype and caches the best rate in
``$POLYTASK_HOME/peak.json`` under a key naming the device, the dtype and (on CPU) the thread
count, since a torchrun worker gets one thread (OMP_NUM_THREADS=1) and a lone process all.
"""

from __future__ import annotations

import json
import os
import time

import torch

from polytask.weights import polytask_home


def device_key(device: torch.device, dtype: torch.dtype) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu-threads{torch.get_num_threads()}"
    return f"{name}|{str(dtype).removeprefix('torch.')}"


def measure(device: torch.device, dtype: torch.dtype, size: int = 2048, seconds: float = 2.0) -> float:
    """Best FLOP/s of ``size`` x ``size`` matmuls over ~``seconds``."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    flops = 2 * size**3
    best = 0.0
    torch.mm(a, b)  # warm up (kernel selection, page faults)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, 4 * flops / (time.perf_counter() - t0))
    return best


def _cache_path():
    return polytask_home() / "peak.json"


def save(key: str, flops: float) -> None:
    path = _cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    table = json.loads(path.read_text()) if path.exists() else {}
    table[key] = flops
    tmp = path.with_name(f".peak.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(table, indent=2))
    tmp.rename(path)


def cached(device: torch.device, dtype: torch.dtype) -> float | None:
    path = _cache_path()
    if not path.exists():
        return None
    return json.loads(path.read_text()).get(device_key(device, dtype))
