"""What every command group shares: the Typer that maps config errors to exit codes, logging,
and the one-line failure.

Nothing heavy is imported here: ``archon --help`` imports every command module.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from archon.modelserver.settings import ModelServerSettings

EXIT_CONFIG = 2

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = EXIT_CONFIG) -> NoReturn:
    typer.echo(f"archon: error: {message}", err=True)
    raise typer.Exit(code)


def exits_on_config_error(command: F, part: str | None = None) -> F:
    """Run ``command``; a ConfigError becomes one line on stderr and its own exit code, which
    is what `archon doctor` reads back from a crash-looping pod. A package of a part that is not
    installed becomes one line naming the extra to install (exit 2); ``part``: the extra of the
    command's own part, named first."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ModuleNotFoundError as exc:
            from archon.extras import missing_extra

            line = missing_extra(exc, part)
            if line is None:
                raise
            fail(line)
        except Exception as exc:
            # Imported here, not at the top: archon.errors pulls in FastAPI.
            from archon.errors import ConfigError

            if not isinstance(exc, ConfigError):
                raise
            fail(str(exc), exc.exit_code)

    return wrapper  # type: ignore[return-value]


class Typer(typer.Typer):
    """A ``typer.Typer`` whose commands and callbacks all exit through
    :func:`exits_on_config_error`, so no command can forget to. ``part``: the packaging extra
    of the group's part (pyproject.toml), for the line a missing package gives."""

    def __init__(self, *args: Any, part: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.part = part

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        return self._wrapped(super().command(*args, **kwargs))

    def callback(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        return self._wrapped(super().callback(*args, **kwargs))

    def _wrapped(self, register: Callable[[F], Any]) -> Callable[[F], F]:
        def decorator(function: F) -> F:
            register(exits_on_config_error(function, self.part))
            return function

        return decorator


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per HTTP request of the downloader is noise next to our progress lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def model_server_settings(config: Path | None, overrides: dict[str, Any]) -> ModelServerSettings:
    """The model server's settings: flags that were given, then the ConfigMap file, env."""
    from archon.modelserver.settings import load_model_server_settings

    return load_model_server_settings(config, {k: v for k, v in overrides.items() if v is not None})
