"""Start the model server on either engine: what `archon serve` does once settings are read.

- llama.cpp (CPU): resolve the GGUF, build the app, run uvicorn until the engine or a signal
  stops it (:func:`run_llamacpp`).
- vLLM (GPU): build vLLM's command from the same settings, pull the model, size it against the
  GPU budget, then exec vLLM or write its ``--config`` file for the vllm container
  (:func:`run_vllm`). vLLM is never imported here: it runs in its own process (its own
  interpreter, even, with ``vllm_python``), replacing ours through ``exec`` so signals and exit
  codes are vLLM's own.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from archon.errors import ConfigError, EngineMissingError, GPUCountError, InsufficientVRAMError
from archon.modelserver import models, sizing
from archon.modelserver.settings import ModelServerSettings

log = logging.getLogger("archon.vllm")

ENTRYPOINT = "vllm.entrypoints.openai.api_server"


@dataclass(frozen=True)
class VllmLaunch:
    python: str
    args: list[str]  # everything after `python -m vllm.entrypoints.openai.api_server`
    env: dict[str, str]

    @property
    def argv(self) -> list[str]:
        return [self.python, "-m", ENTRYPOINT, *self.args]

    def shell(self) -> str:
        """The command as a shell line; the API key is shown as *** (it is a secret)."""
        env = " ".join(
            f"{k}=***" if k == "VLLM_API_KEY" else f"{k}={shlex.quote(v)}"
            for k, v in sorted(self.env.items())
        )
        return (env + " " if env else "") + shlex.join(self.argv)

    def config_yaml(self) -> str:
        """The same arguments as a vLLM ``--config`` file (flag -> value)."""
        options: dict[str, object] = {}
        key: str | None = None
        for arg in self.args:
            if arg.startswith("--"):
                name, eq, value = arg[2:].partition("=")
                if eq:
                    options[name] = value
                    key = None
                else:
                    options[name] = True
                    key = name
            elif key is not None:
                options[key] = arg
                key = None
        return yaml.safe_dump(options, sort_keys=False)


def build_vllm_launch(settings: ModelServerSettings) -> VllmLaunch:
    """``python -m vllm.entrypoints.openai.api_server --model ...`` from Archon's settings."""
    served = settings.served_model_name or settings.llm_model
    args = [
        "--model",
        settings.llm_model,
        "--served-model-name",
        served,
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--gpu-memory-utilization",
        f"{settings.gpu_memory_utilization:g}",
        "--tensor-parallel-size",
        str(settings.tensor_parallel_size),
    ]
    if settings.max_model_len is not None:
        args += ["--max-model-len", str(settings.max_model_len)]
    if settings.quantization != "none":
        args += ["--quantization", settings.quantization]
    extra = shlex.split(settings.vllm_extra_args)
    speculative = settings.vllm_speculative_config()
    if speculative is not None and not any(a.startswith("--speculative-config") for a in extra):
        # vLLM's ngram (prompt-lookup) method; a --speculative-config in vllm_extra_args wins.
        args += ["--speculative-config", json.dumps(speculative, separators=(",", ":"))]
    args += extra
    env = {}
    if settings.api_key is not None:
        # In the environment, not argv: argv is visible to every process on the node.
        env["VLLM_API_KEY"] = settings.api_key.get_secret_value()
    return VllmLaunch(settings.vllm_python or sys.executable, args, env)


def check_installed(launch: VllmLaunch) -> None:
    if launch.python == sys.executable:
        found = importlib.util.find_spec("vllm") is not None
    else:
        probe = subprocess.run(
            [
                launch.python,
                "-c",
                "import importlib.util, sys; "
                "sys.exit(0 if importlib.util.find_spec('vllm') else 1)",
            ],
            capture_output=True,
            timeout=60,
        )
        found = probe.returncode == 0
    if not found:
        raise EngineMissingError(
            f"engine vllm: vLLM is not installed for {launch.python}; "
            "pip install 'archon[vllm]' there, or point vllm_python (ARCHON_VLLM_PYTHON) at an "
            "interpreter that has it"
        )


