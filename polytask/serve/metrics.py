"""Prometheus text exposition (format 0.0.4) of request counts, latencies and the schedulers' state.

Twenty lines of counters instead of a client library: the format is plain text and stable. Each
scheduler's series carry a ``model`` label naming it (``base``, ``adapter``).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from polytask.scheduler import Scheduler

# Latency buckets in seconds: a health check to a long generation.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# (name, type, help, the scheduler's value) of the series every scheduler reports.
SCHEDULER_SERIES = (
    ("polytask_queue_depth", "gauge", "Generation requests waiting for a slot.", "queue_depth"),
    ("polytask_active_requests", "gauge", "Generation requests in the running batch.", "active"),
    ("polytask_tokens_per_second", "gauge", "Generated tokens per second over the last 10 s.", "tokens_per_second"),
    ("polytask_generated_tokens_total", "counter", "Tokens generated.", "tokens"),
    ("polytask_prompt_tokens_total", "counter", "Prompt tokens prefilled.", "prompt_tokens"),
    ("polytask_decode_steps_total", "counter", "Batched decode steps.", "steps"),
    ("polytask_rejected_requests_total", "counter", "Requests refused with 429 (queue full).", "rejected"),
)


def _labels(**kv) -> str:
    return "{" + ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                          for k, v in kv.items()) + "}"


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency_buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.latency_count: dict[str, int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(method, route, status)] += 1
            buckets = self.latency_buckets[route]
            for i, b in enumerate(BUCKETS):
                if seconds <= b:
                    buckets[i] += 1
            self.latency_sum[route] += seconds
            self.latency_count[route] += 1

    def render(self, schedulers: dict[str, Scheduler]) -> str:
        """Every series; ``schedulers``: label -> scheduler, each reported under ``model="label"``."""
        out = ["# HELP polytask_http_requests_total HTTP requests by method, route and status.",
               "# TYPE polytask_http_requests_total counter"]
        with self.lock:
            for (method, route, status), n in sorted(self.requests.items()):
                out.append(f"polytask_http_requests_total{_labels(method=method, route=route, status=status)} {n}")
            out += ["# HELP polytask_http_request_seconds Time to the response's first byte, by route.",
                    "# TYPE polytask_http_request_seconds histogram"]
            for route in sorted(self.latency_count):
                for b, n in zip(BUCKETS, self.latency_buckets[route], strict=True):
                    out.append(f"polytask_http_request_seconds_bucket{_labels(route=route, le=b)} {n}")
                count = self.latency_count[route]
                out.append(f"polytask_http_request_seconds_bucket{_labels(route=route, le='+Inf')} {count}")
                out.append(f"polytask_http_request_seconds_sum{_labels(route=route)} {self.latency_sum[route]:.6f}")
                out.append(f"polytask_http_request_seconds_count{_labels(route=route)} {count}")
        # The format keeps a metric's samples together: under each HELP and TYPE, one per scheduler.
        values = {label: {**s.counts, "queue_depth": s.queue_depth, "active": s.active,
                          "tokens_per_second": round(s.tokens_per_second(), 3)} for label, s in schedulers.items()}
        for name, kind, help_text, key in SCHEDULER_SERIES:
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            out += [f"{name}{_labels(model=label)} {v[key]}" for label, v in values.items()]
        out += ["# HELP polytask_finished_requests_total Generation requests by how they ended.",
                "# TYPE polytask_finished_requests_total counter"]
        out += [f"polytask_finished_requests_total{_labels(model=label, reason=reason)} {v[reason]}"
                for label, v in values.items() for reason in ("stop", "length", "timeout", "cancelled", "error")]
        return "\n".join(out) + "\n"
