"""Answer quality through a running agent: fact recall, citations, refusals, length, time.

A judged answer set is JSON lines (benchmarks/data/answers.jsonl):

    {"id": "ans-001", "question": "How do I sync the knowledge base?",
     "facts": [["archon kb sync"], ["POST /sync", "/sync"]],
     "cite": ["archon:docs/knowledge-base.md"], "answerable": true, "split": "test"}

``facts`` is a list of facts, each a list of alternative strings; the first fact is the
essential one. A fact is in an answer when one of its alternatives is, compared case-folded
with runs of whitespace as one space. ``cite`` lists the files (``source:path``) a right answer
may cite. An unanswerable question (``answerable: false``) has neither: the right answer says
that the docs do not hold it.

Each question is asked as a new conversation, streamed with ``include_usage``, one at a time
unless told otherwise (a timing of one answer, not of a loaded server). Scores per split:

- ``fact_recall``: share of answerable questions whose answer holds the essential fact;
  ``facts_share``: mean share of all of a question's facts found;
- ``citation_precision``: of the answerable questions whose answer cites (a source with
  ``cited: true``), the share whose cited sources include a file of ``cite``; ``cite_rate``:
  share of answerable answers that cite at all; ``retrieved_hit``: share where a file of
  ``cite`` is among all the sources put in the prompt (what retrieval gave the model);
- ``refusal_rate``: share of unanswerable questions answered with a refusal (REFUSAL below);
  ``false_refusals``: share of answerable ones refused;
- answer length from ``usage.completion_tokens`` (median, 90th percentile), and seconds to the
  whole answer and to its first token (median).
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from archon.jsonl import BadRow, read_split

# What counts as a refusal: the answer says the docs/context do not hold it, or that it does
# not know. Matched on the case-folded answer's first 300 characters: a refusal comes first.
REFUSAL = re.compile(
    r"\b(?:"
    r"(?:does|do|did)\s*(?:not|n't)\s+(?:say|mention|cover|contain|include|describe|explain"
    r"|answer|provide|have|know)"
    r"|(?:is|are)\s*(?:not|n't)\s+(?:in|covered|mentioned|described|documented|available"
    r"|provided)"
    r"|(?:can|could)\s*(?:not|n't)\s+(?:find|answer|help|tell)"
    r"|cannot\s+(?:find|answer|tell)"
    r"|no\s+(?:information|mention|answer|documentation|details?)\b"
    r"|not\s+(?:enough|sure)\b"
    r"|i\s+(?:do\s*not|don't)\s+know"
    r"|unable\s+to"
    r")"
)
_SPACE = re.compile(r"\s+")


@dataclass
class Question:
    id: str
    question: str
    facts: list[list[str]]
    cite: list[str]
    answerable: bool
    split: str | None = None
    corpus: str | None = None


@dataclass
class Answer:
    """What the agent answered to one question, and its scores."""

    id: str
    split: str | None
    answerable: bool
    text: str
    cited: list[str]
    sources: list[str]
    completion_tokens: int | None
    seconds: float
    ttft: float | None
    finish_reason: str | None = None
    essential: bool = False  # the first fact is in the answer
    facts_share: float = 0.0
    cites_relevant: bool | None = None  # None: the answer cites nothing
    retrieved_hit: bool = False
    refused: bool = False
    error: str | None = None
    answer_tokens: int | None = None  # the whole text (a lead quote too), when counted


@dataclass
class SplitScore:
    split: str
    questions: int
    answerable: int
    fact_recall: float | None
    facts_share: float | None
    citation_precision: float | None
    cite_rate: float | None
    retrieved_hit: float | None
    refusal_rate: float | None
    false_refusals: float | None
    median_tokens: float | None
    p90_tokens: float | None
    median_seconds: float | None
    median_ttft: float | None
    errors: int = 0
    by_corpus: dict[str, float] = field(default_factory=dict)  # fact recall per corpus
    median_answer_tokens: float | None = None  # the whole text's, when counted


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text.casefold()).strip()


def contains(answer: str, alternatives: Iterable[str]) -> bool:
    flat = normalise(answer)
    return any(normalise(alt) and normalise(alt) in flat for alt in alternatives)


def is_refusal(answer: str) -> bool:
    return bool(REFUSAL.search(normalise(answer)[:300]))


def load_answers(path: Path, split: str | None = None) -> list[Question]:
    return read_split(
        path,
        "answer set",
        _question,
        "{question, facts: [[alternatives]], cite, answerable, split}",
        split,
        f"{path} holds no question" + (f" of split {split!r}" if split else ""),
    )


def _question(row: dict[str, Any], number: int) -> Question:
    q = Question(
        id=str(row.get("id") or f"line-{number}"),
        question=str(row["question"]),
        facts=[[str(alt) for alt in fact] for fact in row.get("facts") or []],
        cite=[str(doc) for doc in row.get("cite") or []],
        answerable=bool(row.get("answerable", True)),
        split=row.get("split"),
        corpus=row.get("corpus"),
    )
    if q.answerable and not q.facts:
        raise BadRow("an answerable question needs facts")
    return q


def score(question: Question, answer: Answer) -> Answer:
    """Fill in ``answer``'s scores against ``question`` (pure: the unit tests call it)."""
    text = answer.text
    answer.refused = is_refusal(text)
    if question.facts:
        found = [contains(text, fact) for fact in question.facts]
        answer.essential = found[0]
        answer.facts_share = sum(found) / len(found)
    relevant = set(question.cite)
    answer.cites_relevant = bool(relevant & set(answer.cited)) if answer.cited else None
    answer.retrieved_hit = bool(relevant & set(answer.sources))
    return answer


