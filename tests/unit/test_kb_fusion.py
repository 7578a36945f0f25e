"""Fusion arithmetic: weighted reciprocal rank, min-max weighting, document lift."""

from __future__ import annotations

import pytest

from archon.kb.fusion import FusionParams, by_document, fuse

DENSE = [("a", 0.9), ("b", 0.8), ("c", 0.1)]
LEXICAL = [("c", 12.0), ("a", 3.0)]


def test_equal_weights_are_textbook_rrf() -> None:
    fused = dict(fuse([DENSE, LEXICAL], FusionParams(rrf_k=60)))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["b"] == pytest.approx(1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)


def test_rrf_weights_and_k_change_the_order() -> None:
    lexical_first = fuse([DENSE, LEXICAL], FusionParams(dense_weight=0.2, rrf_k=1))
    dense_first = fuse([DENSE, LEXICAL], FusionParams(dense_weight=0.8, rrf_k=1))
    assert lexical_first[0][0] == "c"
    assert dense_first[0][0] == "a"


def test_weighted_fusion_normalises_each_list() -> None:
    fused = dict(fuse([DENSE, LEXICAL], FusionParams(method="weighted", dense_weight=0.7)))
    assert fused["a"] == pytest.approx(0.7 * 1.0 + 0.3 * 0.0)
    assert fused["c"] == pytest.approx(0.7 * 0.0 + 0.3 * 1.0)
    assert fused["b"] == pytest.approx(0.7 * (0.8 - 0.1) / 0.8)


def test_document_weight_lifts_files_that_match_twice() -> None:
    fused = [("x1", 1.0), ("y1", 0.9), ("y2", 0.8)]
    files = {"x1": "x", "y1": "y", "y2": "y"}
    assert by_document(fused, files.__getitem__, 0.0) == fused
    lifted = by_document(fused, files.__getitem__, 0.5)
    assert [i for i, _ in lifted] == ["y1", "y2", "x1"]
    assert dict(lifted)["y1"] == pytest.approx(0.9 + 0.5 * 0.8)


def test_depth_is_top_k_times_candidates() -> None:
    assert FusionParams(candidates=3).depth(5) == 15