def preflight(settings: ModelServerSettings, facts: sizing.ModelFacts | None) -> str:
    """Check GPU count and VRAM; return a one-line summary, raise a typed ConfigError if not."""
    budget = sizing.gpu_budget(settings)
    gpus = budget.gpus if budget else None
    if gpus is not None and settings.tensor_parallel_size > gpus.count:
        raise GPUCountError(
            f"tensor_parallel_size {settings.tensor_parallel_size} is larger than the "
            f"{gpus.count} visible GPU(s); lower tensor_parallel_size or request more GPUs"
        )
    if facts is None or budget is None:
        return "VRAM check skipped: " + (
            "no model facts" if facts is None else "no GPU visible and gpu_memory not set"
        )
    report = sizing.estimate_for(facts, settings, budget.memory)
    if not report.fits:
        raise InsufficientVRAMError(
            f"llm_model {settings.llm_model!r} needs {sizing.gib(report.needed)} per GPU "
            f"(weights {sizing.gib(report.weights)}, KV cache for max_model_len="
            f"{report.max_model_len} {sizing.gib(report.kv_cache)}) but gpu_memory_utilization "
            f"{settings.gpu_memory_utilization:g} x {sizing.gib(budget.memory)} allows "
            f"{sizing.gib(report.budget)}: " + "; ".join(report.advice)
        )
    return (
        f"VRAM check passed: needs {sizing.gib(report.needed)} of {sizing.gib(report.budget)} "
        f"per GPU ({budget.source})"
    )


def write_config(launch: VllmLaunch, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(launch.config_yaml())


def exec_vllm(launch: VllmLaunch, extra_env: dict[str, str]) -> None:
    """Replace this process with vLLM."""
    env = {**os.environ, **extra_env, **launch.env}
    log.info("starting vLLM: %s", launch.shell())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(launch.python, launch.argv, env)


def run_vllm(settings: ModelServerSettings, *, write_config_to: Path | None, pull: bool) -> None:
    """Pull -> size -> preflight, then exec vLLM (this process becomes vLLM), or, with
    ``write_config_to``, write vLLM's arguments there and return: the vllm container's start."""
    launch = build_vllm_launch(settings)
    if not pull and write_config_to is None:
        raise ConfigError("--no-pull applies to --write-vllm-config (the preflight) only")
    if write_config_to is None:
        check_installed(launch)
    if pull:
        path = models.pull(settings.llm_model, log_interval=settings.download_log_interval)
        facts_from: str | None = str(path) if path.is_dir() else None
    else:
        # config.json and the safetensors index: from a complete cache, else a few KB from the
        # hub. The download itself, and naming its failures, is the vllm container's.
        facts_from = settings.llm_model
    try:
        facts = sizing.load_facts(facts_from) if facts_from is not None else None
    except ConfigError as exc:
        # Sizing is advice: an odd config.json, or a hub the preflight cannot ask, must not
        # block serving; the vllm container's download names a hub failure precisely.
        log.warning("VRAM check skipped: %s", exc)
        facts = None
    log.info("%s", preflight(settings, facts))
    if write_config_to is not None:
        write_config(launch, write_config_to)
        log.info("wrote vLLM's arguments to %s: %s", write_config_to, " ".join(launch.args))
        return
    # The model is in the cache now: vLLM must not wait on the hub.
    offline = {"HF_HUB_OFFLINE": "1"} if models.parse_repo(settings.llm_model) else {}
    exec_vllm(launch, offline)


def run_llamacpp(
    settings: ModelServerSettings, log_level: str, announce: Callable[[str], None]
) -> int:
    """Serve on llama.cpp until stopped; the exit code is a fatal engine error's, else 0.

    ``announce`` gets the line saying where the server listens once the app is built.
    """
    import uvicorn

    from archon.modelserver.app import create_app

    model = models.resolve_gguf(settings.llm_model)
    exit_code = 0
    server: uvicorn.Server | None = None

    def on_fatal(exc: ConfigError) -> None:
        nonlocal exit_code
        logging.getLogger("archon").error("%s", exc)
        exit_code = exc.exit_code
        if server is not None:
            server.should_exit = True

    fastapi_app = create_app(settings, model, on_fatal=on_fatal)
    server = uvicorn.Server(
        uvicorn.Config(
            fastapi_app,
            host=settings.host,
            port=settings.port,
            log_level=log_level.lower(),
            timeout_graceful_shutdown=5,
        )
    )
    shown_host = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
    announce(
        f"Archon model server on http://{shown_host}:{settings.port}/v1 "
        f"(model '{fastapi_app.state.runtime.served_name}'; /health turns 200 when loaded)"
    )
    server.run()
    return exit_code
