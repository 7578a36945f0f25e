from __future__ import annotations

from pathlib import Path

import pytest

from archon.errors import ConfigError
from archon.modelserver.models import resolve
from archon.modelserver.progress import Progress, format_progress


def test_bundled_model_resolves_to_a_gguf_file() -> None:
    model = resolve("smollm2-135m-instruct")
    assert model.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert model.path.read_bytes()[:4] == b"GGUF"
    assert model.download is None


def test_local_path_uses_the_file_stem_as_name(tmp_path: Path) -> None:
    f = tmp_path / "my-model.Q4.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 16)
    model = resolve(str(f))
    assert model.default_name == "my-model.Q4"
    assert model.path == f.resolve()


@pytest.mark.parametrize(
    ("reference", "needle"),
    [
        ("/no/such/file.gguf", "no such file"),
        ("smollm3", "no such file, bundled model (smollm2-135m-instruct)"),
        ("org/repo", "'org/repo:FILE.gguf'"),
    ],
)
def test_bad_references_fail_with_the_value_named(reference: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(reference)
    assert f"llm_model {reference!r}" in str(info.value)
    assert needle in str(info.value)


def test_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        resolve(str(tmp_path))


def test_progress_line_has_percent_speed_and_eta() -> None:
    line = format_progress(
        "m.gguf", Progress(done=25_000_000, total=100_000_000, bytes_per_s=5_000_000)
    )
    assert line == "downloading m.gguf: 25.0% (25.0 MB/100.0 MB) 5.0 MB/s ETA 15s"
    big = format_progress(
        "org/repo", Progress(done=2_500_000_000, total=10_000_000_000, bytes_per_s=25_000_000)
    )
    assert big == "downloading org/repo: 25.0% (2.50 GB/10.00 GB) 25.0 MB/s ETA 5m00s"
