"""Render chat messages with the Jinja chat template stored in the model file.

Templates are written for Hugging Face's ``apply_chat_template``; we give them the same
environment (sandboxed Jinja, ``raise_exception``, ``tojson``, ``strftime_now``).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from archon.errors import InvalidRequestError


class ChatTemplateRejected(Exception):
    pass


def _raise(message: str) -> None:
    raise ChatTemplateRejected(message)


class ChatTemplate:
    def __init__(self, source: str, *, bos_token: str, eos_token: str):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.filters["tojson"] = lambda value, indent=None, **_: json.dumps(
            value, ensure_ascii=False, indent=indent
        )
        self._template = env.from_string(source)
        self._bos = bos_token
        self._eos = eos_token

    def render(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except ChatTemplateRejected as exc:
            # The model's own template refuses this conversation (e.g. roles out of order).
            raise InvalidRequestError(
                f"Chat template rejected messages: {exc}", param="messages"
            ) from None
        except TemplateError as exc:
            raise InvalidRequestError(
                f"Chat template could not render messages: {exc}", param="messages"
            ) from None
