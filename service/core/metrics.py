"""diptych's Prometheus metrics, next to BentoML's defaults on the same /metrics.

Every label is bounded: model name and version (a handful), a fixed list of rejection
reasons, the protocol (http, grpc) and its routes or methods. These are the series every
kind has; a kind's own (the classifier's predicted labels, the generator's images) are made
in its module, the same way. prometheus_client is imported on first use, after BentoML has
set PROMETHEUS_MULTIPROC_DIR in the worker, so the numbers reach /metrics.
"""

from __future__ import annotations

import functools

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        import prometheus_client as prom

        model = ["model", "version"]
        run = [*model, "runtime"]  # runtime: litert or tensorflow (contract/runtime.py)
        self.inference_seconds = prom.Histogram(
            "diptych_inference_seconds", "Duration of one model call (one batch)", run, buckets=LATENCY_BUCKETS
        )
        self.batch_size = prom.Histogram("diptych_batch_size", "Items per model call", run, buckets=BATCH_BUCKETS)
        self.rejected = prom.Counter("diptych_requests_rejected", "Requests refused, by reason", ["reason", "protocol"])
        call = ["protocol", "method"]
        self.requests = prom.Counter("diptych_requests", "Requests answered, by status code", [*call, "code"])
        self.in_flight = prom.Gauge(
            "diptych_requests_in_flight", "Requests holding one of the max_concurrency slots", multiprocess_mode="livesum"
        )
        self.receiving = prom.Gauge(
            "diptych_requests_receiving", "HTTP requests whose body is still arriving (they hold no slot yet)",
            multiprocess_mode="livesum"
        )
        self.request_seconds = prom.Histogram(
            "diptych_request_seconds", "Time to answer a request", call, buckets=LATENCY_BUCKETS
        )
        # Per model version, so a canary can be compared with stable (deploy/prometheus/alerts.yml).
        self.model_requests = prom.Counter(
            "diptych_model_requests", "Requests a model version served, by outcome (ok, or the error's reason)",
            [*model, "outcome"]
        )
        self.model_request_seconds = prom.Histogram(
            "diptych_model_request_seconds", "Time a request waited for its model version's results", model,
            buckets=LATENCY_BUCKETS
        )
        self.queue_depth = prom.Gauge(
            "diptych_batch_queue_depth", "Items waiting for a batch, per model version", model,
            multiprocess_mode="livesum"
        )
        self.queue_wait = prom.Histogram(
            "diptych_batch_queue_wait_seconds", "Time an item waited in the queue before its batch ran", model,
            buckets=LATENCY_BUCKETS
        )
        self.shadow_requests = prom.Counter(
            "diptych_shadow_requests", "Copies of requests a shadow version served (never returned), by outcome",
            [*model, "outcome"]
        )
        self.payload_events = prom.Counter(
            "diptych_payload_events", "Payload log events: written, dropped (queue full) or failed (the sink)",
            ["outcome"]
        )
        self.model_info = prom.Gauge(
            "diptych_model_info", "Loaded models (value 1)", ["kind", *run], multiprocess_mode="livemax"
        )
        self.model_versions = prom.Gauge(
            "diptych_model_versions", "Each model version's state (value 1 for its state: loading, available, "
            "unloading, failed)", [*model, "state"], multiprocess_mode="livemax"
        )
        self.model_source_available = prom.Gauge(
            "diptych_model_source_available", "Whether a model source (the repository folder, a model's folder in "
            "it, a configured folder, the model store) could be read on the last scan (0: what it served keeps "
            "serving)", ["source"], multiprocess_mode="livemin"
        )
        self.model_loads = prom.Counter("diptych_model_loads", "Model version loads, by outcome", ["model", "outcome"])
        self.model_load_seconds = prom.Histogram(
            "diptych_model_load_seconds", "Time to load, convert and warm up a model version", ["model"],
            buckets=(0.5, 1, 2.5, 5, 10, 25, 50, 100, 250)
        )
        self.model_verification_failures = prom.Counter(
            "diptych_model_verification_failures", "Model versions refused by require_signed, by reason (unsigned, "
            "untrusted, tampered, invalid, misplaced)", ["model", "reason"]
        )
        self.model_versions_reuploaded = prom.Counter(
            "diptych_model_versions_reuploaded", "Served object-store versions uploaded again (versions are "
            "immutable: the loaded copy keeps serving; upload a new version number)", ["model"]
        )
        self.promotion_decisions = prom.Counter(
            "diptych_promotion_decisions", "Candidates promoted or rolled back by labelled evidence (promoted, "
            "rolled_back; refused: the change was not applied)", ["model", "decision"]
        )


@functools.cache
def metrics() -> Metrics:
    """The process's metrics, created once (Prometheus refuses duplicate names)."""
    return Metrics()
