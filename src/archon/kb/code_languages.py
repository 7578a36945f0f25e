"""What the code chunker knows of each language: file extensions, the tree-sitter grammar (a
PyPI wheel each), and which syntax nodes are symbols, which of those hold other symbols, and
which are comments. Grammars load on first use: a store of Markdown only never imports them."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import cache
from typing import Any

COMMENTS = frozenset({"comment", "line_comment", "block_comment"})


@dataclass(frozen=True)
class LanguageSpec:
    name: str
    module: str  # the grammar's Python package
    symbols: dict[str, str]  # node type -> kind shown to readers (function, method, type, ...)
    # node type -> the field (or child type) that holds its members, for symbols that nest others
    containers: dict[str, str] = field(default_factory=dict)
    # nodes that only wrap a declaration (export, decorators): the symbol is their child, the
    # range is theirs
    wrappers: frozenset[str] = frozenset()
    grammar: str = "language"  # the package's function that returns the grammar


_PYTHON = LanguageSpec(
    "python",
    "tree_sitter_python",
    {"function_definition": "function", "class_definition": "class"},
    {"class_definition": "body"},
    frozenset({"decorated_definition"}),
)
_GO = LanguageSpec(
    "go",
    "tree_sitter_go",
    {
        "function_declaration": "function",
        "method_declaration": "method",
        "type_declaration": "type",
    },
)
_JS_SYMBOLS = {
    "function_declaration": "function",
    "generator_function_declaration": "function",
    "class_declaration": "class",
    "method_definition": "method",
    "lexical_declaration": "function",  # only `const f = () => ...` (see _arrow_name)
}
_JAVASCRIPT = LanguageSpec(
    "javascript",
    "tree_sitter_javascript",
    _JS_SYMBOLS,
    {"class_declaration": "body"},
    frozenset({"export_statement"}),
)
_TS_SYMBOLS = {
    **_JS_SYMBOLS,
    "abstract_class_declaration": "class",
    "interface_declaration": "interface",
    "type_alias_declaration": "type",
    "enum_declaration": "enum",
    "internal_module": "namespace",
}
_TS_CONTAINERS = {
    "class_declaration": "body",
    "abstract_class_declaration": "body",
    "internal_module": "body",
}
_TYPESCRIPT = LanguageSpec(
    "typescript",
    "tree_sitter_typescript",
    _TS_SYMBOLS,
    _TS_CONTAINERS,
    frozenset({"export_statement"}),
    "language_typescript",
)
_TSX = LanguageSpec(
    "tsx",
    "tree_sitter_typescript",
    _TS_SYMBOLS,
    _TS_CONTAINERS,
    frozenset({"export_statement"}),
    "language_tsx",
)
_JAVA = LanguageSpec(
    "java",
    "tree_sitter_java",
    {
        "class_declaration": "class",
        "interface_declaration": "interface",
        "enum_declaration": "enum",
        "record_declaration": "record",
        "method_declaration": "method",
        "constructor_declaration": "constructor",
    },
    {
        "class_declaration": "body",
        "interface_declaration": "body",
        "enum_declaration": "body",
        "record_declaration": "body",
    },
)
_RUST = LanguageSpec(
    "rust",
    "tree_sitter_rust",
    {
        "function_item": "function",
        "struct_item": "struct",
        "enum_item": "enum",
        "trait_item": "trait",
        "impl_item": "impl",
        "mod_item": "module",
        "macro_definition": "macro",
        "type_item": "type",
    },
    {"impl_item": "body", "trait_item": "body", "mod_item": "body"},
)

EXTENSIONS: dict[str, LanguageSpec] = {
    ".py": _PYTHON,
    ".pyi": _PYTHON,
    ".go": _GO,
    ".js": _JAVASCRIPT,
    ".mjs": _JAVASCRIPT,
    ".cjs": _JAVASCRIPT,
    ".jsx": _JAVASCRIPT,
    ".ts": _TYPESCRIPT,
    ".mts": _TYPESCRIPT,
    ".cts": _TYPESCRIPT,
    ".tsx": _TSX,
    ".java": _JAVA,
    ".rs": _RUST,
}


def language_for(path: str) -> LanguageSpec | None:
    dot = path.rfind(".")
    return EXTENSIONS.get(path[dot:].lower()) if dot > path.rfind("/") else None


def parser_for(spec: LanguageSpec) -> Any:
    """A tree-sitter parser of the language (one per language per process)."""
    return _parser(spec.module, spec.grammar)


@cache
def _parser(module: str, grammar: str) -> Any:
    import tree_sitter

    language = getattr(importlib.import_module(module), grammar)()
    return tree_sitter.Parser(tree_sitter.Language(language))
