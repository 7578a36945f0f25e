"""instructor (default mode: a named tool call) against Archon."""

from __future__ import annotations

import instructor
import openai
from common import EXTRACT, STRUCTURED_MAX_TOKENS, Driver, Options, Person, person

driver = Driver("instructor")


def client(o: Options) -> instructor.Instructor:
    raw = openai.OpenAI(base_url=o.base_url, api_key="sk-none", max_retries=0, timeout=180)
    return instructor.from_openai(raw)  # the default mode, Mode.TOOLS


@driver.case("structured_default_mode")
def structured(o: Options) -> None:
    out = client(o).chat.completions.create(
        model=o.model,
        response_model=Person,
        messages=[{"role": "user", "content": EXTRACT}],
        temperature=0,
        max_tokens=STRUCTURED_MAX_TOKENS,
        max_retries=0,
    )
    person(out)


@driver.case("structured_partial_stream")
def partial_stream(o: Options) -> None:
    last = None
    for partial in client(o).chat.completions.create_partial(
        model=o.model,
        response_model=Person,
        messages=[{"role": "user", "content": EXTRACT}],
        temperature=0,
        max_tokens=STRUCTURED_MAX_TOKENS,
        max_retries=0,
    ):
        last = partial
    assert last is not None, "no partial"
    person(last.model_dump())


@driver.case("structured_json_schema_mode")
def json_schema_mode(o: Options) -> None:
    raw = openai.OpenAI(base_url=o.base_url, api_key="sk-none", max_retries=0, timeout=180)
    out = instructor.from_openai(raw, mode=instructor.Mode.JSON_SCHEMA).chat.completions.create(
        model=o.model,
        response_model=Person,
        messages=[{"role": "user", "content": EXTRACT}],
        temperature=0,
        max_tokens=STRUCTURED_MAX_TOKENS,
        max_retries=0,
    )
    person(out)


if __name__ == "__main__":
    driver.main()
