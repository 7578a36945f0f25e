"""`archon kb eval` as a user runs it: a store synced by `archon kb sync`, the judged set given
as a directory of JSON-lines files read as one set, a split chosen, JSON or text out; a split
with no questions is a one-line error with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_kb import CORPORA, make_repo, sources_file
from tests.support.servers import run_cli

pytestmark = pytest.mark.skipif(not CORPORA.is_dir(), reason="../shared/corpora is missing")


def test_eval_reads_a_directory_of_judged_files(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, subset=["docs/querying", "docs/storage.md", "docs/federation.md"])
    env = {
        "ARCHON_KB_SOURCES": str(sources_file(tmp_path, repo)),
        "ARCHON_KB_DATA_DIR": str(tmp_path / "data"),
    }
    synced = run_cli("kb", "sync", env=env, timeout=600)
    assert synced.returncode == 0, synced.stderr
    judged = tmp_path / "judged"
    judged.mkdir()
    rows = {
        "a.jsonl": [
            ("How long does Prometheus keep data on local storage?", "docs/storage.md", "test"),
            ("scrape one Prometheus server from another", "docs/federation.md", "tune"),
        ],
        "b.jsonl": [
            ("per-second rate of a counter", "docs/querying/functions.md", "test"),
        ],
    }
    for name, questions in rows.items():
        lines = [
            json.dumps({"query": q, "relevant": {f"prometheus:{path}": 2}, "split": split})
            for q, path, split in questions
        ]
        (judged / name).write_text(
            "\n".join(lines) + "\n\n"
        )  # a trailing blank line, as editors leave
    done = run_cli("kb", "eval", str(judged), "--split", "test", "--json", env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    scores = {s["mode"]: s for s in json.loads(done.stdout)}
    assert set(scores) == {"dense", "bm25", "hybrid"}
    assert {s["queries"] for s in scores.values()} == {2}  # the test rows of both files
    # Each question names its answering file plainly: every mode finds both in its top 10.
    assert all(s["recall_at_10"] == 1.0 for s in scores.values()), scores
    text = run_cli("kb", "eval", str(judged / "a.jsonl"), env=env, timeout=300)
    assert text.returncode == 0 and text.stdout.startswith("2 queries"), text.stdout
    none = run_cli("kb", "eval", str(judged), "--split", "nope", env=env, timeout=300)
    assert none.returncode == 2
    assert "no queries in split 'nope'" in none.stderr and "Traceback" not in none.stderr
