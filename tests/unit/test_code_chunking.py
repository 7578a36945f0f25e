"""The code chunker on real code: ../shared/corpora/prometheus-code (prometheus/prometheus at
d15adb9ad7e5d9fbde3a9a8f30200593a5a14d86) and ../shared/corpora/client_python
(prometheus/client_python at d0b497ffe069865537e55af52cb00c329d58a6f0). Line numbers below are
those files' own."""

from __future__ import annotations

from pathlib import Path

import pytest

from archon.kb.code_chunking import (
    chunk_code,
    code_indexed_text,
    identifier_words,
    skip_reason,
    split_identifier,
)
from archon.kb.sync import skip_file

CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpora"
pytestmark = pytest.mark.skipif(not CORPORA.is_dir(), reason="needs ../shared/corpora")


def chunks_of(relative: str):
    text = (CORPORA / relative).read_text()
    return text, chunk_code(relative.split("/", 1)[1], text)


def find(chunks, trail):
    return [c for c in chunks if c.heading_path == trail]


def test_go_method_sits_under_its_receiver_type_with_its_doc_comment():
    _, chunks = chunks_of("prometheus-code/scrape/target.go")
    (offset,) = find(chunks, ["target.go", "Target", "offset"])
    assert (offset.start_line, offset.end_line) == (168, 184)  # doc comment at 168, "}" at 184
    assert offset.kind == "method" and offset.language == "go"
    assert offset.symbol == "Target.offset"
    assert offset.signature == (
        "func (t *Target) offset(interval time.Duration, offsetSeed uint64) time.Duration"
    )
    assert offset.doc.startswith("offset returns the time until the next scrape cycle")
    assert offset.text.startswith("// offset returns") and offset.text.endswith("}")


def test_every_chunk_is_the_files_exact_lines_and_chunks_never_overlap():
    for file in sorted((CORPORA / "prometheus-code").rglob("*.go")) + sorted(
        (CORPORA / "client_python" / "prometheus_client").rglob("*.py")
    ):
        text = file.read_text()
        lines = text.splitlines()
        previous_end = 0
        for chunk in chunk_code(file.name, text):
            assert chunk.text == "\n".join(lines[chunk.start_line - 1 : chunk.end_line]), file
            assert chunk.start_line > previous_end, (file, chunk.heading_path)
            previous_end = chunk.end_line


def test_license_header_is_not_a_chunk():
    _, chunks = chunks_of("prometheus-code/config/reload.go")
    assert chunks[0].start_line == 14  # lines 1-12: the Apache license header
    assert not any("Licensed under the Apache License" in c.text for c in chunks)


def test_a_long_function_is_cut_into_parts_that_keep_its_trail_signature_and_doc():
    _, chunks = chunks_of("prometheus-code/config/reload.go")
    parts = find(chunks, ["reload.go", "GenerateChecksum"])
    assert [(p.start_line, p.end_line, p.part) for p in parts] == [(32, 70, 1), (71, 93, 2)]
    second = code_indexed_text("prometheus-code", "config/reload.go", parts[1])
    assert "func GenerateChecksum(yamlFilePath string) (string, error)" in second
    assert "GenerateChecksum generates a checksum of the YAML file" in second
    assert "reload.go > GenerateChecksum" in second


def test_python_method_trail_docstring_and_decorator():
    _, chunks = chunks_of("client_python/prometheus_client/metrics.py")
    (inc,) = find(chunks, ["metrics.py", "Counter", "inc"])
    assert (inc.start_line, inc.end_line) == (337, 345)
    assert inc.kind == "method" and inc.language == "python"
    assert inc.doc == "Increment counter by the given amount."
    assert inc.signature.startswith("def inc(self, amount: float = 1")
    # A class too large for one chunk: its header (docstring) is a chunk of its own.
    (counter,) = find(chunks, ["metrics.py", "Counter"])
    assert counter.kind == "class" and counter.start_line == 292
    assert counter.doc.startswith("A Counter tracks counts of events")

    _, chunks = chunks_of("client_python/prometheus_client/multiprocess.py")
    (merge,) = find(chunks, ["multiprocess.py", "MultiProcessCollector", "merge"])
    assert (merge.start_line, merge.end_line) == (35, 44)  # from the @staticmethod line
    assert merge.text.startswith("    @staticmethod\n    def merge(")


