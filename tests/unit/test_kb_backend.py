"""Which local embedding backend ``auto`` picks: from the CPU's flags (as /proc/cpuinfo writes
them) and the kind of vectors a store already holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from archon.kb.embeddings import cpu_has_native_bf16, resolve_backend

# Trimmed from real /proc/cpuinfo "flags" lines: a Sapphire Rapids VM (this CI's kind of
# machine) and an AVX2-only Skylake client part.
SAPPHIRE_RAPIDS = (
    "flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush "
    "mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc avx512f avx512dq "
    "avx512_vnni avx512_bitalg avx512_vpopcntdq avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8"
)
SKYLAKE = (
    "flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush "
    "dts acpi mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm avx2 bmi2 erms"
)


@pytest.mark.parametrize(("flags", "native"), [(SAPPHIRE_RAPIDS, True), (SKYLAKE, False)])
def test_bf16_hardware_is_read_from_cpuinfo(tmp_path: Path, flags: str, native: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: GenuineIntel\n{flags}\nbogomips\t: 4190\n")
    assert cpu_has_native_bf16(cpuinfo) is native
    assert cpu_has_native_bf16(tmp_path / "missing") is False


@pytest.mark.parametrize(
    ("recorded", "native", "chosen"),
    [
        (None, True, "torch-bf16"),
        (None, False, "onnx-int8"),
        ("all-MiniLM-L6-v2@onnx-int8", True, "onnx-int8"),  # a store of int8 vectors stays int8
        ("all-MiniLM-L6-v2", True, "torch-bf16"),  # fp32 vectors: bf16 writes the same
        ("all-MiniLM-L6-v2", False, "onnx"),  # ... and without bf16, the faster fp32 backend
    ],
)
def test_auto_follows_the_store_then_the_cpu(recorded, native, chosen) -> None:
    assert resolve_backend("auto", recorded, native) == chosen


def test_an_explicit_backend_wins() -> None:
    assert resolve_backend("torch", "all-MiniLM-L6-v2@onnx-int8", True) == "torch"
