"""Prometheus metrics under vLLM's names, so one set of alerts and dashboards serves both engines.

Each app gets its own registry (no module-level state). Gauges are read from the engine at
scrape time, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from archon.modelserver.engines.base import EngineStats

# vLLM's bucket edges, with finer low buckets for a CPU engine's per-token times.
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
REQUEST_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)


class _EngineGauges(Collector):
    def __init__(self, model_name: str, stats: Callable[[], EngineStats | None]):
        self._model = model_name
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self._stats() or EngineStats()
        for name, doc, value in (
            ("vllm:num_requests_running", "Requests being decoded.", stats.running),
            ("vllm:num_requests_waiting", "Requests waiting for a slot.", stats.waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage, 0 to 1.", stats.kv_cache_usage),
        ):
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self._model], float(value))
            yield family
        counters = [
            (
                "vllm:prefix_cache_queries",
                "Prompt tokens looked up in the prefix cache.",
                stats.prefix_cache_queries,
            ),
            (
                "vllm:prefix_cache_hits",
                "Prompt tokens whose KV was reused.",
                stats.prefix_cache_hits,
            ),
        ]
        spec = stats.spec_decode
        if spec is not None:  # as vLLM: the speculative decoding counters exist only when it is on
            counters += [
                ("vllm:spec_decode_num_drafts", "Number of spec decoding drafts.", spec.drafts),
                ("vllm:spec_decode_num_draft_tokens", "Number of draft tokens.", spec.draft_tokens),
                (
                    "vllm:spec_decode_num_accepted_tokens",
                    "Number of accepted tokens.",
                    spec.accepted_tokens,
                ),
            ]
        for name, doc, count in counters:
            counter = CounterMetricFamily(name, doc, labels=["model_name"])
            counter.add_metric([self._model], float(count))
            yield counter
        if spec is None:
            return
        per_pos = CounterMetricFamily(
            "vllm:spec_decode_num_accepted_tokens_per_pos",
            "Accepted tokens per draft position.",
            labels=["model_name", "position"],
        )
        for position, count in enumerate(list(spec.accepted_per_position)):
            per_pos.add_metric([self._model, str(position)], float(count))
        yield per_pos


class ModelServerMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        model_name: str,
        stats: Callable[[], EngineStats | None],
    ):
        self.registry = registry
        self.model_name = model_name
        labels = ["model_name"]
        r = self.registry
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Time between output tokens.",
            labels,
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Request latency, arrival to last token.",
            labels,
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "vllm:request_queue_time_seconds",
            "Time a request waited for a slot.",
            labels,
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prompt tokens processed.", labels, registry=r
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Tokens generated.", labels, registry=r
        )
        self.request_success = Counter(
            "vllm:request_success",
            "Finished requests by finish reason.",
            [*labels, "finished_reason"],
            registry=r,
        )
        self.model_ready = Gauge(
            "archon_model_ready",
            "1 when the model is loaded and the engine is alive.",
            labels,
            registry=r,
        )
        self.download_progress = Gauge(
            "archon_model_download_progress",
            "Fraction of the model file downloaded.",
            labels,
            registry=r,
        )
        for reason in ("stop", "length", "abort"):
            self.request_success.labels(model_name, reason)
        r.register(_EngineGauges(model_name, stats))

    def observe_request(
        self,
        *,
        ttft: float | None,
        itl: list[float],
        e2e: float,
        queued: float | None,
        prompt_tokens: int,
        generation_tokens: int,
        finish_reason: str,
    ) -> None:
        m = self.model_name
        if ttft is not None:
            self.ttft.labels(m).observe(ttft)
        hist = self.itl.labels(m)
        for gap in itl:
            hist.observe(gap)
        self.e2e.labels(m).observe(e2e)
        if queued is not None:
            self.queue_time.labels(m).observe(queued)
        self.prompt_tokens.labels(m).inc(prompt_tokens)
        self.generation_tokens.labels(m).inc(generation_tokens)
        self.request_success.labels(m, finish_reason).inc()