def test_error_variables_between_symbols_are_indexed():
    _, chunks = chunks_of("prometheus-code/scrape/scrape.go")
    declared = [c for c in chunks if 'errors.New("body size limit exceeded")' in c.text]
    assert len(declared) == 1 and declared[0].kind == "declarations"
    assert declared[0].heading_path == ["scrape.go"]
    assert (declared[0].start_line, declared[0].end_line) == (763, 763)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("scrapeTimeout", ["scrape", "timeout"]),
        ("max_model_len", ["max", "model", "len"]),
        ("HTTPServer", ["http", "server"]),
        ("errNameLabelMandatory", ["err", "name", "label", "mandatory"]),
        ("PROMETHEUS_MULTIPROC_DIR", ["prometheus", "multiproc", "dir"]),
        ("offset", ["offset"]),
    ],
)
def test_split_identifier(name, words):
    assert split_identifier(name) == words


def test_identifiers_are_split_in_the_indexed_text_but_not_in_the_chunk():
    _, chunks = chunks_of("prometheus-code/scrape/target.go")
    (offset,) = find(chunks, ["target.go", "Target", "offset"])
    indexed = code_indexed_text("prometheus-code", "scrape/target.go", offset)
    assert "offset seed" in indexed and "offsetSeed" in indexed
    assert "offset seed" not in offset.text
    assert identifier_words("a scrapeTimeout b") == "scrape timeout"


def test_generated_vendored_and_minified_files_are_skipped():
    generated = (CORPORA / "prometheus-code/promql/parser/generated_parser.y.go").read_text()
    assert skip_reason("promql/parser/generated_parser.y.go", generated) == "generated"
    assert (
        skip_reason("scrape/scrape.go", (CORPORA / "prometheus-code/scrape/scrape.go").read_text())
        is None
    )
    assert skip_reason("vendor/github.com/x/y.go", "package y") == "vendored"
    assert skip_reason("web/node_modules/lib/index.js", "") == "vendored"
    assert skip_reason("api/metrics_pb2.py", "") == "generated"
    assert skip_reason("api/metrics.pb.go", "") == "generated"
    assert skip_reason("static/app.js", "var a=1;" * 2000) == "minified"
    assert skip_file("logo.png", b"\x89PNG\r\n\x1a\n\0\0")


def test_unknown_language_falls_back_to_line_windows():
    text = (CORPORA / "prometheus-code/LICENSE").read_text()
    chunks = chunk_code("LICENSE", text)
    lines = text.splitlines()
    assert len(chunks) > 1
    assert all(c.language is None and c.kind == "lines" for c in chunks)
    assert all(c.text == "\n".join(lines[c.start_line - 1 : c.end_line]) for c in chunks)
    assert all(c.heading_path == ["LICENSE"] for c in chunks)


# Other languages: small snippets (no corpus holds them), to check the grammar wiring.
def test_typescript_javascript_java_rust_symbols():
    ts = (
        "export class Pool {\n  size = 1;\n  drain(): void {}\n}\n"
        "export const f = (x: number) => x;\ninterface Opts { a: string }\n"
    )
    trails = [c.heading_path for c in chunk_code("src/pool.ts", ts)]
    assert (
        ["pool.ts", "Pool"] in trails
        and ["pool.ts", "f"] in trails
        and ["pool.ts", "Opts"] in trails
    )

    js = "/** Adds. */\nfunction add(a, b) {\n  return a + b;\n}\n"
    (add,) = chunk_code("lib/add.js", js)
    assert (add.heading_path, add.start_line, add.end_line, add.doc) == (
        ["add.js", "add"],
        1,
        4,
        "Adds.",
    )

    java = "package a;\n\nclass Pool {\n  /** Drains. */\n  void drain() {}\n}\n"
    (pool,) = [c for c in chunk_code("Pool.java", java) if c.symbol]
    assert pool.heading_path == ["Pool.java", "Pool"] and pool.kind == "class"

    rust = "/// A pool.\nstruct Pool { size: u32 }\n\nimpl Pool {\n    fn drain(&self) {}\n}\n"
    chunks = chunk_code("src/pool.rs", rust)
    assert [c.heading_path for c in chunks] == [["pool.rs", "Pool"], ["pool.rs", "Pool"]]
    assert chunks[0].doc == "A pool." and chunks[0].start_line == 1
