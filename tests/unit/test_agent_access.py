"""The agent's side of knowledge per group: a key's groups from the keys file, usage summed per
group for GET /v1/usage, and the audit line (names and paths, never text)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from archon.agent import audit
from archon.agent.auth import KeyRing, hash_key
from archon.agent.limits.report import describe_groups
from archon.errors import ConfigError


def _ring(tmp_path: Path, text: str) -> KeyRing:
    path = tmp_path / "keys"
    path.write_text(text)
    return KeyRing.load([], path)


def test_yaml_keys_carry_groups_and_plain_keys_none(tmp_path: Path) -> None:
    ring = _ring(
        tmp_path,
        "keys:\n"
        f"  - name: alice\n    key: {hash_key('a')}\n    groups: [team-a, team-a, ops]\n"
        f"  - name: bob\n    key: {hash_key('b')}\n",
    )
    by_name = {k.name: k for k in ring.keys}
    assert by_name["alice"].groups == ("team-a", "ops")  # duplicates dropped, order kept
    assert by_name["bob"].groups == ()
    plain = _ring(tmp_path, "sk-plain-key label\n")
    assert [k.groups for k in plain.keys] == [()]


def test_a_bad_group_name_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"keys\[0\]\.groups"):
        _ring(tmp_path, f"keys:\n  - name: a\n    key: {hash_key('a')}\n    groups: ['a b']\n")


def _entry(key: str, groups: list[str], requests: int, tokens: int) -> dict[str, object]:
    period = {
        "requests": requests,
        "prompt_tokens": tokens,
        "completion_tokens": 1,
        "total_tokens": tokens + 1,
    }
    return {"key": key, "groups": groups, "today": period, "month": dict(period)}


def test_usage_is_summed_per_group() -> None:
    groups = describe_groups(
        [
            _entry("alice", ["team-a"], 2, 10),
            _entry("carol", ["team-a", "team-b"], 1, 5),
            _entry("dave", [], 7, 70),
        ]
    )
    assert [g["group"] for g in groups] == ["team-a", "team-b"]
    team_a = groups[0]
    assert team_a["keys"] == ["alice", "carol"]
    assert team_a["today"] == {
        "requests": 3,
        "prompt_tokens": 15,
        "completion_tokens": 2,
        "total_tokens": 17,
    }
    assert groups[1]["month"]["requests"] == 1


def test_audit_line_names_sources_never_text(caplog: pytest.LogCaptureFixture) -> None:
    ring = KeyRing.load([], None)
    assert ring.keys == ()
    sources = [
        {
            "source": "payments",
            "path": "runbooks/refunds.md",
            "start_line": 3,
            "end_line": 9,
            "_excerpt": "SECRET excerpt text",
            "snippet": "SECRET snippet",
            "title": "Refunds",
        }
    ]
    with caplog.at_level(logging.INFO, logger="archon.audit"):
        audit.answered("chat", None, 200, "used", sources)
    (record,) = caplog.records
    line = json.loads(record.getMessage())
    assert line["sources"] == [
        {"source": "payments", "path": "runbooks/refunds.md", "start_line": 3, "end_line": 9}
    ]
    assert line["key"] is None and line["groups"] == [] and line["rag"] == "used"
    assert "SECRET" not in record.getMessage()
