"""Prometheus metrics of one proxy app, on a registry of its own (so tests can run several apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("bucketguard_requests", "S3 requests by operation and HTTP status",
                                ["operation", "status"], registry=r)
        self.latency = Histogram("bucketguard_request_seconds", "S3 request latency by operation", ["operation"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.bytes_in = Counter("bucketguard_received_bytes", "Object bytes received from clients", registry=r)
        self.bytes_out = Counter("bucketguard_sent_bytes", "Object bytes sent to clients", registry=r)
        self.upstream_errors = Counter("bucketguard_upstream_errors", "Failed calls to the upstream storage",
                                       ["operation"], registry=r)
        self.screened = Counter("bucketguard_uploads_screened", "Uploads screened, by verdict action", ["action"],
                                registry=r)
        self.chunked_bodies = Counter("bucketguard_aws_chunked_bodies", "aws-chunked request bodies decoded",
                                      ["payload"], registry=r)
        self.verdicts = Counter("bucketguard_verdicts", "Screening verdicts by action and rule", ["action", "rule"],
                                registry=r)
        self.decided_at = Counter("bucketguard_verdict_steps", "Which pipeline step decided", ["step"], registry=r)
        self.cache = Counter("bucketguard_verdict_cache", "Verdict cache lookups that reached it", ["result"],
                             registry=r)
        self.screen_latency = Histogram("bucketguard_screen_seconds", "Time to a verdict, by deciding step",
                                        ["step"], buckets=LATENCY_BUCKETS, registry=r)
        self.pending = Gauge("bucketguard_pending_scans", "Uploads landed unscanned, waiting for the detectors",
                             registry=r)
        self.uploads_in_flight = Gauge("bucketguard_uploads_in_flight", "Uploads being screened now", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def record_decision(self, decision: object, seconds: float | None) -> None:
        step = getattr(decision, "step", "")
        self.verdicts.labels(getattr(decision, "action", ""), getattr(decision, "rule", "")).inc()
        self.decided_at.labels(step).inc()
        if step in ("cache", "detectors"):
            self.cache.labels("hit" if step == "cache" else "miss").inc()
        if seconds is not None:
            self.screen_latency.labels(step).observe(seconds)
