"""Generation defaults for answers: sampling and answer length the agent fills in per model.

A chat request that leaves a field out gets the agent's value for its model; a field the
request sets is left alone, except ``max_tokens`` above ``max_tokens_cap``, which is lowered
to the cap (the answer then ends with ``finish_reason: "length"``). A metered key's own
``default_max_tokens`` wins over the agent's default, and its ``max_tokens`` cap still bounds
it (archon.agent.limits checks the body after this).

Why the defaults below: measured on the tuning half of benchmarks/data/answers.jsonl with
``archon agent eval`` against the bundled SmolLM2-135M (docs/benchmarks.md). OpenAI's defaults
(temperature 1, no length limit) make a small model ramble until its context is full.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if TYPE_CHECKING:  # settings.py imports this module: keep its imports light
    from archon.agent.auth import ApiKey

# Sampling fields copied into the body as they are: OpenAI's, plus repetition_penalty, which
# archon serve and vLLM both accept (OpenAI's API would reject it: leave it unset for such).
SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
)
PENALTY_FIELDS = ("frequency_penalty", "presence_penalty", "repetition_penalty")
_LENGTH_FIELDS = ("max_tokens", "max_completion_tokens")


class Sampling(BaseModel):
    """One set of defaults; a field left unset (null) is not sent."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    max_tokens: int | None = Field(None, ge=1, description="When the request names none.")
    max_tokens_cap: int | None = Field(None, ge=1, description="Requests above it are lowered.")
    lead_quote: bool | None = Field(
        None,
        description="Start the answer with the retrieved passage that best matches the "
        "question, verbatim, with its source (archon.agent.rag.lead_quote).",
    )
    quoted_max_tokens: int | None = Field(
        None,
        ge=1,
        description="The default max_tokens when the answer starts with a lead quote: the "
        "quote is part of the answer's length.",
    )

    def over(self, base: Sampling) -> Sampling:
        """These values where set (null included: it unsets), ``base``'s elsewhere."""
        merged = base.model_copy(update=self.model_dump(exclude_unset=True))
        merged.model_fields_set.update(base.model_fields_set | self.model_fields_set)
        return merged

    def check(self, where: str) -> None:
        if self.max_tokens and self.max_tokens_cap and self.max_tokens > self.max_tokens_cap:
            raise ValueError(
                f"{where}: max_tokens {self.max_tokens} is above max_tokens_cap "
                f"{self.max_tokens_cap}"
            )


def _measured_default() -> Sampling:
    # The values chosen by the measurement in docs/benchmarks.md ("Answers").
    return Sampling(
        temperature=0.2,
        top_p=0.9,
        frequency_penalty=None,
        presence_penalty=None,
        repetition_penalty=1.1,
        max_tokens=256,
        max_tokens_cap=1024,
        lead_quote=False,
    )


# The bundled 135M model: past about 120 tokens its answers wander off, and it seldom copies
# the command it was given, so its answers start with the docs' own passage (docs/benchmarks.md).
BUILT_IN_MODELS = {
    "smollm2-*": Sampling(max_tokens=128, lead_quote=True, quoted_max_tokens=32),
}


class GenerationSettings(BaseModel):
    """The agent's ``generation`` setting: ``default`` for every model (its fields over the
    measured ones), and ``models``: globs over the request's model name (``smollm2-*``), the
    first that matches putting its fields over ``default``."""

    model_config = ConfigDict(extra="forbid")

    default: Sampling = Field(default_factory=_measured_default)
    models: dict[str, Sampling] = Field(default_factory=lambda: dict(BUILT_IN_MODELS))

    @model_validator(mode="after")
    def _merged(self) -> GenerationSettings:
        # What the operator wrote under default (nothing when the whole block is ours).
        chosen = set(self.default.model_fields_set) if "default" in self.model_fields_set else set()
        self.default = self.default.over(_measured_default())
        cap, length = self.default.max_tokens_cap, self.default.max_tokens
        if "max_tokens" not in chosen and cap is not None and length is not None and length > cap:
            self.default.max_tokens = cap  # our default length yields to the operator's cap
        self.default.check("default")
        if "models" not in self.model_fields_set:
            # Built-in per-model values are ours, not the operator's: a field the operator set
            # under default wins over them, and the operator's cap bounds them.
            self.models = {
                glob: self._bounded(built_in, chosen) for glob, built_in in self.models.items()
            }
        self.models = {glob: s.over(self.default) for glob, s in self.models.items()}
        for glob, merged in self.models.items():
            merged.check(f"models.{glob}")
        return self

    def _bounded(self, built_in: Sampling, chosen: set[str]) -> Sampling:
        values = {
            k: v for k, v in built_in.model_dump(exclude_unset=True).items() if k not in chosen
        }
        if "max_tokens" in chosen:
            values.pop("quoted_max_tokens", None)  # the operator's length is the length
        cap = self.default.max_tokens_cap
        for name in ("max_tokens", "quoted_max_tokens"):
            if cap is not None and values.get(name) is not None:
                values[name] = min(values[name], cap)
        return Sampling(**values)

    def for_model(self, model: Any) -> Sampling:
        name = model if isinstance(model, str) else ""
        for glob, overrides in self.models.items():
            if fnmatchcase(name, glob):
                return overrides
        return self.default


