"""llama.cpp's CPU backend when it is built as run-time variants (the `archon` image).

The image's llama-cpp-python wheel (scripts/build-llama-wheel.sh) is built with
GGML_BACKEND_DL and GGML_CPU_ALL_VARIANTS: the CPU backend is not linked into libggml but lies
next to it as one ``libggml-cpu-<variant>.so`` per instruction-set level (x64, haswell,
skylakex, zen4, ...), and ggml loads the best one the CPU supports. ``llama_backend_init()``
looks for them only in the executable's directory and the current directory
(``ggml_backend_load_all()``), never in ``llama_cpp/lib`` where the wheel puts them, and
llama-cpp-python 0.3.36 does not load them itself: without this call the model fails to load
with "no backends are loaded". A wheel built the usual way (CPU backend linked in, as in the
development venv) has no such files, and this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from pathlib import Path

log = logging.getLogger("archon.modelserver")

VARIANT = re.compile(r"libggml-cpu-([\w.]+)\.so")


def load_cpu_backend() -> str | None:
    """Load the best CPU backend variant for this CPU, once per process, before
    ``llama_backend_init()``; return its name (``zen4``, ``haswell``...), or None where the
    CPU backend is linked in."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    if not any(lib_dir.glob("libggml-cpu-*.so")):
        return None
    # The libggml that libllama loaded (its registry is the one that counts), found by its
    # soname: a wheel stores libggml.so and libggml.so.0 as two copies, and the other copy,
    # loaded by path, would keep a registry of its own.
    soname = min((p.name for p in lib_dir.glob("libggml.so.*")), key=len, default="libggml.so")
    try:
        ggml = ctypes.CDLL(soname, mode=os.RTLD_NOLOAD)
    except OSError:  # not loaded yet
        ggml = ctypes.CDLL(str(lib_dir / soname))
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    first = ggml.ggml_backend_reg_count() == 0
    if first:
        ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_load_all_from_path(str(lib_dir).encode())
    # ggml scores every variant against the CPU and keeps the best: the one mapped now.
    variant = ",".join(sorted(set(VARIANT.findall(Path("/proc/self/maps").read_text())))) or None
    if first:
        log.info(
            "llama.cpp CPU backend: %s (the best for this CPU of those in %s)", variant, lib_dir
        )
    return variant
