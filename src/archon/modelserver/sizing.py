"""Will this model fit this GPU? Weights + KV cache for ``max_model_len`` + overhead, against
``gpu_memory_utilization`` x VRAM, and what to change when it does not.

The estimate follows how vLLM spends its budget: it loads the weights, profiles one forward pass
of ``max_num_batched_tokens`` (activations), keeps room for CUDA graphs and the allocator, and
gives the rest to the KV cache, which must hold at least one sequence of ``max_model_len``
tokens or vLLM refuses to start ("The model's max seq len ... is larger than the maximum number
of tokens that can be stored in KV cache").
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from archon.errors import ConfigError, ModelReferenceError, NetworkError
from archon.modelserver import hub, models
from archon.modelserver.quantization import weight_storage
from archon.modelserver.settings import parse_bytes

log = logging.getLogger("archon.sizing")

GiB = 2**30
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "fp8": 1}
FIXED_OVERHEAD = int(0.75 * GiB)  # CUDA graphs, NCCL buffers, allocator fragmentation
BATCHED_TOKENS = 2048  # vLLM's profiling batch (max_num_batched_tokens)
MAX_NUM_SEQS = 256  # vLLM's default; the sampler holds logits for this many sequences


@dataclass(frozen=True)
class ModelFacts:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    dtype: str
    max_position: int
    quant_method: str | None
    bits: int
    group_size: int
    weight_bytes_exact: int | None = None

    @classmethod
    def from_config(
        cls, name: str, config: dict[str, Any], index: dict[str, Any] | None = None
    ) -> ModelFacts:
        text = config.get("text_config", config)  # multimodal configs nest the LM
        try:
            hidden = int(text["hidden_size"])
            heads = int(text["num_attention_heads"])
            quant = config.get("quantization_config") or {}
            total = (index or {}).get("metadata", {}).get("total_size")
            return cls(
                name=name,
                layers=int(text["num_hidden_layers"]),
                hidden=hidden,
                heads=heads,
                kv_heads=int(text.get("num_key_value_heads") or heads),
                head_dim=int(text.get("head_dim") or hidden // heads),
                intermediate=int(text.get("intermediate_size") or 4 * hidden),
                vocab=int(text["vocab_size"]),
                tied_embeddings=bool(config.get("tie_word_embeddings", False)),
                dtype=str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"),
                max_position=int(text.get("max_position_embeddings") or 2048),
                quant_method=quant.get("quant_method"),
                bits=int(quant.get("bits") or quant.get("w_bit") or 16),
                group_size=int(quant.get("group_size") or quant.get("q_group_size") or 128),
                weight_bytes_exact=int(total) if total else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelReferenceError(
                f"llm_model {name!r}: config.json lacks what sizing needs ({exc})"
            ) from None

    @property
    def linear_params(self) -> int:
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attention + mlp)

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def parameters(self) -> int:
        return self.linear_params + self.embedding_params + self.layers * 2 * self.hidden

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return self.layers * self.kv_heads * self.head_dim * 2 * dtype_bytes


def weight_bytes(facts: ModelFacts, quantization: str) -> int:
    """Bytes of weights on the GPU(s), from the checkpoint's size when known."""
    method = quantization if quantization != "none" else (facts.quant_method or "none")
    base = DTYPE_BYTES.get(facts.dtype, 2)
    if facts.weight_bytes_exact and method == (facts.quant_method or "none"):
        return facts.weight_bytes_exact
    other = (facts.parameters - facts.linear_params) * base
    kind = weight_storage(method)
    if kind == "int":
        bits = facts.bits if facts.bits < 16 else 4
        # Packed weights plus an fp16 scale and a packed zero point per group.
        per_weight_bits = bits + (16 + bits) / facts.group_size
        return int(facts.linear_params * per_weight_bits / 8) + other
    if kind == "fp8":
        return facts.linear_params + other
    return facts.parameters * base


