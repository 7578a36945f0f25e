// Archon chat page: Markdown to DOM nodes, for the subset a model writes.
//
// Why a small renderer of our own, not marked + DOMPurify: those build an HTML string from
// untrusted text and then rely on a sanitizer to take the dangerous parts out again, and they
// are two vendored libraries to keep current in a page that has no build step and no
// dependencies. This renderer never produces HTML at all: it creates elements from a fixed list
// of tags (p, h3-h6, strong, em, del, code, pre, ul, ol, li, blockquote, hr, br, a, button) and
// puts every piece of text in through text nodes (textContent). No innerHTML, no
// insertAdjacentHTML, no attribute whose value is the model's except an http(s) href and a
// language label, so a <script> or an onerror in an answer or a doc can only ever show as text.
// Supported: paragraphs, headings, **bold**, *italic*, ~~struck~~, `code`, fenced code blocks
// (with a copy button), ordered and unordered lists (nested), block quotes, rules, [links](url)
// and bare URLs (http/https only; any other scheme keeps its text and loses the link), and
// [n] citations through a hook. Tables and raw HTML are shown as the text they are.
"use strict";

const ArchonMarkdown = (() => {
  const FENCE = /^( {0,3})(`{3,}|~{3,})\s*([^\s`]*)[^`]*$/;
  const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
  const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
  const ITEM = /^( *)([-*+]|\d{1,9}[.)])(?:[ \t]+(.*)|$)/;
  const QUOTE = /^ {0,3}>[ \t]?(.*)$/;
  // Sticky patterns for the inline scanner (matched at a position, never on a copied tail).
  const CITATION = /\[(\d{1,3}(?:[ \t]*,[ \t]*\d{1,3})*)\]/y;
  const BARE_URL = /https?:\/\/[^\s<>"'`]*[^\s<>"'`.,;:!?)\]}*_~]/y;
  const AUTOLINK = /<(https?:\/\/[^\s<>]+)>/y;
  const ESCAPABLE = /[\\`*_{}[\]()#+\-.!<>~|"']/;
  const MAX_DEPTH = 8; // nested emphasis/lists beyond this stay text
  const COPIED_MS = 2500;

  function h(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value == null || value === false) continue;
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : value);
    }
    node.append(...children.filter((c) => c != null && c !== false));
    return node;
  }

  const safeUrl = (url) => (typeof url === "string" && /^https?:\/\/[^\s]+$/i.test(url) ? url : null);
  const indentOf = (line) => line.length - line.trimStart().length;
  const startsBlock = (line) =>
    FENCE.test(line) || HEADING.test(line) || RULE.test(line) || ITEM.test(line) || QUOTE.test(line);

  // ---- copy button ----

  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        return true;
      } catch { /* denied or unfocused: try the old way */ }
    }
    // Plain http on a host name is no secure context: no navigator.clipboard there.
    const area = h("textarea", { readonly: true, "aria-hidden": "true" });
    area.value = text;
    Object.assign(area.style, { position: "fixed", top: "-1000px", opacity: "0" });
    const focused = document.activeElement;
    document.body.append(area);
    area.select();
    let ok = false;
    try { ok = document.execCommand("copy"); } catch { ok = false; }
    area.remove();
    focused?.focus?.();
    return ok;
  }

  function codeBlock(code, lang) {
    const button = h("button", { type: "button", class: "copy", "data-testid": "copy-code",
      "aria-label": "Copy code", text: "Copy" });
    let timer = null;
    button.addEventListener("click", async () => {
      const ok = await copyText(code);
      button.textContent = ok ? "Copied" : "Copy failed";
      button.dataset.state = ok ? "copied" : "failed";
      clearTimeout(timer);
      timer = setTimeout(() => { button.textContent = "Copy"; delete button.dataset.state; }, COPIED_MS);
    });
    return h("div", { class: "code-block", "data-testid": "code-block" },
      h("div", { class: "code-head" }, h("span", { class: "code-lang", text: lang || "" }), button),
      h("pre", {}, h("code", { "data-lang": lang || null, text: code })));
  }

  // ---- blocks ----

  function blocks(lines, opts, depth = 0) {
    const out = [];
    let para = [];
    const flush = () => {
      if (para.length) out.push(h("p", {}, ...inline(para.join("\n"), opts)));
      para = [];
    };
    for (let i = 0; i < lines.length;) {
      const line = lines[i];
      let m;
      if (!line.trim()) {
        flush();
        i++;
      } else if ((m = FENCE.exec(line))) {
        flush();
        i = fenced(lines, i, m, out);
      } else if ((m = HEADING.exec(line))) {
        flush();
        out.push(h(`h${Math.min(m[1].length + 2, 6)}`, {}, ...inline(m[2] ?? "", opts)));
        i++;
      } else if (RULE.test(line)) {
        flush();
        out.push(h("hr"));
        i++;
      } else if (depth < MAX_DEPTH && ITEM.test(line)) {
        flush();
        i = list(lines, i, opts, depth, out);
      } else if (depth < MAX_DEPTH && QUOTE.test(line)) {
        flush();
        const inner = [];
        for (; i < lines.length && lines[i].trim(); i++) {
          const q = QUOTE.exec(lines[i]);
          if (!q && startsBlock(lines[i])) break;
          inner.push(q ? q[1] : lines[i]);
        }
        out.push(h("blockquote", {}, ...blocks(inner, opts, depth + 1)));
      } else {
        para.push(line.trim());
        i++;
      }
    }
    flush();
    return out;
  }

  // A fenced code block from lines[start]; an unclosed fence (a streaming answer) runs to the end.
  function fenced(lines, start, m, out) {
    const [, indent, fence, lang] = m;
    const body = [];
    let i = start + 1;
    for (; i < lines.length; i++) {
      const t = lines[i].trim();
      if (t.length >= fence.length && t[0] === fence[0] && /^([`~])\1*$/.test(t)) { i++; break; }
      body.push(lines[i].slice(Math.min(indent.length, indentOf(lines[i]))));
    }
    out.push(codeBlock(body.join("\n"), lang));
    return i;
  }

  function list(lines, start, opts, depth, out) {
    const first = ITEM.exec(lines[start]);
    const indent = first[1].length;
    const ordered = /\d/.test(first[2]);
    const sameKind = (m) => m && m[1].length === indent && /\d/.test(m[2]) === ordered;
    const node = h(ordered ? "ol" : "ul");
    if (ordered && parseInt(first[2], 10) !== 1) node.setAttribute("start", String(parseInt(first[2], 10)));
    const items = [];
    let content = indent + first[2].length + 1; // where an item's own text starts
    let i = start;
    while (i < lines.length) {
      const line = lines[i];
      const m = ITEM.exec(line);
      if (sameKind(m)) {
        items.push([m[3] ?? ""]);
        content = indent + m[2].length + 1;
        i++;
        continue;
      }
      if (!line.trim()) {
        let j = i + 1;
        while (j < lines.length && !lines[j].trim()) j++;
        if (j < lines.length && (sameKind(ITEM.exec(lines[j])) || indentOf(lines[j]) > indent)) {
          items[items.length - 1].push("");
          i++;
          continue;
        }
        break;
      }
      const lineIndent = indentOf(line);
      if (lineIndent > indent) {
        items[items.length - 1].push(line.slice(Math.min(lineIndent, content)));
      } else if (!startsBlock(line) && items[items.length - 1].at(-1) !== "") {
        items[items.length - 1].push(line); // a lazy continuation of the item's text
      } else {
        break;
      }
      i++;
    }
    for (const itemLines of items) {
      while (itemLines.at(-1) === "") itemLines.pop(); // a blank line between items keeps it tight
      const parts = blocks(itemLines, opts, depth + 1);
      const li = h("li");
      // A one-paragraph item is tight: its text goes straight into the <li>.
      if (parts[0]?.tagName === "P" && !itemLines.includes("")) li.append(...parts.shift().childNodes);
      li.append(...parts);
      node.append(li);
    }
    out.push(node);
    return i;
  }

  // ---- inline ----

  function textNodes(text) {
    const nodes = [];
    text.split("\n").forEach((part, n) => {
      if (n) nodes.push(h("br"));
      if (part) nodes.push(document.createTextNode(part));
    });
    return nodes;
  }

  function at(re, text, i) {
    re.lastIndex = i;
    return re.exec(text);
  }

  // The end of the backtick run at i and the index of its closing run, or null.
  function codeSpan(text, i) {
    let run = i;
    while (text[run] === "`") run++;
    const ticks = text.slice(i, run);
    for (let j = text.indexOf(ticks, run); j !== -1; j = text.indexOf(ticks, j + 1)) {
      let k = j + ticks.length;
      if (text[j - 1] !== "`" && text[k] !== "`") return { start: run, close: j, end: k };
      while (text[k] === "`") k++;
      j = k - 1;
    }
    return null;
  }

  // **strong**, __strong__, *em*, _em_, ~~del~~ starting at i, or null.
  function emphasis(text, i, opts, depth) {
    const c = text[i];
    const double = text[i + 1] === c;
    if (c === "~" && !double) return null;
    const delim = double ? c + c : c;
    const open = i + delim.length;
    if (open >= text.length || /\s/.test(text[open])) return null;
    if (c === "_" && /[\p{L}\p{N}]/u.test(text[i - 1] ?? "")) return null; // snake_case
    for (let j = open + 1; j < text.length; j++) {
      if (text[j] === "`") {
        const span = codeSpan(text, j);
        if (span) j = span.end - 1;
        continue;
      }
      if (text[j] === "\\") { j++; continue; }
      if (!double && text[j] === c && text[j + 1] === c) { // a ** inside *...*
        while (text[j + 1] === c) j++;
        continue;
      }
      if (!text.startsWith(delim, j) || /\s/.test(text[j - 1])) continue;
      if (c === "_" && /[\p{L}\p{N}]/u.test(text[j + delim.length] ?? "")) continue;
      const tag = c === "~" ? "del" : double ? "strong" : "em";
      return { node: h(tag, {}, ...inline(text.slice(open, j), opts, depth + 1)), end: j + delim.length };
    }
    return null;
  }

  // [text](url "title") (or ![alt](url): shown as a link, never loaded) starting at i, or null.
  function link(text, i, opts, depth) {
    let j = i + 1;
    for (let level = 1; j < text.length; j++) {
      if (text[j] === "\\") { j++; continue; }
      if (text[j] === "[") level++;
      else if (text[j] === "]" && --level === 0) break;
    }
    if (j >= text.length || text[j + 1] !== "(") return null;
    let k = j + 2;
    for (let level = 1; k < text.length; k++) {
      if (text[k] === "(") level++;
      else if (text[k] === ")" && --level === 0) break;
    }
    if (k >= text.length) return null;
    const label = text.slice(i + 1, j);
    const target = text.slice(j + 2, k).trim().replace(/\s+(["'(]).*$/, "").replace(/^<(.*)>$/, "$1");
    const href = safeUrl(target);
    const children = inline(label, { ...opts, links: false }, depth + 1);
    const node = href
      ? h("a", { href, target: "_blank", rel: "noopener noreferrer" }, ...children)
      : h("span", { class: "unsafe-link", title: "link removed: only http and https links are kept" }, ...children);
    return { node, end: k + 1 };
  }

  function inline(text, opts, depth = 0) {
    const out = [];
    let buf = "";
    const push = (node) => {
      if (buf) out.push(...textNodes(buf));
      buf = "";
      out.push(node);
    };
    if (depth > MAX_DEPTH) return textNodes(text);
    for (let i = 0; i < text.length;) {
      const c = text[i];
      let m;
      if (c === "\\" && ESCAPABLE.test(text[i + 1] ?? "")) {
        buf += text[i + 1];
        i += 2;
        continue;
      }
      if (c === "`") {
        const span = codeSpan(text, i);
        if (span) {
          const code = text.slice(span.start, span.close).replace(/\n/g, " ");
          push(h("code", { text: /^ .*[^ ].* $/.test(code) ? code.slice(1, -1) : code }));
          i = span.end;
        } else {
          while (text[i] === "`") buf += text[i++];
        }
        continue;
      }
      if (c === "*" || c === "_" || c === "~") {
        const em = emphasis(text, i, opts, depth);
        if (em) {
          push(em.node);
          i = em.end;
        } else {
          while (text[i] === c) buf += text[i++]; // a run that opens nothing stays as it is
        }
        continue;
      }
      if (c === "[" && opts.citation && (m = at(CITATION, text, i))) {
        const nodes = opts.citation(m[1].split(/\s*,\s*/).map(Number));
        if (nodes) {
          nodes.forEach(push);
          i += m[0].length;
          continue;
        }
      }
      if ((c === "[" || (c === "!" && text[i + 1] === "[")) && opts.links !== false) {
        const found = link(text, c === "!" ? i + 1 : i, opts, depth);
        if (found) {
          push(found.node);
          i = found.end;
          continue;
        }
      }
      if (c === "<" && opts.links !== false && (m = at(AUTOLINK, text, i))) {
        push(h("a", { href: m[1], target: "_blank", rel: "noopener noreferrer", text: m[1] }));
        i += m[0].length;
        continue;
      }
      if (c === "h" && opts.links !== false && !/[\p{L}\p{N}]/u.test(text[i - 1] ?? "")
          && (m = at(BARE_URL, text, i))) {
        push(h("a", { href: m[0], target: "_blank", rel: "noopener noreferrer", text: m[0] }));
        i += m[0].length;
        continue;
      }
      buf += c;
      i++;
    }
    if (buf) out.push(...textNodes(buf));
    return out;
  }

  // The nodes for a Markdown text. opts.citation(numbers): nodes for "[n]" / "[n, m]", or null
  // to leave the text as it is.
  function render(markdown, opts = {}) {
    const lines = String(markdown ?? "").replace(/\r\n?/g, "\n").replace(/\t/g, "    ").split("\n");
    return blocks(lines, opts);
  }

  return { render, copyText, safeUrl };
})();
