"""Command-line parsing (the commands themselves run in the slow SmolLM2 tests)."""
from __future__ import annotations

import pytest

from causalvar.cli import parse_featurizer, parse_layers


def test_parse_layers():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("0:30:3", 30) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29]
    assert parse_layers("2:4", 30) == [2, 3]
    assert parse_layers("0,5,29", 30) == [0, 5, 29]


def test_parse_featurizer():
    assert parse_featurizer("das:16").name == "das(k=16)"
    assert parse_featurizer("neurons:0-3,7").dims == [0, 1, 2, 3, 7]
    assert parse_featurizer("full").name == "full_vector"
    assert parse_featurizer("pca:8").name == "pca(k=8)"
    assert parse_featurizer("dbm+pca").name.startswith("dbm(")
    with pytest.raises(SystemExit, match="unknown featurizer 'rotation'"):
        parse_featurizer("rotation")
