"""A request made ready to forward: Archon's options read, generation defaults and the key's
limits applied, then, for a chat, retrieval (context from the knowledge base) and the decision
of what the agent may add to the answer (archon.agent.shaping.Shaping).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from archon.agent.admission import Priority
from archon.agent.auth import ApiKey
from archon.agent.exchange import Exchange
from archon.agent.generation import apply_generation, copies_from_prompt, names_a_length
from archon.agent.limits import Limiter
from archon.agent.metrics import AgentMetrics
from archon.agent.rag import (
    ArchonOptions,
    KnowledgeBaseClient,
    Outcome,
    RetrievalError,
    augment,
    conversation_key,
    echo_stops,
    lead_passage,
    lead_quote,
    quotable,
    relevance,
    retrieval_query,
)
from archon.agent.settings import AgentSettings
from archon.agent.shaping import NOTHING, Shaping, may_rewrite
from archon.agent.upstreams import UpstreamPool
from archon.errors import InvalidRequestError
from archon.http import parse_json_object


@dataclass
class Prepared:
    """A request after Archon's options, the key's limits and retrieval were applied."""

    body: bytes
    model: str | None
    stream: bool
    outcome: Outcome
    shaping: Shaping = NOTHING  # what the agent adds to the answer
    conversation: str | None = None
    include_usage: bool = False  # the client asked for the usage chunk
    priority: Priority = "interactive"  # its class in the admission queue


@dataclass
class Retrieved:
    outcome: Outcome
    messages: list[Any]  # with the excerpts, or the client's when none are used
    sources: list[dict[str, Any]]
    lead: str | None = None


@dataclass
class ChatPreparer:
    settings: AgentSettings
    pool: UpstreamPool
    kb: KnowledgeBaseClient | None  # None: retrieval off
    metrics: AgentMetrics
    limits: Limiter | None  # None: no key is metered

    async def prepare(
        self,
        raw: bytes,
        exchange: Exchange,
        key: ApiKey | None = None,
        priority: Priority = "interactive",
    ) -> Prepared:
        """The body to forward and what to do with the answer, for a chat or a completion
        (``exchange.route``). A metered key admitted here gets its grant on ``exchange``,
        which its owner ends whatever happens next (archon.agent.gateway)."""
        route = exchange.route
        data = parse_json_object(raw)
        changed = "archon" in data
        options = ArchonOptions.parse(data.pop("archon", None))
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            if route == "chat":
                raise InvalidRequestError(
                    "'messages' must be a non-empty list of messages", param="messages"
                )
            messages = []  # a completion: its prompt is the model server's to check
        model = data.get("model")
        if model is None:
            # Convenience for curl users: with one model behind the agent, 'model' may be left out.
            model = self.pool.default_model()
            if model is not None:
                data["model"], changed = model, True
        stream = data.get("stream") is True
        stream_options = data.get("stream_options")
        include_usage = isinstance(stream_options, dict) and bool(
            stream_options.get("include_usage")
        )
        # Only a plain-text chat answer may get words added. JSON and tool arguments get no
        # penalties: they copy from the prompt, which a repetition penalty damages
        # (docs/benchmarks.md, "Copying"). A completion gets no sampling defaults at all.
        chat = route == "chat"
        plain = chat and may_rewrite(data)
        # Before the limits, so that they see the body the model server will get.
        own_length = names_a_length(data)
        changed |= apply_generation(
            self.settings.generation,
            data,
            key,
            sampling=chat,
            penalties=not copies_from_prompt(data),
            default_length=chat,
        )
        # The agent's own default length, if that is what the body now has (not the client's,
        # nor, after the limits below, a key's): only that one yields to quoted_max_tokens.
        our_length = None if own_length else data.get("max_tokens")
        if key is not None and key.metered and self.limits is not None:
            # Before retrieval: a refused request costs no knowledge-base query.
            exchange.grant = await self.limits.admit(key, data, stream, len(raw))
            changed |= exchange.grant.changed
        outcome: Outcome = "off"
        shaping = NOTHING
        if route == "chat" and options.rag and self.kb is not None:
            found = await self._retrieve(self.kb, options, messages, plain, model, key)
            outcome = found.outcome
            if found.messages is not messages:
                data["messages"], changed = found.messages, True
            lead = found.lead
            stops = False
            if lead and data.get("stop") is None and not data.get("ignore_eos"):
                # A small model often goes on by copying an excerpt's header ("[5] archon:
                # docs/..."): that is where its answer has ended. Only after a lead quote, so
                # that the answer is never empty; not when the client asked for every token.
                data["stop"], changed, stops = echo_stops(found.sources), True, True
            shorter = self.settings.generation.for_model(model).quoted_max_tokens
            length = data.get("max_tokens")
            if lead and shorter and our_length is not None and length == our_length > shorter:
                data["max_tokens"], changed = shorter, True  # lower only: limits saw the body
            shaping = Shaping(True, found.sources, lead, stops)
        if route == "chat":
            self.metrics.rag.labels(outcome).inc()
        conversation = conversation_key(model, messages) if self.pool.affinity else None
        body = json.dumps(data, ensure_ascii=False).encode() if changed else raw
        return Prepared(
            body,
            model if isinstance(model, str) else None,
            stream,
            outcome,
            shaping,
            conversation,
            include_usage,
            priority,
        )

    async def prepare_embeddings(
        self,
        raw: bytes,
        exchange: Exchange,
        key: ApiKey | None = None,
        priority: Priority = "interactive",
    ) -> Prepared:
        """An embeddings request goes as it came, to an upstream serving its model (the health
        checks know each one's models); a metered key's model list and limits apply, and its
        tokens are counted from the answer's usage."""
        data = parse_json_object(raw)
        model = data.get("model")
        if key is not None and key.metered and self.limits is not None:
            exchange.grant = await self.limits.admit(key, data, False, len(raw), generates=False)
        return Prepared(
            raw, model if isinstance(model, str) else None, False, "off", priority=priority
        )

    async def _search(
        self,
        kb: KnowledgeBaseClient,
        options: ArchonOptions,
        messages: list[Any],
        query: str,
        groups: list[str],
    ) -> tuple[list[dict[str, Any]], list[Any]]:
        """The sources for ``query`` and the messages with their excerpts. Always the key's
        groups, none without a key: the knowledge base then searches only the sources they may
        read (archon.kb.access), whatever the filters ask."""
        chunks, seconds = await kb.query(
            query, options.top_k or self.settings.top_k, options.filters, groups
        )
        self.metrics.retrieval_seconds.observe(seconds)
        augmented, sources = augment(messages, chunks, self.settings.max_context_chars, query)
        return sources, augmented

    async def _retrieve(
        self,
        kb: KnowledgeBaseClient,
        options: ArchonOptions,
        messages: list[Any],
        plain: bool,
        model: Any,
        key: ApiKey | None = None,
    ) -> Retrieved:
        query = retrieval_query(messages, self.settings.history_turns)
        if not query:
            return Retrieved("none", messages, [])
        # Judged by the last question alone: earlier turns help find context for a follow-up,
        # but "Thanks!" after a question about the docs is not about the docs.
        question = retrieval_query(messages, 0)
        groups = list(key.groups) if key is not None else []
        try:
            # After earlier turns, the question alone too, at the same time: on a new topic the
            # history pulls the joint search towards the old one, whose best passage then holds
            # less of the question (or none of it). A follow-up that needs the history ("and
            # its exit codes?") finds no passage holding more of it alone, and keeps the joint.
            queries = [query] if query == question else [query, question]
            found = await asyncio.gather(
                *(self._search(kb, options, messages, q, groups) for q in queries),
                return_exceptions=True,  # both finish before either's error is raised
            )
            results: list[tuple[list[dict[str, Any]], list[Any]]] = []
            for result in found:
                if isinstance(result, BaseException):
                    raise result
                results.append(result)
            sources, augmented = max(  # the joint search on a tie
                results, key=lambda r: relevance(question, lead_passage(question, r[0]))
            )
            best = lead_passage(question, sources)
        except RetrievalError:
            return Retrieved("degraded", messages, [])
        if not sources or relevance(question, best) < self.settings.min_relevance:
            # Nothing retrieved holds the question (small talk, a topic the docs lack): the
            # model answers without excerpts, which would only pull it off the question.
            return Retrieved("none", messages, [])
        lead = None
        if (
            plain
            and self.settings.generation.for_model(model).lead_quote
            and quotable(question, best)
        ):
            lead = lead_quote(question, sources, best)
        return Retrieved("used", augmented, sources, lead)
