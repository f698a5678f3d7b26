"""The README's Python examples run exactly as printed (those that load SmolLM2 in the slow suite), and
each `print` in them prints what the README says it prints."""
from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

import pytest

BLOCKS = re.findall(r"```python\n(.*?)```", (Path(__file__).parents[1] / "README.md").read_text(), re.S)
FAST = [b for b in BLOCKS if "load_model" not in b]
SLOW = [b for b in BLOCKS if "load_model" in b]


def table(columns: list[str], rows: int):
    """A printed DataFrame with exactly these columns (none elided or wrapped) and ``rows`` rows, as the
    README's comment says ("12 rows")."""
    def check(out: str, shown: str) -> str | None:
        lines = out.rstrip("\n").splitlines()
        header = [i for i, line in enumerate(lines) if line.split() == columns]
        if not header:
            return f"no header {columns} in the output"
        if len(lines) - header[0] - 1 != rows:
            return f"{len(lines) - header[0] - 1} rows printed, not {rows}"
        if not re.search(rf"\b{rows} rows?\b", shown):
            return f"the README does not say {rows} rows"
    return check


def grid(columns: list[str], rows: int):
    """A printed layer × position DataFrame: a header of ``columns``, the index name's line, ``rows`` rows."""
    def check(out: str, shown: str) -> str | None:
        lines = out.rstrip("\n").splitlines()
        if not lines or lines[0].split() != columns or lines[1].split() != ["layer"]:
            return f"no grid header {columns} / layer in the output"
        if len(lines) - 2 != rows:
            return f"{len(lines) - 2} rows printed, not {rows}"
        if not re.search(rf"\b{rows} rows?\b", shown):
            return f"the README does not say {rows} rows"
    return check


def shows(text: str):
    """The output contains ``text``, which the README shows in the statement's comment."""
    def check(out: str, shown: str) -> str | None:
        if text not in shown:
            return f"the README does not show {text!r}"
        if text not in out:
            return f"{text!r} was not printed"
    return check


def lines(n: int, *words: str):
    """``n`` printed lines, each with every one of ``words``, which the README's comment names."""
    def check(out: str, shown: str) -> str | None:
        printed = out.rstrip("\n").splitlines()
        if len(printed) != n:
            return f"{len(printed)} lines printed, not {n}"
        missing = [w for w in words if not all(w in line for line in printed)]
        if missing:
            return f"lines without {missing}"
    return check


#: every statement of the README that prints (by its first line, comment stripped) -> what it must print
PRINTS = {
    'print(res.table[["variable", "featurizer", "layer", "iia", "baseline", "n"]])':
        table(["variable", "featurizer", "layer", "iia", "baseline", "n"], 8),
    "print(das.R.shape)": shows("torch.Size([64, 8])"),
    'print(res.best()[["featurizer", "layer", "iia", "baseline"]])': table(["featurizer", "layer", "iia", "baseline"], 6),
    'print(res.table[["layer", "position", "iia", "baseline", "n", "n_distinct"]])':
        table(["layer", "position", "iia", "baseline", "n", "n_distinct"], 6),
    'print(res.table[["layer", "position", "dataset", "iia", "baseline", "n"]])':
        table(["layer", "position", "dataset", "iia", "baseline", "n"], 12),
    'for name, report in res.meta["data"].items():': lines(3, "answer/", "drew", "dropped", "kept"),
    "print(res.mib_score())": table(["variable", "featurizer", "mean", "best", "best_layer", "n_layers"], 1),
    'print({k: round(fit[k], 2) for k in ("token_coeff", "position_coeff", "r2")})':
        shows("{'token_coeff': 2.13, 'position_coeff': 3.52, 'r2': 0.82}"),
    "print(st.grid().round(2))": grid(["position", "io", "s2", "last"], 8),
    'print(t[(t["attribute"] == "output_position") & t["test"].str.startswith("edit_accuracy")]':
        table(["dictionary", "test", "edit", "value", "baseline"], 5),
    "print(pd.concat(tables).to_string(index=False))": table(["step", "site", "axiom", "errors", "n", "epsilon"], 8),
    'print(res.table[["layer", "position", "dataset", "mse", "baseline", "n"]])':
        table(["layer", "position", "dataset", "mse", "baseline", "n"], 12),
}


def _statements(code: str):
    """The block's top-level statements: (code to run, its first line without the comment, the text the
    README shows for it: its lines and the comment lines right after it)."""
    source = code.splitlines()
    for stmt in ast.parse(code).body:
        end = stmt.end_lineno
        while end < len(source) and source[end].lstrip().startswith("#"):
            end += 1
        first = source[stmt.lineno - 1].split("  #")[0].strip()
        yield ast.Module([stmt], type_ignores=[]), first, "\n".join(source[stmt.lineno - 1:end])


def _run(code: str, tmp_path, monkeypatch) -> tuple[dict, list[str]]:
    """Run a README block as printed, one top-level statement after the other in one namespace, and
    check what each printing statement prints; returns the namespace and the problems found."""
    monkeypatch.chdir(tmp_path)  # examples write under runs/
    namespace: dict = {"__name__": "readme"}
    problems = []
    for stmt, first, shown in _statements(code):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(stmt, "README.md", "exec"), namespace)
        if "print(" in shown:
            check = PRINTS.get(first)
            problem = f"no expectation in PRINTS for {first!r}" if check is None else check(out.getvalue(), shown)
            if problem:
                problems.append(f"{first}: {problem}; printed:\n{out.getvalue()}")
    return namespace, problems


def test_readme_has_examples():
    assert len(FAST) >= 3 and len(SLOW) >= 2


def test_every_expected_print_is_in_the_readme():
    firsts = {first for block in BLOCKS for _, first, _ in _statements(block)}
    assert set(PRINTS) <= firsts, sorted(set(PRINTS) - firsts)


@pytest.mark.parametrize("i", range(len(FAST)))
def test_readme_example(i, tmp_path, monkeypatch):
    ns, problems = _run(FAST[i], tmp_path, monkeypatch)
    assert not problems, "\n".join(problems)
    if "res" in ns:
        table = ns["res"].table
        assert len(table) > 0 and table["iia"].between(0, 1).all()


@pytest.mark.slow
def test_readme_language_model_examples(tmp_path, monkeypatch, smollm):
    import causalvar as cv

    monkeypatch.setattr(cv, "load_model", lambda name: smollm)  # the session's copy: load SmolLM2 once
    problems = []
    for code in SLOW:
        ns, found = _run(code, tmp_path, monkeypatch)
        problems += found
        res = ns.get("res") or ns.get("st") or ns["ev"]  # localization, patching, dictionaries
        assert len(res.table) > 0 and (res.table["n"] > 0).all()
        if "res" in ns:  # patching values and dictionary tests may be negative
            assert (res.table[res.metric] >= 0).all()
            assert res.metric != "iia" or res.table["iia"].between(0, 1).all()
    assert not problems, "\n".join(problems)
