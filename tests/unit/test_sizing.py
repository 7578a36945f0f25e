"""Will it fit: the sizing arithmetic on real models' config.json and safetensors index
(tests/data/models), the GPU budget's precedence and the preflight's GPU count check."""

from __future__ import annotations

import re

import pytest

from archon.errors import ConfigError, GPUCountError
from archon.modelserver import launch, quantization, sizing
from archon.modelserver.settings import QUANTIZATION_METHODS, ModelServerSettings
from tests.support.fake_hub import MODEL_FACTS

QWEN14_GPTQ = "Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int4"
QWEN14 = "Qwen/Qwen2.5-Coder-14B-Instruct"
QWEN7_GPTQ = "Qwen/Qwen2.5-Coder-7B-Instruct-GPTQ-Int4"
LLAMA8 = "meta-llama/Llama-3.1-8B-Instruct"


def facts(repo: str) -> sizing.ModelFacts:
    return sizing.load_facts(str(MODEL_FACTS / repo))


def test_parameter_counts_match_the_published_sizes() -> None:
    assert facts(QWEN14).parameters / 1e9 == pytest.approx(14.77, abs=0.05)
    assert facts(LLAMA8).parameters / 1e9 == pytest.approx(8.03, abs=0.02)
    assert facts(QWEN7_GPTQ).parameters / 1e9 == pytest.approx(7.62, abs=0.05)


def test_long_context_says_the_largest_max_model_len_that_fits() -> None:
    llama = facts(LLAMA8)
    assert llama.weight_bytes_exact == 16060522496  # from the safetensors index
    report = sizing.estimate(llama, gpu_memory=24 * sizing.GiB, utilization=0.9, max_model_len=None)
    assert report.max_model_len == 131072  # the model's own context when unset
    assert not report.fits
    advice = " ".join(report.advice)
    match = re.search(r"lower max_model_len to (\d+)", advice)
    assert match is not None, advice
    fit = int(match[1])
    assert 30_000 < fit < 60_000
    assert sizing.estimate(
        llama, gpu_memory=24 * sizing.GiB, utilization=0.9, max_model_len=fit
    ).fits
    assert not sizing.estimate(
        llama, gpu_memory=24 * sizing.GiB, utilization=0.9, max_model_len=fit + 1024
    ).fits


def test_gptq_weights_are_about_a_third_of_bf16() -> None:
    bf16 = sizing.weight_bytes(facts(QWEN14), "none")
    int4 = sizing.weight_bytes(facts(QWEN14_GPTQ), "none")
    assert bf16 / sizing.GiB == pytest.approx(27.5, abs=0.3)
    assert int4 / sizing.GiB == pytest.approx(9.3, abs=0.3)


def test_the_quantization_flag_decides_how_weights_are_counted() -> None:
    qwen = facts(QWEN14)
    bf16 = sizing.weight_bytes(qwen, "none")
    assert sizing.weight_bytes(qwen, "fp8") < 0.6 * bf16  # one byte per linear weight
    assert sizing.weight_bytes(qwen, "awq") < 0.4 * bf16  # int4 with per-group scales
    assert sizing.weight_bytes(qwen, "gguf") == bf16  # a layout sizing does not model


def test_settings_accept_exactly_the_quantization_methods_sizing_knows() -> None:
    assert frozenset(quantization.METHODS) == QUANTIZATION_METHODS
    assert ModelServerSettings(quantization="GPTQ_Marlin").quantization == "gptq_marlin"


def test_tensor_parallel_splits_weights() -> None:
    qwen = facts(QWEN14)
    one = sizing.estimate(qwen, gpu_memory=16 * sizing.GiB, utilization=0.9, max_model_len=8192)
    four = sizing.estimate(
        qwen, gpu_memory=16 * sizing.GiB, utilization=0.9, max_model_len=8192, tensor_parallel=4
    )
    assert not one.fits and four.fits
    assert four.weights == pytest.approx(one.weights / 4, rel=0.01)


# ---- the GPU budget: --gpu-memory, else NVML, else the gpu_memory setting ----


@pytest.fixture
def nvml_sees(monkeypatch: pytest.MonkeyPatch):
    def see(gpus: sizing.GPUInfo | None) -> None:
        monkeypatch.setattr(sizing, "detect_gpus", lambda: gpus)

    return see


def test_the_flag_wins_over_nvml_and_the_setting(nvml_sees) -> None:
    nvml_sees(sizing.GPUInfo(count=2, memory=80 * sizing.GiB, source="NVML"))
    budget = sizing.gpu_budget(ModelServerSettings(gpu_memory="24GiB"), "16GiB")
    assert budget is not None
    assert (budget.memory, budget.source, budget.gpus) == (16 * sizing.GiB, "--gpu-memory", None)


def test_nvml_wins_over_the_setting(nvml_sees) -> None:
    gpus = sizing.GPUInfo(count=2, memory=80 * sizing.GiB, source="NVML")
    nvml_sees(gpus)
    budget = sizing.gpu_budget(ModelServerSettings(gpu_memory="24GiB"))
    assert budget is not None
    assert (budget.memory, budget.gpus) == (80 * sizing.GiB, gpus)
    assert "NVML" in budget.source and "2 GPU" in budget.source


def test_the_setting_when_nvml_sees_nothing_else_no_budget(nvml_sees) -> None:
    nvml_sees(None)
    budget = sizing.gpu_budget(ModelServerSettings(gpu_memory="24GiB"))
    assert budget is not None and budget.memory == 24 * sizing.GiB
    assert sizing.gpu_budget(ModelServerSettings()) is None


def test_a_bad_flag_is_a_config_error_naming_it(nvml_sees) -> None:
    nvml_sees(None)
    with pytest.raises(ConfigError, match="--gpu-memory"):
        sizing.gpu_budget(ModelServerSettings(), "lots")


def test_tensor_parallel_larger_than_gpus_is_refused(nvml_sees) -> None:
    nvml_sees(sizing.GPUInfo(count=1, memory=80 * sizing.GiB, source="NVML"))
    with pytest.raises(GPUCountError) as info:
        launch.preflight(ModelServerSettings(engine="vllm", tensor_parallel_size=2), None)
    assert info.value.exit_code == 6
    assert "tensor_parallel_size 2" in str(info.value)


def test_the_preflight_sizes_against_the_gpu_memory_setting_without_nvml(nvml_sees) -> None:
    nvml_sees(None)
    settings = ModelServerSettings(
        engine="vllm", llm_model=QWEN14_GPTQ, max_model_len=8192, gpu_memory="16GiB"
    )
    summary = launch.preflight(settings, facts(QWEN14_GPTQ))
    assert summary.startswith("VRAM check passed") and "gpu_memory setting" in summary
    assert launch.preflight(settings.model_copy(update={"gpu_memory": None}), None).startswith(
        "VRAM check skipped"
    )
