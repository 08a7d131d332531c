"""Prometheus metrics of one service instance, in a registry of its own.

HTTP requests and latencies by route and status, jobs by state (read from the job store at each
scrape: with PostgreSQL, every replica's), frames processed, and the latency of every Triton call
by model.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from orchestrator.jobs.store import JobStore, StoreUnavailable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, store: JobStore):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "faceswap_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "faceswap_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.frames = Counter("faceswap_frames_processed", "Frames and images", registry=self.registry)
        self.triton = Histogram(
            "faceswap_triton_request_duration_seconds",
            "Latency of Triton inference calls",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_JobCounts(store))

    def observe_triton(self, model: str, seconds: float) -> None:
        self.triton.labels(model).observe(seconds)


class _JobCounts:
    def __init__(self, store: JobStore):
        self.store = store

    def collect(self):
        try:
            counts = self.store.counts()
        except StoreUnavailable:  # the other metrics are still worth a scrape
            return
        family = GaugeMetricFamily("faceswap_jobs", "Jobs by state", labels=["state"])
        for state, count in counts.items():
            family.add_metric([state], count)
        yield family
