"""Source files as knowledge: chunks by symbol (tree-sitter), line windows for the rest.

A chunk is one symbol (a function, a method, a type, a class small enough to read whole) with
the comment block directly above it, or the declarations between symbols (imports, constants,
error variables). Its trail reads file > type > function; a Go method sits under its receiver
type. A class or impl block too large for one chunk gives a chunk of its header and fields and
one per member; a function too large is cut at line boundaries (blank lines preferred) and every
part keeps the function's trail, signature and doc comment in its indexed text. Start and end
lines are the file's own, so a citation points at the exact lines.

What the retrievers index besides the code: the trail, the signature, the doc comment, and each
compound identifier split into words (``scrapeTimeout`` -> "scrape timeout", ``max_model_len``
-> "max model len"), so a question in words finds code named in camelCase or snake_case.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from archon.kb.code_languages import COMMENTS, LanguageSpec, language_for, parser_for

TokenCounter = Callable[[str], int]
MAX_TOKENS = 400  # approx_tokens; about 40 lines of Go
# Recorded with the store's chunking settings: a new value re-chunks code at the next sync.
CODE_CHUNKING = "symbols-1"
WINDOW_LINES = 60
EMBED_WINDOW = 250  # word pieces embedded per code chunk: MiniLM's 256, less its two markers
VENDORED_DIRS = frozenset({"vendor", "node_modules", "bower_components"})
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi", ".pb.go", ".pb.gw.go", ".min.js")
# Go's convention (golang.org/s/generatedcode) and the @generated marker other tools write.
GENERATED_HEADER = re.compile(r"Code generated .* DO NOT EDIT|@generated\b")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_LICENSE = re.compile(r"licen[cs]e|copyright", re.IGNORECASE)


def approx_tokens(text: str) -> int:
    return len(re.findall(r"\w+|[^\w\s]", text))


@dataclass
class CodeChunk:
    text: str
    heading_path: list[str]  # the trail: file, then enclosing types, then the symbol
    start_line: int  # 1-based, inclusive
    end_line: int
    tokens: int
    language: str | None  # None: a file of unknown language, cut into line windows
    symbol: str | None = None  # "scrapeLoop.run"; None for declarations and windows
    kind: str = "lines"  # function, method, class, type, ..., "declarations", "lines"
    signature: str = ""
    doc: str = ""
    part: int = 0  # > 0: one of several parts of a symbol too large for one chunk


def skip_reason(path: str, text: str) -> str | None:
    """Why a file is left out as generated or vendored, or None to index it."""
    parts = path.split("/")
    if VENDORED_DIRS.intersection(parts[:-1]):
        return "vendored"
    if parts[-1].endswith(GENERATED_SUFFIXES):
        return "generated"
    if GENERATED_HEADER.search("\n".join(text.splitlines()[:30])):
        return "generated"
    lines = text.count("\n") + 1
    if len(text) > 4000 and len(text) / lines > 300:
        return "minified"
    return None


def split_identifier(name: str) -> list[str]:
    """``scrapeTimeout`` -> [scrape, timeout]; ``HTTPServer`` -> [http, server]."""
    return [w.lower() for w in _WORD.findall(name)]


def identifier_words(text: str) -> str:
    """Every compound identifier of the text, split into its words (each identifier once)."""
    out: list[str] = []
    for ident in dict.fromkeys(_IDENT.findall(text)):
        words = split_identifier(ident)
        if len(words) > 1:
            out.append(" ".join(words))
    return "\n".join(out)


def code_indexed_text(source: str, path: str, chunk: CodeChunk) -> str:
    """What the retrievers see of a code chunk: where it is, what it is, its code, and its
    identifiers in words."""
    where = re.sub(r"[/_.\-]+", " ", path).strip()
    head = [f"{source}: {where}", " > ".join(chunk.heading_path)]
    if chunk.signature:
        head.append(chunk.signature)
    if chunk.doc and chunk.part > 1:  # the first part holds the doc comment already
        head.append(chunk.doc)
    words = identifier_words(chunk.text)
    return "\n".join(head) + "\n\n" + chunk.text + (f"\n\n{words}" if words else "")


def code_embedded_text(
    source: str, path: str, chunk: CodeChunk, count: TokenCounter, window: int = EMBED_WINDOW
) -> str:
    """What the dense model reads of a code chunk: where it is, its trail, signature and doc
    comment, then as many of its first lines as fit one window of the model (MiniLM: 256 word
    pieces). One window, not the mean of several: a mean of code windows is a blur, and the
    head says what the symbol is for."""
    where = re.sub(r"[/_.\-]+", " ", path).strip()
    head = [f"{source}: {where}", " > ".join(chunk.heading_path)]
    head += [x for x in (chunk.signature, chunk.doc) if x]
    text = "\n".join(head)
    for line in chunk.text.splitlines():
        if not line.strip() or (chunk.doc and line.strip().startswith(("//", "#", "*", "/*"))):
            continue  # blank lines, and the doc comment already above
        longer = f"{text}\n{line.strip()}"
        if count(longer) > window:
            break
        text = longer
    return text


def chunk_lines(
    path: str, text: str, *, max_tokens: int = MAX_TOKENS, count: TokenCounter = approx_tokens
) -> list[CodeChunk]:
    """A file of no known language: windows of whole lines, cut at blank lines where possible."""
    lines = text.splitlines()
    trail = [path.rsplit("/", 1)[-1]]
    return [
        _chunk(lines, a, b, trail, None, count)
        for a, b in _cuts(lines, 0, len(lines) - 1, max_tokens, count)
        if "\n".join(lines[a : b + 1]).strip()
    ]


def chunk_code(
    path: str, text: str, *, max_tokens: int = MAX_TOKENS, count: TokenCounter = approx_tokens
) -> list[CodeChunk]:
    """Chunks of a source file by symbol; line windows when the language is unknown."""
    spec = language_for(path)
    if spec is None:
        return chunk_lines(path, text, max_tokens=max_tokens, count=count)
    tree = parser_for(spec).parse(text.encode("utf-8"))
    walker = _Walker(spec, text.splitlines(), max_tokens, count)
    walker.walk(tree.root_node.children, [path.rsplit("/", 1)[-1]], top=True)
    return sorted(walker.chunks, key=lambda c: c.start_line)


def _end_row(node: Any) -> int:
    """The last row a node covers (a line comment's node may end at column 0 of the next)."""
    end = node.end_point
    return end.row - 1 if end.column == 0 and end.row > node.start_point.row else end.row


def _text(node: Any) -> str:
    return node.text.decode("utf-8", "replace") if node is not None else ""


def _chunk(
    lines: list[str],
    first: int,
    last: int,
    trail: list[str],
    language: str | None,
    count: TokenCounter,
    **fields: Any,
) -> CodeChunk:
    body = "\n".join(lines[first : last + 1])
    return CodeChunk(body, list(trail), first + 1, last + 1, count(body), language, **fields)


def _cuts(
    lines: list[str], first: int, last: int, max_tokens: int, count: TokenCounter
) -> list[tuple[int, int]]:
    """Row ranges covering first..last, each under max_tokens (or WINDOW_LINES) where a line
    allows, cut after a blank line when one falls in the window's second half."""
    out: list[tuple[int, int]] = []
    start = first
    while start <= last:
        end, size, blank = start, count(lines[start]), -1
        while end < last and end - start + 1 < WINDOW_LINES:
            nxt = count(lines[end + 1])
            if size + nxt > max_tokens:
                break
            end += 1
            size += nxt
            if not lines[end].strip():
                blank = end
        if end < last and blank > start + (end - start) // 2:
            end = blank
        out.append((start, end))
        start = end + 1
    return out


class _Walker:
    def __init__(self, spec: LanguageSpec, lines: list[str], max_tokens: int, count: TokenCounter):
        self.spec = spec
        self.lines = lines
        self.max_tokens = max_tokens
        self.count = count
        self.chunks: list[CodeChunk] = []

    def walk(self, nodes: list[Any], trail: list[str], top: bool = False) -> None:
        gap: list[Any] = []  # declarations between symbols, read as one chunk
        comments: list[Any] = []  # comments not yet known to document a symbol
        if top and nodes and nodes[0].type in COMMENTS:
            # The file's license header is neither a symbol's doc nor knowledge.
            header = []
            for node in nodes:
                if node.type not in COMMENTS:
                    break
                header.append(node)
            if _LICENSE.search(" ".join(_text(n) for n in header)):
                nodes = nodes[len(header) :]
        for node in nodes:
            if not node.is_named:
                continue  # braces, keywords
            if node.type in COMMENTS:
                comments.append(node)
                continue
            symbol = self._symbol(node)
            if symbol is None:
                gap.extend(comments)
                gap.append(node)
                comments = []
                continue
            doc: list[Any] = []
            row = node.start_point.row
            for comment in reversed(comments):  # the block directly above, no blank line
                if _end_row(comment) != row - 1:
                    break
                doc.insert(0, comment)
                row = comment.start_point.row
            gap.extend(comments[: len(comments) - len(doc)])
            comments = []
            self._gap(gap, trail)
            gap = []
            self._symbol_chunks(node, symbol, doc, trail)
        self._gap(gap + comments, trail)

    def _symbol(self, node: Any) -> tuple[Any, str, str] | None:
        """(declaration, name, kind) when the node declares a symbol."""
        decl = node
        if node.type in self.spec.wrappers:
            inner = [c for c in node.named_children if c.type in self.spec.symbols]
            if not inner:
                return None
            decl = inner[-1]
        kind = self.spec.symbols.get(decl.type)
        if kind is None:
            return None
        name = _name(decl)
        return (decl, name, kind) if name else None

    def _gap(self, nodes: list[Any], trail: list[str]) -> None:
        if not nodes:
            return
        first, last = nodes[0].start_point.row, _end_row(nodes[-1])
        for a, b in _cuts(self.lines, first, last, self.max_tokens, self.count):
            chunk = _chunk(self.lines, a, b, trail, self.spec.name, self.count)
            chunk.kind = "declarations"
            if chunk.text.strip():
                self.chunks.append(chunk)

    def _symbol_chunks(
        self, node: Any, symbol: tuple[Any, str, str], doc: list[Any], trail: list[str]
    ) -> None:
        decl, name, kind = symbol
        if decl.type == "method_declaration" and self.spec.name == "go":
            receiver = _go_receiver(decl)
            if receiver and receiver != trail[-1]:
                trail = [*trail, receiver]
        first = doc[0].start_point.row if doc else node.start_point.row
        last = _end_row(node)
        here = [*trail, name]
        if kind == "function" and len(trail) > 1:
            kind = "method"
        info = {
            "symbol": ".".join(here[1:]),
            "kind": kind,
            "signature": _signature(decl),
            "doc": _doc(doc, decl),
        }
        whole = "\n".join(self.lines[first : last + 1])
        if self.count(whole) <= self.max_tokens:
            self.chunks.append(
                _chunk(self.lines, first, last, here, self.spec.name, self.count, **info)
            )
            return
        body = _members(decl, self.spec)
        children = list(body.named_children) if body is not None else []
        index = next((i for i, c in enumerate(children) if self._symbol(c)), None)
        if index is not None:
            # Comments directly above the first member document it, not the container.
            while index > 0 and children[index - 1].type in COMMENTS:
                index -= 1
            # The header (signature, doc, fields before the first member), then the members.
            header_end = children[index].start_point.row - 1
            for a, b in _cuts(self.lines, first, header_end, self.max_tokens, self.count):
                self.chunks.append(
                    _chunk(self.lines, a, b, here, self.spec.name, self.count, **info)
                )
            self.walk(children[index:], here)
            return
        for part, (a, b) in enumerate(
            _cuts(self.lines, first, last, self.max_tokens, self.count), start=1
        ):
            self.chunks.append(
                _chunk(self.lines, a, b, here, self.spec.name, self.count, part=part, **info)
            )


def _name(decl: Any) -> str:
    if decl.type == "type_declaration":  # Go: type X ... or type ( X ...; Y ... )
        names = [_text(s.child_by_field_name("name")) for s in decl.named_children]
        return ", ".join(n for n in names if n)
    if decl.type == "impl_item":  # Rust: impl [Trait for] Type
        return _text(decl.child_by_field_name("type"))
    if decl.type == "lexical_declaration":  # JS/TS: const f = () => ... only
        for declarator in decl.named_children:
            value = declarator.child_by_field_name("value")
            if value is not None and value.type in ("arrow_function", "function_expression"):
                return _text(declarator.child_by_field_name("name"))
        return ""
    return _text(decl.child_by_field_name("name"))


def _go_receiver(decl: Any) -> str:
    """`func (sl *scrapeLoop[T]) run(...)` -> scrapeLoop."""
    receiver = _text(decl.child_by_field_name("receiver")).strip("() ")
    match = re.search(r"\*?\s*([A-Za-z_]\w*)\s*(\[[^\]]*\])?$", receiver)
    return match.group(1) if match else ""


def _members(decl: Any, spec: LanguageSpec) -> Any:
    field_name = spec.containers.get(decl.type)
    return decl.child_by_field_name(field_name) if field_name else None


def _signature(decl: Any) -> str:
    """The declaration up to its body, on one line."""
    body = decl.child_by_field_name("body")
    raw = decl.text[: body.start_byte - decl.start_byte] if body is not None else decl.text
    # Comments between the declaration and its body are not the signature.
    text = re.sub(r"(#|//)[^\n]*", "", raw.decode("utf-8", "replace"))
    if body is None:
        text = text.split("\n", 1)[0]
    return re.sub(r"\s+", " ", text).strip().rstrip("{:").strip()[:300]


def _doc(comments: list[Any], decl: Any) -> str:
    """The comment block above the symbol, or a Python docstring, as plain text."""
    text = "\n".join(_text(c) for c in comments)
    body = decl.child_by_field_name("body")
    if not text and body is not None and body.named_children:
        first = body.named_children[0]
        if (
            first.type == "expression_statement"
            and first.named_children
            and first.named_children[0].type == "string"
        ):
            text = _text(first.named_children[0])
    text = re.sub(r"^\s*(///?|#|/\*\*?|\*/?|\"\"\"|''')", "", text, flags=re.MULTILINE)
    return re.sub(r"\s+", " ", text.replace('"""', "").replace("*/", "")).strip()[:600]
