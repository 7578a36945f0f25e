"""EleutherAI's lm-evaluation-harness against a real ``archon serve``, as users run it.

lm-eval (pinned in its own venv, ``.venv-lmeval``, by scripts/setup-lmeval-venv.sh) runs its
``local-completions`` model with the remote tokenizer (``/tokenizer_info``, ``/tokenize``,
``/detokenize``) on a small local multiple-choice task (tests/data/lm_eval: 20 questions, a
task YAML, no hub download). Every loglikelihood it computed must equal llama-cpp-python's for
the same tokens (``Llama(logits_all=True)``, the server's weight layout), so its accuracy is the
model's and not an artefact of the server (all-zero loglikelihoods put it at chance).

By default 4 questions (16 requests, well under a minute). ``ARCHON_LM_EVAL_LIMIT=0`` runs all
20, and ``ARCHON_LM_EVAL_WRITE=docs/benchmarks.md`` writes the result into that file's
"lm-evaluation-harness" section (``make test-lm-eval``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from archon.modelserver.engines.llamacpp_native import use_repack
from tests.support.servers import MODEL, Server

ROOT = Path(__file__).resolve().parents[2]
LM_EVAL = ROOT / ".venv-lmeval" / "bin" / "lm-eval"
TASK_DIR = ROOT / "tests" / "data" / "lm_eval"
LIMIT = int(os.environ.get("ARCHON_LM_EVAL_LIMIT", "4"))
WRITE = os.environ.get("ARCHON_LM_EVAL_WRITE")
TOLERANCE = 1e-3  # per token, so a continuation of k tokens gets k times it

pytestmark = pytest.mark.skipif(
    not LM_EVAL.exists(),
    reason="lm-eval's side venv .venv-lmeval is absent (bash scripts/setup-lmeval-venv.sh)",
)


@pytest.fixture(scope="module")
def llm(bundled_model_path: Path) -> Iterator[Any]:
    """llama-cpp-python's own model with every position's logits, laid out as the server's."""
    import llama_cpp
    import llama_cpp.llama_cpp as native

    native.llama_backend_init()
    repack = use_repack("auto", native.llama_print_system_info())
    default_params = native.llama_model_default_params

    def params() -> Any:
        p = default_params()
        p.use_extra_bufts = repack
        return p

    native.llama_model_default_params = params
    try:
        model = llama_cpp.Llama(
            str(bundled_model_path),
            n_ctx=2048,
            logits_all=True,
            n_threads=2,
            flash_attn=True,  # as the server's llama.cpp default (auto) on the CPU
            verbose=False,
        )
    finally:
        native.llama_model_default_params = default_params
    yield model
    model.close()


def run_lm_eval(url: str, out: Path) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    command = [
        str(LM_EVAL), "run",
        "--model", "local-completions",
        "--model_args",
        f"model={MODEL},base_url={url}/v1/completions,tokenizer_backend=remote,"
        "num_concurrent=1,max_retries=1,max_length=2048",
        "--tasks", "archon_mc",
        "--include_path", str(TASK_DIR),
        "--output_path", str(out),
        "--log_samples",
        "--seed", "1234",
    ]  # fmt: skip
    if LIMIT:
        command += ["--limit", str(LIMIT)]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(out / "hf"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    start = time.monotonic()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (results_file,) = out.rglob("results_*.json")
    (samples_file,) = out.rglob("samples_archon_mc_*.jsonl")
    results = json.loads(results_file.read_text())["results"]["archon_mc"]
    samples = [json.loads(line) for line in samples_file.read_text().splitlines() if line]
    return results, samples, elapsed


def encode_pair(llm: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split of a request into context and continuation tokens (TemplateLM)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]

    def encode(text: str) -> list[int]:
        tokens: list[int] = llm.tokenize(text.encode(), add_bos=False, special=True)
        return tokens

    whole = encode(context + continuation)
    context_tokens = encode(context)
    return context_tokens, whole[len(context_tokens) :]


def loglikelihood(llm: Any, context: list[int], continuation: list[int]) -> float:
    tokens = context + continuation
    llm.reset()
    llm.eval(tokens)
    x = np.asarray(llm.scores[: len(tokens)], dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    logprobs = x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))
    return float(sum(logprobs[i - 1, tokens[i]] for i in range(len(context), len(tokens))))


