"""How sampling values change what a model copies from the prompt: extraction with
``response_format`` json_schema and tool arguments with a named ``tool_choice``, each asked
under several sets of sampling values, scored by exact match of every extracted value.

Why: the agent used to add its answer defaults (temperature 0.2, top_p 0.9,
repetition_penalty 1.1) to every chat request. A repetition penalty lowers the odds of every
token already in the prompt, which is exactly what extraction and tool arguments must copy
("Alice is 31 years old." came back as {"name": "Ava", "age": 25}). The numbers chose the
agent's defaults (docs/benchmarks.md, "Copying").

    .venv/bin/python benchmarks/copy_bench.py            # starts the bundled model server
    .venv/bin/python benchmarks/copy_bench.py --url http://127.0.0.1:8000

The prompts are written for this benchmark (names, numbers and places made up).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from archon.readiness import free_port, wait_until  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "server defaults (nothing sent)": {},
    "temperature 0": {"temperature": 0},
    "temperature 0, repetition_penalty 1.1": {"temperature": 0, "repetition_penalty": 1.1},
    "0.2 / top_p 0.9": {"temperature": 0.2, "top_p": 0.9},
    "0.2 / top_p 0.9 / repetition_penalty 1.1 (old agent default)": {
        "temperature": 0.2,
        "top_p": 0.9,
        "repetition_penalty": 1.1,
    },
}

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
PLACE = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
    "additionalProperties": False,
}
ITEM = {
    "type": "object",
    "properties": {"product": {"type": "string"}, "price": {"type": "number"}},
    "required": ["product", "price"],
    "additionalProperties": False,
}
EXTRACTIONS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("Alice is 31 years old.", PERSON, {"name": "Alice", "age": 31}),
    ("My neighbour Bob turned 47 last week.", PERSON, {"name": "Bob", "age": 47}),
    ("Carla, aged 25, joined the team.", PERSON, {"name": "Carla", "age": 25}),
    ("Dmitri is a 62 year old engineer.", PERSON, {"name": "Dmitri", "age": 62}),
    ("The youngest player, Emeka, is 19.", PERSON, {"name": "Emeka", "age": 19}),
    ("Fatima celebrated her 38th birthday today.", PERSON, {"name": "Fatima", "age": 38}),
    ("Greta Lund (54) chairs the board.", PERSON, {"name": "Greta Lund", "age": 54}),
    ("Hiro is 8 years old and loves trains.", PERSON, {"name": "Hiro", "age": 8}),
    ("I moved to Lisbon, Portugal in May.", PLACE, {"city": "Lisbon", "country": "Portugal"}),
    ("The conference is in Osaka, Japan.", PLACE, {"city": "Osaka", "country": "Japan"}),
    ("Our office is in Curitiba, Brazil.", PLACE, {"city": "Curitiba", "country": "Brazil"}),
    ("She grew up in Tampere, Finland.", PLACE, {"city": "Tampere", "country": "Finland"}),
    ("The parcel ships from Leeds, England.", PLACE, {"city": "Leeds", "country": "England"}),
    ("We met in Mombasa, Kenya.", PLACE, {"city": "Mombasa", "country": "Kenya"}),
    ("The blue kettle costs 24.5 dollars.", ITEM, {"product": "blue kettle", "price": 24.5}),
    ("A desk lamp is on sale for 18 euros.", ITEM, {"product": "desk lamp", "price": 18}),
    ("Bought a rain jacket for 79.99.", ITEM, {"product": "rain jacket", "price": 79.99}),
    ("The chess set sells at 42 pounds.", ITEM, {"product": "chess set", "price": 42}),
    ("Price of the road bike: 1250.", ITEM, {"product": "road bike", "price": 1250}),
    ("One notebook costs 3.75.", ITEM, {"product": "notebook", "price": 3.75}),
]


def _tool(name: str, description: str, **props: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {k: {"type": t} for k, t in props.items()},
                "required": list(props),
            },
        },
    }


MULTIPLY = _tool("multiply", "Multiply two integers", a="integer", b="integer")
WEATHER = _tool("get_weather", "Current weather in a city", city="string")
CONVERT = _tool(
    "convert_currency", "Convert money", amount="number", source="string", target="string"
)
EMAIL = _tool("send_email", "Send an email", to="string", subject="string")
TOOL_CALLS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("What is 6 times 7?", MULTIPLY, {"a": 6, "b": 7}),
    ("Multiply 12 by 9.", MULTIPLY, {"a": 12, "b": 9}),
    ("Compute 15 * 4.", MULTIPLY, {"a": 15, "b": 4}),
    ("How much is 23 multiplied by 3?", MULTIPLY, {"a": 23, "b": 3}),
    ("What do you get for 8 times 11?", MULTIPLY, {"a": 8, "b": 11}),
    ("Product of 5 and 30, please.", MULTIPLY, {"a": 5, "b": 30}),
    ("What's the weather in Oslo?", WEATHER, {"city": "Oslo"}),
    ("Is it raining in Nairobi right now?", WEATHER, {"city": "Nairobi"}),
    ("Weather for Montreal, please.", WEATHER, {"city": "Montreal"}),
    ("How hot is it in Seville today?", WEATHER, {"city": "Seville"}),
    ("Tell me the weather in Hanoi.", WEATHER, {"city": "Hanoi"}),
    ("Check the weather in Reykjavik.", WEATHER, {"city": "Reykjavik"}),
    (
        "Convert 100 USD to EUR.",
        CONVERT,
        {"amount": 100, "source": "USD", "target": "EUR"},
    ),
    (
        "How many JPY is 250 GBP?",
        CONVERT,
        {"amount": 250, "source": "GBP", "target": "JPY"},
    ),
    (
        "Change 40 CHF into SEK.",
        CONVERT,
        {"amount": 40, "source": "CHF", "target": "SEK"},
    ),
    (
        "Convert 12.5 EUR to USD.",
        CONVERT,
        {"amount": 12.5, "source": "EUR", "target": "USD"},
    ),
    (
        "Email maria@example.com with the subject Invoice.",
        EMAIL,
        {"to": "maria@example.com", "subject": "Invoice"},
    ),
    (
        "Send a mail to ops@example.org, subject: Outage report",
        EMAIL,
        {"to": "ops@example.org", "subject": "Outage report"},
    ),
    (
        "Write to li.wei@example.net about Lunch plans.",
        EMAIL,
        {"to": "li.wei@example.net", "subject": "Lunch plans"},
    ),
    (
        "Email jan@example.com, subject Welcome aboard.",
        EMAIL,
        {"to": "jan@example.com", "subject": "Welcome aboard"},
    ),
]


def same(got: Any, want: dict[str, Any]) -> bool:
    """Every expected value, strings compared case-insensitively, numbers by value."""
    if not isinstance(got, dict):
        return False
    for key, value in want.items():
        have = got.get(key)
        if isinstance(value, str):
            if not isinstance(have, str) or have.strip().lower() != value.lower():
                return False
        elif not isinstance(have, int | float) or abs(float(have) - float(value)) > 1e-9:
            return False
    return True


@functools.cache
def _model(url: str) -> str:
    return str(httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"])


def extraction(url: str, text: str, schema: dict[str, Any], sampling: dict[str, Any]) -> Any:
    body = {
        "model": _model(url),
        "messages": [
            {"role": "system", "content": "Extract the information from the text as JSON."},
            {"role": "user", "content": text},
        ],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "extraction", "schema": schema, "strict": True},
        },
        "max_tokens": 60,
        "seed": 1,
        **sampling,
    }
    resp = httpx.post(url + "/v1/chat/completions", json=body, timeout=300)
    resp.raise_for_status()
    try:
        return json.loads(resp.json()["choices"][0]["message"]["content"] or "")
    except ValueError:
        return None


def tool_call(url: str, text: str, tool: dict[str, Any], sampling: dict[str, Any]) -> Any:
    name = tool["function"]["name"]
    body = {
        "model": _model(url),
        "messages": [{"role": "user", "content": text}],
        "tools": [tool],
        "tool_choice": {"type": "function", "function": {"name": name}},
        "max_tokens": 80,
        "seed": 1,
        **sampling,
    }
    resp = httpx.post(url + "/v1/chat/completions", json=body, timeout=300)
    resp.raise_for_status()
    calls = resp.json()["choices"][0]["message"].get("tool_calls") or []
    if not calls:
        return None
    try:
        return json.loads(calls[0]["function"]["arguments"])
    except ValueError:
        return None


def run(url: str, variants: dict[str, dict[str, Any]], concurrency: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    pool = ThreadPoolExecutor(concurrency)
    for name, sampling in variants.items():
        began = time.perf_counter()
        asked = [
            pool.submit(lambda c, s=sampling: same(extraction(url, c[0], c[1], s), c[2]), case)
            for case in EXTRACTIONS
        ]
        calls = [
            pool.submit(lambda c, s=sampling: same(tool_call(url, c[0], c[1], s), c[2]), case)
            for case in TOOL_CALLS
        ]
        extracted = [f.result() for f in asked]
        called = [f.result() for f in calls]
        results[name] = {
            "sampling": sampling,
            "extraction": sum(extracted),
            "tool_arguments": sum(called),
            "failed": [t for (t, _, _), ok in zip(EXTRACTIONS, extracted, strict=True) if not ok]
            + [t for (t, _, _), ok in zip(TOOL_CALLS, called, strict=True) if not ok],
        }
        print(
            f"{name:62s} extraction {sum(extracted):2d}/{len(EXTRACTIONS)}  "
            f"tool arguments {sum(called):2d}/{len(TOOL_CALLS)}  "
            f"({time.perf_counter() - began:.0f} s)",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", default=None, help="a running model server (default: start one)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="requests at once (the server's --parallel)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=None,
        help="run only the variants whose name starts with this (repeatable)",
    )
    args = parser.parse_args()
    proc = None
    url = args.url
    try:
        if url is None:
            port = free_port()
            log = Path(tempfile.mkdtemp(prefix="copy-bench-")) / "serve.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "archon.cli", "serve", "--port", str(port)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=dict(os.environ),
                )
            url = f"http://127.0.0.1:{port}"
            wait_until(
                lambda: httpx.get(url + "/health", timeout=5).status_code == 200,
                timeout=600,
                what=url,
                process=proc,
                log=lambda: log.read_text()[-3000:],
                poll=0.5,
            )
        variants = {
            name: values
            for name, values in VARIANTS.items()
            if not args.variant or any(name.startswith(v) for v in args.variant)
        }
        results = run(url, variants, args.concurrency)
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