def activation_bytes(facts: ModelFacts) -> int:
    per_token = (4 * facts.hidden + 2 * facts.intermediate) * 2
    logits = MAX_NUM_SEQS * facts.vocab * 4
    return BATCHED_TOKENS * per_token + logits + FIXED_OVERHEAD


@dataclass(frozen=True)
class SizingReport:
    facts: ModelFacts
    gpu_memory: int  # per GPU
    utilization: float
    max_model_len: int
    tensor_parallel: int
    weights: int  # per GPU
    kv_cache: int  # per GPU, for max_model_len tokens
    overhead: int
    advice: list[str]

    @property
    def budget(self) -> int:
        return int(self.utilization * self.gpu_memory)

    @property
    def needed(self) -> int:
        return self.weights + self.kv_cache + self.overhead

    @property
    def fits(self) -> bool:
        return self.needed <= self.budget

    @property
    def headroom_tokens(self) -> int:
        """KV tokens that fit in what is left after weights and overhead."""
        per_token = self.facts.kv_bytes_per_token() / self.tensor_parallel
        return max(0, int((self.budget - self.weights - self.overhead) / per_token))

    def rows(self) -> list[tuple[str, str]]:
        tp = (
            f" (per GPU, tensor_parallel_size={self.tensor_parallel})"
            if (self.tensor_parallel > 1)
            else ""
        )
        return [
            ("model", f"{self.facts.name} ({self.facts.parameters / 1e9:.1f}B parameters)"),
            ("weights" + tp, gib(self.weights)),
            (f"KV cache for max_model_len={self.max_model_len}", gib(self.kv_cache)),
            ("activations + overhead", gib(self.overhead)),
            ("total needed", gib(self.needed)),
            (
                f"budget: gpu_memory_utilization {self.utilization:.2f} x {gib(self.gpu_memory)}",
                gib(self.budget),
            ),
            ("fits", "yes" if self.fits else "NO"),
        ]


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def estimate(
    facts: ModelFacts,
    *,
    gpu_memory: int,
    utilization: float,
    max_model_len: int | None,
    tensor_parallel: int = 1,
    quantization: str = "none",
) -> SizingReport:
    tokens = max_model_len or facts.max_position
    weights = math.ceil(weight_bytes(facts, quantization) / tensor_parallel)
    kv = math.ceil(facts.kv_bytes_per_token() * tokens / tensor_parallel)
    overhead = activation_bytes(facts)
    report = SizingReport(
        facts, gpu_memory, utilization, tokens, tensor_parallel, weights, kv, overhead, []
    )
    if not report.fits:
        report.advice.extend(_advice(report))
    return report


def estimate_for(facts: ModelFacts, settings: Any, gpu_memory: int) -> SizingReport:
    """The estimate for a model server's settings (gpu_memory_utilization, max_model_len, ...)."""
    return estimate(
        facts,
        gpu_memory=gpu_memory,
        utilization=settings.gpu_memory_utilization,
        max_model_len=settings.max_model_len,
        tensor_parallel=settings.tensor_parallel_size,
        quantization=settings.quantization,
    )


def _advice(r: SizingReport) -> list[str]:
    advice = []
    needed_util = r.needed / r.gpu_memory
    if r.weights + r.overhead >= r.budget:
        advice.append(
            f"the weights alone need {gib(r.weights)} of the {gib(r.budget)} budget: use a "
            "quantized variant of the model (GPTQ/AWQ int4 is about a quarter of bf16), a smaller "
            "model, or more GPUs (tensor_parallel_size)"
        )
    else:
        fit = r.headroom_tokens // 256 * 256
        if fit >= 256:
            advice.append(f"lower max_model_len to {fit} or less")
        else:
            advice.append("the KV cache has no room left: use a smaller or quantized model")
    if needed_util <= 0.95:
        advice.append(
            f"or raise gpu_memory_utilization to {math.ceil(needed_util * 100) / 100:.2f}"
        )
    gpus_needed = r.tensor_parallel
    while gpus_needed < 8:
        gpus_needed *= 2
        if (r.weights + r.kv_cache) * r.tensor_parallel / gpus_needed + r.overhead <= r.budget:
            advice.append(f"or spread it over {gpus_needed} GPUs (tensor_parallel_size)")
            break
    return advice


