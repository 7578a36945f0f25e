// Archon chat page: vanilla JS, no build step. Untrusted text only ever goes into text nodes:
// answers through ArchonMarkdown (markdown.js), everything else through textContent.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    log: $("log"), chatForm: $("chat-form"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
    model: $("model"), useKb: $("use-kb"), newChat: $("new-chat"), status: $("status"),
    keyForm: $("key-form"), keyInput: $("api-key"), keyMessage: $("key-message"),
    modelNote: $("model-note"),
  };
  const KEY_STORAGE = "archon.apiKey";
  // No max_tokens of the page's own: the agent's per-model default (128 for the bundled model,
  // docs/agent.md "Generation defaults") and a key's own default apply, and they stop it.
  const SMALL_MODEL = /smollm2-135m/i;  // the bundled model: tiny, its note says how to go bigger
  const NOTICES = {
    degraded: "Knowledge base unavailable — answered without your docs.",
    none: "Nothing relevant found in the knowledge base — answered without your docs.",
    off: "Knowledge base off — answered without your docs.",
  };

  let history = [];        // the conversation sent with each request
  let controller = null;   // AbortController of the answer in flight
  let keyWaiters = [];     // requests waiting for an API key after a 401
  let answers = 0;
  let modelCards = new Map();  // id -> the card /v1/models gave

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value == null || value === false) continue;
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : value);
    }
    node.append(...children.filter((c) => c != null && c !== false));
    return node;
  }

  const safeUrl = ArchonMarkdown.safeUrl;
  const setStatus = (text) => { ui.status.textContent = text; };

  class HttpError extends Error {
    constructor(status, message, code) { super(message); this.status = status; this.code = code; }
  }

  async function errorFrom(res) {
    let message = `${res.status} ${res.statusText}`.trim();
    let code = null;
    try {
      const body = await res.json();
      if (body?.error?.message) message = body.error.message;
      code = body?.error?.code ?? null;
    } catch { /* not JSON: keep the status line */ }
    return new HttpError(res.status, message, code);
  }

  // ---- API key: asked in the page on a 401, kept in localStorage ----

  function askForKey(message, signal) {
    ui.keyMessage.textContent = message;
    ui.keyForm.hidden = false;
    ui.keyInput.focus();
    return new Promise((resolve, reject) => {
      const waiter = { resolve };
      keyWaiters.push(waiter);
      signal?.addEventListener("abort", () => {
        keyWaiters = keyWaiters.filter((w) => w !== waiter);
        reject(new DOMException("stopped", "AbortError"));
      }, { once: true });
    });
  }

  ui.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = ui.keyInput.value.trim();
    if (!key) return;
    localStorage.setItem(KEY_STORAGE, key);
    ui.keyInput.value = "";
    ui.keyForm.hidden = true;
    const waiters = keyWaiters;
    keyWaiters = [];
    waiters.forEach((w) => w.resolve());
    if (!waiters.length) loadModels();
    ui.prompt.focus();
  });

  // fetch with the stored key; on a 401 asks for a key and tries again.
  async function api(path, init = {}) {
    for (;;) {
      const headers = { "Content-Type": "application/json" };
      const key = localStorage.getItem(KEY_STORAGE);
      if (key) headers.Authorization = `Bearer ${key}`;
      const res = await fetch(path, { ...init, headers });
      if (res.status !== 401) return res;
      const err = await errorFrom(res);
      localStorage.removeItem(KEY_STORAGE);
      await askForKey(key ? `That key was rejected (${err.message}). Enter another API key.`
                          : `This agent needs an API key: ${err.message}`, init.signal);
    }
  }

  async function loadModels() {
    try {
      const res = await api("/v1/models");
      if (!res.ok) throw await errorFrom(res);
      const body = await res.json();
      const current = ui.model.value;
      // Embedding models (the model server marks them "type": "embeddings") cannot chat.
      const cards = (body.data || []).filter((m) => typeof m?.id === "string" && m.type !== "embeddings");
      modelCards = new Map(cards.map((m) => [m.id, m]));
      ui.model.replaceChildren(...cards.map((m) => el("option", { value: m.id, text: m.id })));
      if ([...ui.model.options].some((o) => o.value === current)) ui.model.value = current;
      setStatus(ui.model.options.length ? "" : "No model is available.");
    } catch (err) {
      setStatus(`Could not list the models: ${err.message}`);
    }
    showModelNote();
  }

  // The one-line note under the input, for the tiny bundled model (its id, or the file it
  // was loaded from, names SmolLM2-135M).
  function showModelNote() {
    const card = modelCards.get(ui.model.value);
    ui.modelNote.hidden = !(card && (SMALL_MODEL.test(card.id) || SMALL_MODEL.test(String(card.root ?? ""))));
  }

  // ---- the answer stream: SSE over a POST, read with fetch + ReadableStream ----

  async function* sseEvents(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) throw new Error("the answer stream ended unexpectedly");
        buffer += value;
        const events = buffer.split(/\r?\n\r?\n/);
        buffer = events.pop();
        for (const event of events) {
          const data = event.split(/\r?\n/).filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
          if (!data) continue;
          if (data === "[DONE]") return;
          yield JSON.parse(data);
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  function answerView() {
    const id = `answer-${++answers}`;
    const notice = el("p", { class: "notice", "data-testid": "rag-notice", hidden: true });
    const text = el("div", { class: "text md", "data-testid": "answer-text" });
    const cap = el("p", { class: "cap-notice", "data-testid": "cap-notice", hidden: true });
    const list = el("ol", { class: "source-cards", "data-testid": "sources" });
    const box = el("section", { class: "sources-box", hidden: true, "aria-label": "Sources" },
      el("h2", { text: "Sources" }), list);
    const error = el("p", { class: "error", role: "alert", "data-testid": "error", hidden: true });
    const root = el("article", { class: "msg assistant", id, "data-testid": "answer",
      "data-state": "streaming", "aria-busy": "true" }, notice, text, cap, error, box);
    ui.log.append(root);

    let shown = "";        // the answer so far
    let pending = 0;       // a render waiting for the next frame
    const sourceFor = (sources, n) => sources.find((s) => s.index === n) ?? sources[n - 1];
    const anchor = (n) => `${id}-src-${n}`;

    function citationLink(source, n) {
      const url = safeUrl(source.url);
      return el("a", { class: "cite", "data-testid": "citation", href: url ?? `#${anchor(n)}`,
        title: source.title || source.path, target: url && "_blank", rel: url && "noopener noreferrer" },
        `[${n}]`);
    }

    // Renders the Markdown; with sources, [n] (or [n, m]) become links to them.
    function renderAnswer(answer, sources = []) {
      const citation = sources.length
        ? (numbers) => (numbers.every((n) => sourceFor(sources, n))
          ? numbers.map((n) => citationLink(sourceFor(sources, n), n)) : null)
        : null;
      text.replaceChildren(...ArchonMarkdown.render(answer, { citation }));
    }

    // One card per source: heading trail, where (a link to the file and line), a snippet;
    // the ones the answer cites (the agent's `cited` flag) are marked.
    function sourceCard(source, i) {
      const n = source.index ?? i + 1;
      const url = safeUrl(source.url);
      const headings = Array.isArray(source.heading_path) ? source.heading_path.filter(Boolean) : [];
      const trail = headings.length ? headings.join(" \u203a ") : (source.title || source.path || "");
      // A code chunk (it has a language) shows its line range, symbol and lines as code.
      const code = typeof source.language === "string" && source.language !== "";
      const lines = code && source.end_line && source.end_line !== source.start_line
        ? `${source.start_line}-${source.end_line}` : source.start_line;
      const where = source.start_line ? `${source.path}:${lines}` : `${source.path ?? ""}`;
      const cited = source.cited === true;
      return el("li", { id: anchor(n), value: n, class: cited ? "source-card cited" : "source-card",
        "data-testid": "source", "data-cited": String(cited) },
        el("div", { class: "src-head" },
          el("span", { class: "src-num", text: `[${n}]` }),
          el("span", { class: "src-trail", "data-testid": "source-trail", text: trail }),
          code && el("span", { class: "badge lang", "data-testid": "source-language",
            text: source.language }),
          cited && el("span", { class: "badge", "data-testid": "cited-badge", text: "cited" })),
        code && source.symbol
          ? el("div", { class: "src-symbol" },
            el("code", { "data-testid": "source-symbol",
              text: `${source.symbol_kind ? `${source.symbol_kind} ` : ""}${source.symbol}` }))
          : null,
        el("div", { class: "src-where", title: source.source ? `${source.source}:${where}` : where },
          el("span", { class: "src-name", "data-testid": "source-name", text: source.source ?? "" }),
          source.source ? ":" : null,
          url ? el("a", { href: url, target: "_blank", rel: "noopener noreferrer",
            "data-testid": "source-link", text: where })
              : el("code", { text: where })),
        source.snippet && code
          ? el("pre", { class: "src-code", "data-testid": "source-code" },
            el("code", { class: `language-${source.language}`, text: source.snippet }))
          : source.snippet
            ? el("p", { class: "src-snippet", "data-testid": "source-snippet", text: source.snippet })
            : null);
    }

    function renderSources(sources) {
      list.replaceChildren(...sources.map(sourceCard));
      box.hidden = sources.length === 0;
    }

    function finishNow(answer, sources, state, message, end) {
      cancelAnimationFrame(pending);
      renderAnswer(answer, sources);
      if (sources.length) renderSources(sources);
      if (state === "stopped") {
        const last = text.lastElementChild;
        (last && /^(P|LI|UL|OL)$/.test(last.tagName) ? last : text)
          .append(el("span", { class: "stopped", text: " (stopped)" }));
      }
      if (end.finishReason) root.dataset.finish = end.finishReason;
      if (end.finishReason === "length") {
        const n = end.tokens;
        cap.textContent = n ? `Answer cut at ${n} tokens (max_tokens).` : "Answer cut at the token limit.";
        cap.hidden = false;
      }
      if (message) { error.textContent = message; error.hidden = false; }
      root.dataset.state = state;  // streaming -> done | stopped | error
      root.setAttribute("aria-busy", "false");
    }

    return {
      rag(mode) {
        const message = NOTICES[mode];
        notice.hidden = !message;
        notice.textContent = message ?? "";
        if (mode) root.dataset.rag = mode;
      },
      append(delta) {
        shown += delta;
        // Re-rendered once a frame, not once a token: Markdown needs the whole text so far.
        if (!pending) {
          pending = requestAnimationFrame(() => {
            pending = 0;
            keepScrolled(() => renderAnswer(shown));
          });
        }
      },
      finish(answer, sources, state, message, end = {}) {
        keepScrolled(() => finishNow(answer, sources, state, message, end));
      },
    };
  }

  // Follows the conversation's end unless the reader scrolled up.
  function keepScrolled(change) {
    const atEnd = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 40;
    change();
    if (atEnd) ui.log.scrollTop = ui.log.scrollHeight;
  }

  async function send() {
    const question = ui.prompt.value.trim();
    if (!question || controller) return;
    ui.prompt.value = "";
    const turns = history;  // "New chat" may replace history while this answer streams
    turns.push({ role: "user", content: question });
    ui.log.append(el("article", { class: "msg user", "data-testid": "question" }, el("p", { text: question })));
    const view = answerView();
    controller = new AbortController();
    ui.send.disabled = true;
    ui.stop.disabled = false;
    let answer = "";
    let sources = [];
    const end = { finishReason: null, tokens: null };
    try {
      const body = {
        messages: turns, stream: true,
        stream_options: { include_usage: true },  // the cap notice tells the tokens it got
        archon: { rag: ui.useKb.checked },
      };
      if (ui.model.value) body.model = ui.model.value;
      let res;
      try {
        res = await api("/v1/chat/completions", {
          method: "POST", body: JSON.stringify(body), signal: controller.signal,
        });
      } catch (err) {
        if (err.name !== "TypeError") throw err;
        throw new Error(`Could not reach the agent (${err.message}).`);
      }
      if (!res.ok) throw await errorFrom(res);
      view.rag(res.headers.get("x-archon-rag"));
      for await (const event of sseEvents(res.body)) {
        if (event.error) throw new Error(event.error.message || "the answer failed");
        const choice = event.choices?.[0];
        const delta = choice?.delta?.content;
        if (delta) { answer += delta; view.append(delta); }
        if (choice?.finish_reason) end.finishReason = choice.finish_reason;
        if (Number.isInteger(event.usage?.completion_tokens)) end.tokens = event.usage.completion_tokens;
        if (Array.isArray(event.sources)) sources = event.sources;
      }
      view.finish(answer, sources, "done", null, end);
    } catch (err) {
      if (err.name === "AbortError") view.finish(answer, sources, "stopped");
      else view.finish(answer, sources, "error", err.message);
    } finally {
      // Keep the turn only if something came back, so a failed question can simply be asked again.
      if (answer) turns.push({ role: "assistant", content: answer });
      else turns.pop();
      controller = null;
      ui.send.disabled = false;
      ui.stop.disabled = true;
      ui.prompt.focus();
    }
  }

  ui.chatForm.addEventListener("submit", (event) => { event.preventDefault(); send(); });
  ui.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.chatForm.requestSubmit();
    }
  });
  ui.stop.addEventListener("click", () => controller?.abort());
  ui.model.addEventListener("change", showModelNote);
  ui.newChat.addEventListener("click", () => {
    controller?.abort();
    history = [];
    ui.log.replaceChildren();
    ui.prompt.focus();
  });

  loadModels();
  ui.prompt.focus();
})();