def request_pairs(sample: dict[str, Any]) -> list[tuple[str, str]]:
    arguments = sample["arguments"]
    if isinstance(arguments, dict):  # {"gen_args_0": {"arg_0": context, "arg_1": cont}, ...}
        return [(a["arg_0"], a["arg_1"]) for a in arguments.values()]
    return [(a[0], a[1]) for a in arguments]


@pytest.mark.timeout(300 if LIMIT else 1800)  # the whole task: 80 requests, lm-eval's start
def test_lm_eval_scores_equal_llama_cpp(server: Server, llm: Any, tmp_path: Path) -> None:
    results, samples, elapsed = run_lm_eval(server.url, tmp_path)
    assert len(samples) == (LIMIT or 20)
    worst = 0.0
    oracle_correct = 0
    for sample in samples:
        served = [float(r[0]) for r in sample["filtered_resps"]]
        oracle = []
        for (context, continuation), got in zip(request_pairs(sample), served, strict=True):
            ctx, cont = encode_pair(llm, context, continuation)
            want = loglikelihood(llm, ctx, cont)
            assert got != 0.0  # the bug this guards against: no prompt logprobs, every ll 0
            assert abs(got - want) < TOLERANCE * len(cont), (context, continuation, got, want)
            worst = max(worst, abs(got - want))
            oracle.append(want)
        oracle_correct += int(np.argmax(oracle) == int(sample["target"]))
        assert sample["acc"] == float(np.argmax(served) == int(sample["target"]))
    oracle_acc = oracle_correct / len(samples)
    assert results["acc,none"] == pytest.approx(oracle_acc)
    if WRITE:
        # np.argmax of equal scores is the first choice: what all-zero loglikelihoods scored.
        zero_acc = sum(int(s["target"]) == 0 for s in samples) / len(samples)
        write_section(Path(WRITE), results, oracle_acc, zero_acc, len(samples), worst, elapsed)


def write_section(
    path: Path,
    results: dict[str, Any],
    oracle_acc: float,
    zero_acc: float,
    n: int,
    worst: float,
    elapsed: float,
) -> None:
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from report import replace_section

    body = f"""### lm-evaluation-harness ({dt.date.today().isoformat()})

lm-eval 0.4.13 (`.venv-lmeval`), `local-completions` with `tokenizer_backend=remote`, against
`archon serve` (bundled {MODEL}, llama.cpp, 2 CPU cores), on the local
multiple-choice task in tests/data/lm_eval ({n} questions, 4 choices each, chance 25%). The
second row picks each answer from the same loglikelihoods computed directly by
llama-cpp-python (`Llama(logits_all=True)`, the same token ids, weight layout and flash
attention). The third is what lm-eval scored before issue 22: without prompt logprobs every
loglikelihood it read was 0, so it picked the first choice every time, with no error
(computed from the task's answers, not rerun).

| | accuracy | acc_norm |
| --- | --- | --- |
| lm-eval through `archon serve` | {results["acc,none"]:.0%} | {results["acc_norm,none"]:.0%} |
| llama-cpp-python directly | {oracle_acc:.0%} | |
| before issue 22 (every loglikelihood 0) | {zero_acc:.0%} | {zero_acc:.0%} |

The largest difference between a served and a direct loglikelihood was {worst:.1e}. The run
took {elapsed:.0f} s, on a machine that other jobs kept busy. The questions are easy for the
model; the task checks the scoring path, not the model.

```sh
make test-lm-eval   # or, against any running server:
.venv-lmeval/bin/lm-eval run --model local-completions --model_args \\
  model={MODEL},base_url=http://127.0.0.1:8000/v1/completions,tokenizer_backend=remote \\
  --tasks archon_mc --include_path tests/data/lm_eval
```
"""
    replace_section(path, "lm-eval", body)
