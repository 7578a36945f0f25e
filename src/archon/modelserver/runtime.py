"""The model's lifecycle behind the HTTP server: download, load, serve, fail.

The server listens at once; this object loads the model in a background thread and tells
``/health`` what it is doing (downloading 43%, loading) until the engine is ready.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from archon.errors import ConfigError, ModelLoadError, ServiceUnavailableError
from archon.modelserver.engines.base import Engine, EngineDead, EngineStats
from archon.modelserver.models import ResolvedModel
from archon.modelserver.progress import Progress
from archon.modelserver.settings import ModelServerSettings
from archon.service import Lifecycle, Phase

log = logging.getLogger("archon.modelserver")

EngineFactory = Callable[[ResolvedModel, ModelServerSettings], Engine]


def speculation_config(settings: ModelServerSettings) -> Any:
    """The CPU engine's speculation settings, or None when it is off."""
    from archon.modelserver.engines.llamacpp_speculation import SpeculationConfig

    if not settings.speculative:
        return None
    return SpeculationConfig(
        tokens=settings.speculative_tokens,
        ngram_max=settings.speculative_ngram_max,
        ngram_min=settings.speculative_ngram_min,
    )


def llamacpp_factory(model: ResolvedModel, settings: ModelServerSettings) -> Engine:
    from archon.modelserver.engines.llamacpp import LlamaCppEngine

    for name in ("gpu_memory_utilization", "tensor_parallel_size", "quantization"):
        log.info(
            "%s=%s is validated but ignored by the CPU engine (llama.cpp)",
            name,
            getattr(settings, name),
        )
    return LlamaCppEngine(
        model.path,
        max_model_len=settings.max_model_len,
        slots=settings.parallel,
        threads=settings.effective_threads,
        batch_size=settings.batch_size,
        cpu_repack=settings.cpu_repack,
        speculation=speculation_config(settings),
    )


@dataclass
class HealthReport:
    ready: bool
    body: dict[str, Any]


class ModelRuntime:
    """The engine in the service kit's `Lifecycle`, plus what only a model has: the download's
    byte counts (for /health and the progress gauge) and an engine loop that can die."""

    def __init__(
        self,
        settings: ModelServerSettings,
        model: ResolvedModel,
        served_name: str,
        factory: EngineFactory = llamacpp_factory,
        on_fatal: Callable[[ConfigError], None] | None = None,
    ):
        self.settings = settings
        self.model = model
        self.served_name = served_name
        self._factory = factory
        self._on_fatal = on_fatal or (lambda _exc: None)
        self.state: Lifecycle[Engine] = Lifecycle()
        self.progress: Progress | None = None
        self.started = time.monotonic()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._load, name="model-loader", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        try:
            if self.model.download is not None:
                self.state.downloading()
                self.model.download.fetch(
                    on_progress=self._set_progress,
                    log_interval=self.settings.download_log_interval,
                )
            self.state.loading()
            log.info("loading %s from %s", self.model.reference, self.model.path)
            began = time.monotonic()
            engine = self._factory(self.model, self.settings)
            self.state.ready(engine)
            log.info(
                "model %s ready in %.1fs (max_model_len=%d, parallel=%d)",
                self.served_name,
                time.monotonic() - began,
                engine.max_model_len,
                engine.slots,
            )
        except ConfigError as exc:
            self._fail(exc)
        except Exception as exc:
            log.exception("model load failed")
            self._fail(ModelLoadError(f"model load failed: {exc}"))

    def _set_progress(self, progress: Progress) -> None:
        self.progress = progress

    def _fail(self, exc: ConfigError) -> None:
        self.state.failed(str(exc))
        self._on_fatal(exc)

    @property
    def phase(self) -> Phase:
        return self.state.phase

    @property
    def engine(self) -> Engine | None:
        return self.state.value

    def stats(self) -> EngineStats | None:
        return self.engine.stats() if self.engine is not None else None

    def require_engine(self) -> Engine:
        engine = self.engine
        if engine is None:
            raise ServiceUnavailableError(
                f"Model {self.served_name} is not ready ({self.describe_phase()})",
                code="model_loading",
            )
        if not engine.alive:
            raise EngineDead("The inference engine has stopped; the server needs a restart")
        return engine

    def describe_phase(self) -> str:
        if self.phase == "downloading" and self.progress and self.progress.fraction is not None:
            return f"downloading {100 * self.progress.fraction:.0f}%"
        return self.phase

    def health(self) -> HealthReport:
        base = {"model": self.served_name, "phase": self.phase}
        engine = self.engine
        if self.phase == "ready" and engine is not None:
            if engine.alive:
                return HealthReport(True, {"status": "ok", **base})
            return HealthReport(False, {"status": "error", **base, "detail": "engine loop died"})
        if self.phase == "failed":
            return HealthReport(False, {"status": "error", **base, "detail": self.state.error})
        body: dict[str, Any] = {"status": "loading", **base}
        body["elapsed_s"] = round(time.monotonic() - self.started, 1)
        if self.progress is not None:
            body["downloaded_bytes"] = self.progress.done
            body["total_bytes"] = self.progress.total
            if self.progress.fraction is not None:
                body["progress"] = round(self.progress.fraction, 4)
        return HealthReport(False, body)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