def parse_generation(value: Any) -> Any:
    """The setting from YAML or JSON text (an environment variable, a ConfigMap value) or a
    mapping; a mistake is one line naming the field (``models.smollm2-*.temperature: ...``)."""
    if isinstance(value, GenerationSettings):
        return value
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value) if value.strip() else {}
        except yaml.YAMLError as exc:
            raise ValueError(f"not YAML or JSON: {str(exc).splitlines()[0]}") from None
    if value is None:
        value = {}
    try:
        return GenerationSettings.model_validate(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        if not err["loc"] and "error" in err.get("ctx", {}):
            raise ValueError(str(err["ctx"]["error"])) from None  # already says where
        where = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"{where}: {err['msg']}") from None


def copies_from_prompt(data: dict[str, Any]) -> bool:
    """True for a request whose answer is JSON (``response_format`` json_object or
    json_schema) or tool calls (``tools``, unless ``tool_choice`` is "none"): values the model
    mostly copies from the prompt."""
    response_format = data.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type", "text") != "text":
        return True
    if response_format is not None and not isinstance(response_format, dict):
        return True  # not text either; the model server's 400 says what is wrong with it
    return bool(data.get("tools")) and data.get("tool_choice") != "none"


def names_a_length(data: dict[str, Any]) -> bool:
    return any(data.get(f) is not None for f in _LENGTH_FIELDS)


def apply_generation(
    settings: GenerationSettings,
    data: dict[str, Any],
    key: ApiKey | None = None,
    *,
    sampling: bool = True,
    penalties: bool = True,
    default_length: bool = True,
) -> bool:
    """Fill the body's unset sampling fields and its answer length in place; True if changed.
    The length cap applies to every request. The sampling defaults only with ``sampling`` (a
    chat: a completion's client, such as an evaluation harness, sets its own), and the
    penalties among them only with ``penalties`` (a plain-text answer: JSON and tool arguments
    copy values from the prompt, and a repetition penalty makes the model avoid exactly those
    tokens; docs/benchmarks.md, "Copying"). The default length only with ``default_length`` (a
    chat: a completion keeps the model server's default, OpenAI's 16).

    Runs before the key's limits (archon.agent.limits.Limiter.admit) so they see the final body.
    """
    values = settings.for_model(data.get("model"))
    changed = False
    for name in SAMPLING_FIELDS if sampling else ():
        value = getattr(values, name)
        if name in PENALTY_FIELDS and not penalties:
            continue
        if value is not None and data.get(name) is None:
            data[name] = value
            changed = True
    cap = values.max_tokens_cap
    asked = [f for f in _LENGTH_FIELDS if data.get(f) is not None]
    for name in asked:
        value = data[name]
        # A bool is an int to Python: leave it for the model server's 400.
        if cap is not None and type(value) is int and value > cap:
            data[name] = cap
            changed = True
    if asked or values.max_tokens is None or not default_length:
        return changed
    metered = key if key is not None and key.metered else None
    if metered is not None and metered.default_max_tokens is not None:
        return changed  # the key's own default is the more specific one
    length = values.max_tokens
    if metered is not None and metered.max_tokens is not None:
        length = min(length, metered.max_tokens)
    data["max_tokens"] = length
    return True