# ---- where the facts come from ----


def load_facts(reference: str) -> ModelFacts:
    """config.json (and the safetensors index) from a local dir, the cache, or the hub."""
    path = Path(reference).expanduser()
    if path.is_dir():
        return _facts_from_dir(reference, path)
    repo = models.parse_repo(reference)
    if repo is None:
        raise ModelReferenceError(
            f"llm_model {reference!r}: sizing needs a hub repository id or a model directory"
        )
    snapshot = models.cached_repo(repo)
    if snapshot is not None:
        return _facts_from_dir(reference, snapshot)
    config = _hub_json(reference, repo, "config.json", required=True)
    index = _hub_json(reference, repo, "model.safetensors.index.json", required=False)
    assert config is not None
    return ModelFacts.from_config(reference, config, index)


def _facts_from_dir(reference: str, path: Path) -> ModelFacts:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelReferenceError(f"llm_model {reference!r}: no config.json in {path}")
    index_path = path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else None
    return ModelFacts.from_config(reference, json.loads(config_path.read_text()), index)


def _hub_json(
    reference: str, repo: models.HubRepo, filename: str, *, required: bool
) -> dict[str, Any] | None:
    url = hub.resolve_url(repo.repo_id, repo.revision, filename)
    try:
        response = httpx.get(url, headers=hub.auth_headers(), follow_redirects=True, timeout=30)
    except httpx.HTTPError as exc:
        raise NetworkError(
            f"llm_model {reference!r}: cannot fetch {filename} from {hub.endpoint()} "
            f"({exc.__class__.__name__}); pass a local model directory or check HF_ENDPOINT"
        ) from None
    if response.status_code == 404 and not required:
        return None
    if response.status_code >= 400:
        what = response.headers.get("x-error-code") or f"HTTP {response.status_code}"
        raise ModelReferenceError(
            f"llm_model {reference!r}: {filename} not found on the hub ({what}); "
            "check the repository name"
        )
    body: dict[str, Any] = response.json()
    return body


# ---- the GPU side ----


@dataclass(frozen=True)
class GPUInfo:
    count: int
    memory: int  # of the smallest visible GPU
    source: str


def detect_gpus() -> GPUInfo | None:
    """Visible GPUs through NVML, or None when there is no NVIDIA driver."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver / no GPU: NVMLError_LibraryNotFound, DriverNotLoaded...
        return None
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            return None
        sizes = [
            pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).total
            for i in range(count)
        ]
        return GPUInfo(count, min(sizes), "NVML")
    finally:
        pynvml.nvmlShutdown()


@dataclass(frozen=True)
class GPUBudget:
    memory: int  # per GPU
    source: str  # where ``memory`` came from, for the reports
    gpus: GPUInfo | None  # what NVML saw, when it was asked


def gpu_budget(settings: Any, override: str | None = None) -> GPUBudget | None:
    """The VRAM per GPU to size against, in this order: ``override`` (`config check
    --gpu-memory`), the GPUs NVML sees, the ``gpu_memory`` setting; None when none of them."""
    if override:
        try:
            return GPUBudget(parse_bytes(override), "--gpu-memory", None)
        except ValueError as exc:
            raise ConfigError(f"--gpu-memory: {exc}") from None
    if (gpus := detect_gpus()) is not None:
        return GPUBudget(gpus.memory, f"NVML, {gpus.count} GPU", gpus)
    if settings.gpu_memory:
        return GPUBudget(parse_bytes(settings.gpu_memory), "gpu_memory setting", None)
    return None
