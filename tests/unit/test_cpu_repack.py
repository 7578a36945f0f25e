"""When the CPU engine lets llama.cpp repack weights: ``cpu_repack=auto`` turns it off for a
build with AMX (its kernels crash on the first prompt on virtualised Sapphire/Granite Rapids:
ggml-org/llama.cpp#20824; every request crashed here on a KVM Xeon until it was off)."""

from __future__ import annotations

import pytest

from archon.modelserver.engines.llamacpp_native import use_repack

# llama_print_system_info() as llama-cpp-python 0.3.36 prints it: a KVM Xeon with AMX (this
# project's CI kind of machine) and an AMD EPYC (Zen 3, AVX2 only).
XEON_AMX = (
    b"CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | "
    b"BMI2 = 1 | AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | "
    b"AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
EPYC_AVX2 = (
    b"CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
    b"LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)


@pytest.mark.parametrize(
    ("setting", "info", "repack"),
    [
        ("auto", XEON_AMX, False),
        ("auto", EPYC_AVX2, True),
        ("on", XEON_AMX, True),  # bare metal, where AMX works: the operator's call
        ("off", EPYC_AVX2, False),
    ],
)
def test_repack_setting(setting: str, info: bytes, repack: bool) -> None:
    assert use_repack(setting, info) is repack
