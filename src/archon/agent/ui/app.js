// Archon chat page: vanilla JS, no build step. Untrusted text only ever goes into text nodes.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    log: $("log"), chatForm: $("chat-form"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
    model: $("model"), useKb: $("use-kb"), newChat: $("new-chat"), status: $("status"),
    keyForm: $("key-form"), keyInput: $("api-key"), keyMessage: $("key-message"),
  };
  const KEY_STORAGE = "archon.apiKey";
  const NOTICES = {
    degraded: "Knowledge base unavailable — answered without your docs.",
    none: "Nothing relevant found in the knowledge base — answered without your docs.",
    off: "Knowledge base off — answered without your docs.",
  };

  let history = [];        // the conversation sent with each request
  let controller = null;   // AbortController of the answer in flight
  let keyWaiters = [];     // requests waiting for an API key after a 401
  let answers = 0;

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value == null || value === false) continue;
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : value);
    }
    node.append(...children);
    return node;
  }

  const safeUrl = (url) => (typeof url === "string" && /^https?:\/\//i.test(url) ? url : null);
  const setStatus = (text) => { ui.status.textContent = text; };

  class HttpError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function errorFrom(res) {
    let message = `${res.status} ${res.statusText}`.trim();
    try {
      const body = await res.json();
      if (body?.error?.message) message = body.error.message;
    } catch { /* not JSON: keep the status line */ }
    return new HttpError(res.status, message);
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
      ui.model.replaceChildren(...(body.data || []).map((m) => el("option", { value: m.id, text: m.id })));
      if ([...ui.model.options].some((o) => o.value === current)) ui.model.value = current;
      setStatus(ui.model.options.length ? "" : "No model is available.");
    } catch (err) {
      setStatus(`Could not list the models: ${err.message}`);
    }
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
    const text = el("div", { class: "text", "data-testid": "answer-text" });
    const list = el("ol", { "data-testid": "sources" });
    const box = el("section", { class: "sources-box", hidden: true, "aria-label": "Sources" },
      el("h2", { text: "Sources" }), list);
    const error = el("p", { class: "error", role: "alert", "data-testid": "error", hidden: true });
    const root = el("article", { class: "msg assistant", id, "data-testid": "answer",
      "data-state": "streaming", "aria-busy": "true" }, notice, text, box, error);
    ui.log.append(root);

    const sourceFor = (sources, n) => sources.find((s) => s.index === n) ?? sources[n - 1];
    const anchor = (n) => `${id}-src-${n}`;

    function citationLink(source, n) {
      const url = safeUrl(source.url);
      return el("a", { class: "cite", "data-testid": "citation", href: url ?? `#${anchor(n)}`,
        title: source.title || source.path, target: url && "_blank", rel: url && "noopener noreferrer" },
        `[${n}]`);
    }

    // Re-renders the finished text with [n] (or [n, m]) turned into links to the sources.
    function renderCitations(answer, sources) {
      const parts = [];
      let last = 0;
      for (const match of answer.matchAll(/\[(\d+(?:\s*,\s*\d+)*)\]/g)) {
        const numbers = match[1].split(/\s*,\s*/).map(Number);
        if (!numbers.every((n) => sourceFor(sources, n))) continue;
        parts.push(answer.slice(last, match.index), ...numbers.map((n) => citationLink(sourceFor(sources, n), n)));
        last = match.index + match[0].length;
      }
      parts.push(answer.slice(last));
      text.replaceChildren(...parts);
    }

    function renderSources(sources) {
      list.replaceChildren(...sources.map((source, i) => {
        const n = source.index ?? i + 1;
        const url = safeUrl(source.url);
        const where = source.start_line ? `${source.path}:${source.start_line}` : `${source.path ?? ""}`;
        const cited = source.cited ? "cited" : null;  // the agent marks the ones the answer cites
        return el("li", { id: anchor(n), value: n, class: cited, "data-testid": "source" },
          el("span", { class: "src-name", text: source.source ?? "" }), " ",
          url ? el("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: where })
              : el("code", { text: where }),
          source.title ? ` — ${source.title}` : "");
      }));
      box.hidden = sources.length === 0;
    }

    function finishNow(answer, sources, state, message) {
      if (sources.length) { renderCitations(answer, sources); renderSources(sources); }
      if (state === "stopped") text.append(el("span", { class: "stopped", text: " (stopped)" }));
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
        keepScrolled(() => text.append(delta));
      },
      finish(answer, sources, state, message) {
        keepScrolled(() => finishNow(answer, sources, state, message));
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
    try {
      const body = { messages: turns, stream: true, archon: { rag: ui.useKb.checked } };
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
        const delta = event.choices?.[0]?.delta?.content;
        if (delta) { answer += delta; view.append(delta); }
        if (Array.isArray(event.sources)) sources = event.sources;
      }
      view.finish(answer, sources, "done");
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
  ui.newChat.addEventListener("click", () => {
    controller?.abort();
    history = [];
    ui.log.replaceChildren();
    ui.prompt.focus();
  });

  loadModels();
  ui.prompt.focus();
})();