def _doc(source: dict[str, Any]) -> str:
    return f"{source.get('source')}:{source.get('path')}"


def ask(
    client: httpx.Client,
    question: Question,
    model: str | None = None,
    params: dict[str, Any] | None = None,
) -> Answer:
    """One streamed chat request to the agent's /v1/chat/completions, read to its end."""
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": question.question}],
        "stream": True,
        "stream_options": {"include_usage": True},
        **(params or {}),
    }
    if model:
        body["model"] = model
    parts: list[str] = []
    sources: list[dict[str, Any]] = []
    usage: dict[str, Any] | None = None
    finish: str | None = None
    ttft: float | None = None
    error: str | None = None
    began = time.perf_counter()
    try:
        with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                resp.read()
                error = f"HTTP {resp.status_code}: {resp.text[:300]}"
            else:
                for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    event = json.loads(payload)
                    if "error" in event:
                        error = str(event["error"].get("message"))
                        continue
                    for choice in event.get("choices") or []:
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            if ttft is None:
                                ttft = time.perf_counter() - began
                            parts.append(content)
                        finish = choice.get("finish_reason") or finish
                    usage = event.get("usage") or usage
                    sources = event.get("sources") or sources
    except (httpx.HTTPError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    answer = Answer(
        id=question.id,
        split=question.split,
        answerable=question.answerable,
        text="".join(parts),
        cited=sorted({_doc(s) for s in sources if s.get("cited")}),
        sources=[_doc(s) for s in sources],
        completion_tokens=(usage or {}).get("completion_tokens"),
        seconds=time.perf_counter() - began,
        ttft=ttft,
        finish_reason=finish,
        error=error,
    )
    return score(question, answer)


def run(
    agent_url: str,
    questions: list[Question],
    *,
    api_key: str | None = None,
    model: str | None = None,
    params: dict[str, Any] | None = None,
    timeout: float = 600.0,
    concurrency: int = 1,
    progress: Callable[[Answer], None] | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> list[Answer]:
    """The answers in the questions' order. With ``concurrency`` > 1 that many questions are
    asked at once: quicker on a model server with free slots, but each answer's time then
    includes sharing the server, so time to answer is a one-at-a-time measure.
    ``count_tokens`` (the model's tokenizer) measures each whole answer: ``usage`` counts only
    what the model wrote, not text the agent put before it."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=max(concurrency, 1))
    with httpx.Client(
        base_url=agent_url.rstrip("/"), headers=headers, timeout=timeout, limits=limits
    ) as client:

        def one(question: Question) -> Answer:
            answer = ask(client, question, model, params)
            if count_tokens is not None and answer.error is None:
                answer.answer_tokens = count_tokens(answer.text)
            if progress is not None:
                progress(answer)
            return answer

        if concurrency <= 1:
            return [one(q) for q in questions]
        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(one, questions))


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _p90(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def summarise(answers: list[Answer], questions: list[Question] | None = None) -> list[SplitScore]:
    """One score per split present (in order of first appearance), then ``all``."""
    corpus = {q.id: q.corpus or "-" for q in questions or []}
    splits = list(dict.fromkeys(a.split or "-" for a in answers))
    groups = [(s, [a for a in answers if (a.split or "-") == s]) for s in splits]
    if len(splits) > 1:
        groups.append(("all", answers))
    scores = []
    for name, group in groups:
        ok = [a for a in group if a.error is None]
        answerable = [a for a in ok if a.answerable]
        unanswerable = [a for a in ok if not a.answerable]
        citing = [a for a in answerable if a.cites_relevant is not None]
        tokens = [float(a.completion_tokens) for a in ok if a.completion_tokens is not None]
        by_corpus: dict[str, list[bool]] = {}
        for a in answerable:
            by_corpus.setdefault(corpus.get(a.id, "-"), []).append(a.essential)
        scores.append(
            SplitScore(
                split=name,
                questions=len(group),
                answerable=len(answerable),
                fact_recall=_share([a.essential for a in answerable]),
                facts_share=_mean([a.facts_share for a in answerable]),
                citation_precision=_share([bool(a.cites_relevant) for a in citing]),
                cite_rate=_share([a.cites_relevant is not None for a in answerable]),
                retrieved_hit=_share([a.retrieved_hit for a in answerable]),
                refusal_rate=_share([a.refused for a in unanswerable]),
                false_refusals=_share([a.refused for a in answerable]),
                median_tokens=_median(tokens),
                p90_tokens=_p90(tokens),
                median_seconds=_median([a.seconds for a in ok]),
                median_ttft=_median([a.ttft for a in ok if a.ttft is not None]),
                errors=len(group) - len(ok),
                by_corpus={c: sum(f) / len(f) for c, f in by_corpus.items() if c != "-"},
                median_answer_tokens=_median(
                    [float(a.answer_tokens) for a in ok if a.answer_tokens is not None]
                ),
            )
        )
    return scores


def report(scores: list[SplitScore]) -> str:
    """A plain-text table, one row per split."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.0f}%"

    def num(value: float | None, digits: int = 0) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    head = (
        "split  n   facts  share  cite-prec  cites  retrieved  refusal  false-ref  "
        "tokens(med/p90)  answer-tokens  s(med)  ttft(med)"
    )
    rows = [head]
    for s in scores:
        rows.append(
            f"{s.split:<5} {s.questions:>3}  {pct(s.fact_recall):>5}  {pct(s.facts_share):>5}  "
            f"{pct(s.citation_precision):>9}  {pct(s.cite_rate):>5}  {pct(s.retrieved_hit):>9}  "
            f"{pct(s.refusal_rate):>7}  {pct(s.false_refusals):>9}  "
            f"{num(s.median_tokens):>7}/{num(s.p90_tokens):<7}  "
            f"{num(s.median_answer_tokens):>13}  {num(s.median_seconds, 1):>6}  "
            f"{num(s.median_ttft, 2):>9}" + (f"  errors {s.errors}" if s.errors else "")
        )
    return "\n".join(rows)


def as_json(answers: list[Answer], scores: list[SplitScore]) -> dict[str, Any]:
    return {"scores": [asdict(s) for s in scores], "answers": [asdict(a) for a in answers]}
