"""Prometheus text metrics: requests by path and status, a latency histogram, jobs by state."""

from __future__ import annotations

import threading
from collections import Counter

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
KNOWN = ("/health", "/metrics", "/search", "/documents", "/forget", "/jobs", "/receipts", "/verify", "/models")


def _route(path: str) -> str:
    """The route a path belongs to (ids left out, so the label set stays small)."""
    return next((k for k in KNOWN if path == k or path.startswith(k + "/")), "other")


class Metrics:
    """Counters and a histogram, safe across threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.buckets: Counter[tuple[str, float]] = Counter()
        self.sums: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()

    def observe(self, path: str, status: int, seconds: float) -> None:
        """Record one request."""
        route = _route(path)
        with self.lock:
            self.requests[route, status] += 1
            self.sums[route] += seconds
            self.counts[route] += 1
            for b in BUCKETS:
                if seconds <= b:
                    self.buckets[route, b] += 1

    def render(self, jobs: dict[str, int]) -> str:
        """The Prometheus exposition text."""
        lines = ["# TYPE lethe_requests_total counter"]
        with self.lock:
            for (route, status), n in sorted(self.requests.items()):
                lines.append(f'lethe_requests_total{{path="{route}",status="{status}"}} {n}')
            lines.append("# TYPE lethe_request_seconds histogram")
            for route in sorted(self.counts):
                for b in BUCKETS:
                    lines.append(f'lethe_request_seconds_bucket{{path="{route}",le="{b}"}} {self.buckets[route, b]}')
                lines.append(f'lethe_request_seconds_bucket{{path="{route}",le="+Inf"}} {self.counts[route]}')
                lines.append(f'lethe_request_seconds_sum{{path="{route}"}} {self.sums[route]:.6f}')
                lines.append(f'lethe_request_seconds_count{{path="{route}"}} {self.counts[route]}')
        lines.append("# TYPE lethe_jobs gauge")
        lines += [f'lethe_jobs{{state="{s}"}} {n}' for s, n in jobs.items()]
        return "\n".join(lines) + "\n"
