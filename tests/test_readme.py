"""The README's Python examples run as written (those that load SmolLM2 in the slow suite)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

BLOCKS = re.findall(r"```python\n(.*?)```", (Path(__file__).parents[1] / "README.md").read_text(), re.S)
FAST = [b for b in BLOCKS if "load_model" not in b]
SLOW = [b for b in BLOCKS if "load_model" in b]


def _run(code: str, tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)  # examples write under runs/
    namespace: dict = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def test_readme_has_examples():
    assert len(FAST) >= 3 and len(SLOW) >= 2


@pytest.mark.parametrize("i", range(len(FAST)))
def test_readme_example(i, tmp_path, monkeypatch):
    ns = _run(FAST[i], tmp_path, monkeypatch)
    if "res" in ns:
        table = ns["res"].table
        assert len(table) > 0 and table["iia"].between(0, 1).all()


@pytest.mark.slow
def test_readme_language_model_examples(tmp_path, monkeypatch, smollm):
    import causalvar as cv

    monkeypatch.setattr(cv, "load_model", lambda name: smollm)  # the session's copy: load SmolLM2 once
    for code in SLOW:
        ns = _run("from featurizers import Neurons\n" + code, tmp_path, monkeypatch)
        res = ns["res"]
        assert len(res.table) > 0 and (res.table["n"] > 0).all() and (res.table[res.metric] >= 0).all()
        assert res.metric != "iia" or res.table["iia"].between(0, 1).all()
