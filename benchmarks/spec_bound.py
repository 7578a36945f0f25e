"""What speculation can gain on this CPU at most, and why greedy output is not byte-identical.

Speculative decoding pays when verifying k drafted tokens in one batch costs about what one
token costs: a decode that is bound by reading the weights (a large model on a GPU). This
measures, on the bundled model with the engine's own llama.cpp settings (archon.modelserver's
native loader: weight repacking as `cpu_repack=auto`, flash attention as llama.cpp's default),
the time of one decode of r rows of one sequence after a context of n tokens (median of
--repeats), and from it the most a draft of k = r - 1 tokens can gain at acceptance rate a:

    bound(k, a) = E[tokens per step] / (cost(k + 1 rows) / cost(1 row)),
    E = (1 - a^(k+1)) / (1 - a)    (Leviathan et al. 2023, i.i.d. acceptance)

(engine overhead per step left out: it is what drafts amortise, on any engine). It also reports
whether row 0's logits of an r-row batch equal the same position decoded alone (max |logit
difference|), with flash attention on and off: the kernels choose their path by the batch's
shape, which is why greedy output with verified drafts can leave the one-at-a-time output.

    .venv/bin/python benchmarks/spec_bound.py [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from report import replace_section
from serve_bench import machine

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT.parent / "shared" / "corpora" / "prometheus" / "docs"
ROWS = (1, 2, 3, 5)
ACCEPTANCE = (0.5, 0.75, 0.9)


def corpus_tokens(ll, vocab, need: int) -> list[int]:
    from archon.modelserver.engines.llamacpp_native import tokenize_text

    tokens: list[int] = []
    for path in sorted(TEXT.rglob("*.md")):
        tokens += tokenize_text(ll, vocab, path.read_text(), add_special=False, special=False)
        if len(tokens) >= need:
            return tokens[:need]
    raise SystemExit(f"{TEXT}: fewer than {need} tokens of text")


class Decoder:
    def __init__(self, model: Path, flash_attn: int, max_len: int):
        import llama_cpp

        from archon.modelserver.engines import llamacpp_native

        original = llama_cpp.llama_context_default_params

        def params():  # the loader's context, with flash attention as asked
            p = original()
            p.flash_attn_type = flash_attn
            return p

        llama_cpp.llama_context_default_params = params
        try:
            self.m = llamacpp_native.load(
                model, max_model_len=max_len, slots=1, threads=2, batch_size=512
            )
        finally:
            llama_cpp.llama_context_default_params = original
        self.ll, self.ctx, self.batch = self.m.ll, self.m.ctx, self.m.batch

    def decode(self, tokens: list[int], start: int, logits: bool) -> None:
        b = self.batch
        b.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i] = token, start + i, 1
            b.seq_id[i][0] = 0
            b.logits[i] = logits
        if self.ll.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def logits(self, row: int) -> np.ndarray:
        pointer = self.ll.llama_get_logits_ith(self.ctx, row)
        return np.ctypeslib.as_array(pointer, shape=(self.m.n_vocab,)).copy()

    def context(self, tokens: list[int]) -> None:
        self.ll.llama_memory_clear(self.m.mem, True)
        for s in range(0, len(tokens), 512):
            self.decode(tokens[s : s + 512], s, False)

    def rollback(self, to: int) -> None:
        self.ll.llama_memory_seq_rm(self.m.mem, 0, to, -1)

    def close(self) -> None:
        self.m.free()


def measure(model: Path, contexts: list[int], repeats: int) -> tuple[dict, dict]:
    costs: dict[tuple[str, int], dict[int, float]] = {}
    diffs: dict[tuple[str, int], dict[int, float]] = {}
    for label, flash in (("on", -1), ("off", 0)):
        dec = Decoder(model, flash, max(contexts) + 16)
        tokens = corpus_tokens(dec.ll, dec.m.vocab, max(contexts) + max(ROWS))
        for n in contexts:
            dec.context(tokens[:n])
            dec.decode(tokens[n : n + 1], n, True)
            alone = dec.logits(0)
            dec.rollback(n)
            cost, diff = {}, {}
            for rows in ROWS:
                times = []
                for _ in range(repeats):
                    began = time.perf_counter()
                    dec.decode(tokens[n : n + rows], n, True)
                    times.append(time.perf_counter() - began)
                    diff[rows] = float(np.abs(dec.logits(0) - alone).max())
                    dec.rollback(n)
                cost[rows] = statistics.median(times)
            costs[label, n], diffs[label, n] = cost, diff
            print(
                f"flash attention {label}, context {n}: "
                + "  ".join(f"{r} rows {1000 * c:.1f} ms" for r, c in cost.items())
                + "  | row 0 vs alone: "
                + "  ".join(f"{r}: {d:.3g}" for r, d in diff.items()),
                flush=True,
            )
        dec.close()
    return costs, diffs


def bound(k: int, a: float, ratio: float) -> float:
    return (1 - a ** (k + 1)) / (1 - a) / ratio


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contexts", default="256,1024")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    from archon.modelserver.models import resolve

    model = resolve("smollm2-135m-instruct").path
    contexts = [int(x) for x in args.contexts.split(",")]
    costs, diffs = measure(model, contexts, args.repeats)
    cost_rows = [
        "| flash attention | context | "
        + " | ".join(f"{r} row{'s' if r > 1 else ''}" for r in ROWS)
        + " | row 0's max logit difference from decoding it alone, at 2 / 3 / 5 rows |",
        "|---|---|" + "---|" * len(ROWS) + "---|",
    ]
    for (label, n), cost in costs.items():
        base = cost[1]
        cells = [f"{1000 * base:.1f} ms"] + [
            f"{1000 * cost[r]:.1f} ms ({cost[r] / base:.2f}x)" for r in ROWS[1:]
        ]
        d = diffs[label, n]
        cost_rows.append(
            f"| {label} | {n} | " + " | ".join(cells) + f" | {d[2]:.3g} / {d[3]:.3g} / {d[5]:.3g} |"
        )
    bound_rows = [
        "| flash attention | context | draft k | "
        + " | ".join(f"a = {a}" for a in ACCEPTANCE)
        + " |",
        "|---|---|---|" + "---|" * len(ACCEPTANCE),
    ]
    for (label, n), cost in costs.items():
        for rows in ROWS[1:]:
            k = rows - 1
            ratio = cost[rows] / cost[1]
            bound_rows.append(
                f"| {label} | {n} | {k} | "
                + " | ".join(f"{bound(k, a, ratio):.2f}x" for a in ACCEPTANCE)
                + " |"
            )
    print("\n".join([*cost_rows, "", *bound_rows]))
    if args.write:
        stamp = time.strftime("%Y-%m-%d")
        section = "\n".join(
            [
                f"### Speculation's ceiling on this CPU ({stamp})",
                "",
                f"Machine: {machine()}. Command: `.venv/bin/python benchmarks/spec_bound.py "
                f"--contexts {args.contexts} --repeats {args.repeats} --write docs/benchmarks.md` "
                "(the bundled SmolLM2-135M Q4_1, 2 threads, the engine's loader; median decode "
                "time of r rows of one sequence after a context of n tokens).",
                "",
                *cost_rows,
                "",
                "The most a draft of k tokens can gain at acceptance rate a, from these costs "
                "alone (E[tokens per step] / cost ratio; per-step engine overhead left out):",
                "",
                *bound_rows,
            ]
        )
        replace_section(args.write, "spec_bound", section)


if __name__ == "__main__":
    main()
