"""Runbook "High Inference Latency": p95 above 30 s, and what in the traffic explains it."""

from __future__ import annotations

from archon.ops.doctor.findings import Finding
from archon.ops.doctor.scope import Scope, is_ready, name
from archon.ops.status import Samples, histogram_quantile, parse_metrics, sum_of

RUNBOOK = "docs/runbooks/ArchonHighRequestLatency.md"
THRESHOLD_S = 30.0
LONG_PROMPT = 4096
HIGH_MAX_TOKENS = 2048
P95_QUERY = (
    "histogram_quantile(0.95, sum by (le) "
    '(rate(vllm:e2e_request_latency_seconds_bucket{namespace="%s"}[15m])))'
)


def _share_above(samples: Samples, name: str, limit: float) -> float | None:
    buckets = {float(labels["le"]): 0.0 for labels, _ in samples.get(f"{name}_bucket", [])}
    for labels, value in samples.get(f"{name}_bucket", []):
        buckets[float(labels["le"])] += value
    if not buckets:
        return None
    total = buckets[max(buckets)]
    below = max((count for le, count in buckets.items() if le <= limit), default=0.0)
    return (total - below) / total if total else None


def check(scope: Scope) -> list[Finding]:
    found = []
    for pod in scope.pods():
        if not is_ready(pod):
            continue
        text = scope.source.pod_metrics(scope.namespace, name(pod), scope.port)
        if not text:
            continue
        samples = parse_metrics(text)
        p95 = None
        result = scope.source.prometheus(P95_QUERY % scope.namespace)
        source = "Prometheus, last 15 min"
        if result:
            p95 = float(result[0]["value"][1])
        if p95 is None or p95 != p95:  # absent or NaN
            p95 = histogram_quantile(0.95, samples, "vllm:e2e_request_latency_seconds")
            source = "pod /metrics, since start"
        if p95 is None or p95 <= THRESHOLD_S:
            continue
        requests = sum_of(samples, "vllm:e2e_request_latency_seconds_count") or 0
        evidence = [f"p95 request latency {p95:.1f} s ({source}) over {requests:.0f} requests"]
        fixes = []
        if requests:
            prompt = (sum_of(samples, "vllm:prompt_tokens_total") or 0) / requests
            output = (sum_of(samples, "vllm:generation_tokens_total") or 0) / requests
            evidence.append(f"average prompt {prompt:.0f} tokens, average output {output:.0f}")
        long_share = _share_above(samples, "vllm:request_prompt_tokens", LONG_PROMPT)
        if long_share is not None:
            evidence.append(f"{100 * long_share:.0f}% of prompts are over {LONG_PROMPT} tokens")
            if long_share > 0.2:
                fixes.append("shorten prompts (fewer RAG chunks) or lower max_model_len")
        high_share = _share_above(samples, "vllm:request_params_max_tokens", HIGH_MAX_TOKENS)
        if high_share is not None:
            evidence.append(
                f"{100 * high_share:.0f}% of requests ask for max_tokens over {HIGH_MAX_TOKENS}"
            )
            if high_share > 0.2:
                fixes.append("reduce max_tokens in the clients (or cap it in the agent)")
        waiting = sum_of(samples, "vllm:num_requests_waiting") or 0
        if waiting:
            evidence.append(f"{waiting:.0f} requests waiting now")
            fixes.append("add capacity: another GPU and Deployment behind the agent")
        temps = scope.source.prometheus("max by (gpu, Hostname) (DCGM_FI_DEV_GPU_TEMP)") or []
        for series in temps:
            celsius = float(series["value"][1])
            evidence.append(
                f"GPU {series['metric'].get('gpu', '?')} on "
                f"{series['metric'].get('Hostname', '?')} at {celsius:.0f}°C"
            )
            if celsius > 85:
                fixes.append("the GPU throttles above 85°C: check the node's cooling")
        if not fixes:
            fixes.append("reduce max_tokens in requests and consider a lower max_model_len")
        found.append(
            Finding(
                "latency",
                "warning",
                f"High inference latency on {name(pod)}",
                "; ".join(fixes),
                evidence,
                RUNBOOK,
            )
        )
    return found
