"""vLLM's ``--quantization`` methods, once: which a vllm-config ConfigMap may name (settings),
and how each stores the weights (sizing).
"""

from __future__ import annotations

from typing import Literal

# How the linear layers' weights are stored:
# "int": low-bit integers with a scale (and a packed zero point) per group of weights;
# "fp8": one byte per weight; "dense": the checkpoint's dtype (or a layout sizing does not model).
Storage = Literal["int", "fp8", "dense"]

METHODS: dict[str, Storage] = {
    "none": "dense",  # no --quantization flag
    "awq": "int",
    "awq_marlin": "int",
    "gptq": "int",
    "gptq_marlin": "int",
    "gptq_marlin_24": "int",
    "marlin": "int",
    "moe_wna16": "int",
    "compressed-tensors": "int",
    "bitsandbytes": "int",
    "fp8": "fp8",
    "fbgemm_fp8": "fp8",
    "modelopt": "fp8",
    "mxfp4": "fp8",
    "gguf": "dense",
    "experts_int8": "dense",
    "deepspeedfp": "dense",
    "tpu_int8": "dense",
    "aqlm": "dense",
    "hqq": "dense",
    "ipex": "dense",
    "torchao": "dense",
    "quark": "dense",
}


def weight_storage(method: str) -> Storage:
    """How ``method`` stores weights; a method vLLM has and this table lacks counts as dense."""
    return METHODS.get(method, "dense")
