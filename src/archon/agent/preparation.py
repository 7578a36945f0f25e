"""A chat request made ready to forward: Archon's options read, generation defaults and the
key's limits applied, then retrieval (context from the knowledge base, the sources to attach).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from archon.agent.admission import Priority
from archon.agent.auth import ApiKey
from archon.agent.generation import apply_generation, names_a_length
from archon.agent.limits import Grant, Limiter
from archon.agent.metrics import AgentMetrics
from archon.agent.rag import (
    ArchonOptions,
    KnowledgeBaseClient,
    Outcome,
    RetrievalError,
    augment,
    conversation_key,
    echo_stops,
    lead_quote,
    retrieval_query,
)
from archon.agent.settings import AgentSettings
from archon.agent.upstreams import UpstreamPool
from archon.errors import InvalidRequestError
from archon.http import parse_json_object


@dataclass
class Prepared:
    """A chat request after Archon's options and retrieval were applied."""

    body: bytes
    model: str | None
    stream: bool
    outcome: Outcome
    sources: list[dict[str, Any]] = field(default_factory=list)
    conversation: str | None = None
    include_usage: bool = False  # the client asked for the usage chunk
    grant: Grant | None = None  # a metered key's admission (archon.agent.limits)
    priority: Priority = "interactive"  # its class in the admission queue
    lead: str | None = None  # put before the model's answer (archon.agent.rag.lead_quote)
    echo_stops: bool = False  # the agent set the stop sequences (archon.agent.rag.echo_stops)


@dataclass
class ChatPreparer:
    settings: AgentSettings
    pool: UpstreamPool
    kb: KnowledgeBaseClient | None  # None: retrieval off
    metrics: AgentMetrics
    limits: Limiter | None  # None: no key is metered

    async def prepare(self, raw: bytes, key: ApiKey | None = None) -> Prepared:
        data = parse_json_object(raw)
        changed = "archon" in data
        options = ArchonOptions.parse(data.pop("archon", None))
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequestError(
                "'messages' must be a non-empty list of messages", param="messages"
            )
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
        # Before the limits, so that they see the body the model server will get.
        own_length = names_a_length(data)
        changed |= apply_generation(self.settings.generation, data, key)
        # The agent's own default length, if that is what the body now has (not the client's,
        # nor, after the limits below, a key's): only that one yields to quoted_max_tokens.
        our_length = None if own_length else data.get("max_tokens")
        grant = None
        if key is not None and key.metered and self.limits is not None:
            # Before retrieval: a refused request costs no knowledge-base query.
            grant = await self.limits.admit(key, data, stream, len(raw))
            changed |= grant.changed
        outcome: Outcome = "off"
        sources: list[dict[str, Any]] = []
        lead = None
        stops = False
        if options.rag and self.kb is not None:
            try:
                outcome, sources, augmented, query = await self._retrieve(
                    self.kb, options, messages
                )
            except BaseException:
                if grant is not None:
                    grant.finish(499)
                raise
            if augmented is not messages:
                data["messages"], changed = augmented, True
            values = self.settings.generation.for_model(model)
            if sources and values.lead_quote:
                lead = lead_quote(query, sources)
            if lead and data.get("stop") is None and not data.get("ignore_eos"):
                # A small model often goes on by copying an excerpt's header ("[5] archon:
                # docs/..."): that is where its answer has ended. Only after a lead quote, so
                # that the answer is never empty; not when the client asked for every token.
                data["stop"], changed, stops = echo_stops(sources), True, True
            shorter = values.quoted_max_tokens
            length = data.get("max_tokens")
            if lead and shorter and our_length is not None and length == our_length > shorter:
                data["max_tokens"], changed = shorter, True  # lower only: limits saw the body
        self.metrics.rag.labels(outcome).inc()
        conversation = conversation_key(model, messages) if self.pool.affinity else None
        body = json.dumps(data, ensure_ascii=False).encode() if changed else raw
        return Prepared(
            body,
            model if isinstance(model, str) else None,
            stream,
            outcome,
            sources,
            conversation,
            include_usage,
            grant,
            lead=lead,
            echo_stops=stops,
        )

    async def _retrieve(
        self, kb: KnowledgeBaseClient, options: ArchonOptions, messages: list[Any]
    ) -> tuple[Outcome, list[dict[str, Any]], list[Any], str]:
        query = retrieval_query(messages, self.settings.history_turns)
        if not query:
            return "none", [], messages, query
        try:
            chunks, seconds = await kb.query(
                query, options.top_k or self.settings.top_k, options.filters
            )
        except RetrievalError:
            return "degraded", [], messages, query
        self.metrics.retrieval_seconds.observe(seconds)
        augmented, sources = augment(messages, chunks, self.settings.max_context_chars, query)
        return ("used" if sources else "none"), sources, augmented, query
