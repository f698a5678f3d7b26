"""The HTML report of a run folder: one self-contained page (nothing fetched when viewed) holding every row
of every results folder, with the figures embedded and the grids' numbers on hover."""
from __future__ import annotations

import html
import re

import pytest

import causalvar as cv
from causalvar.cli import main
from causalvar.report import write_report
from featurizers import DAS, Neurons

from conftest import make_lm, make_tokenizer, prompt_task


@pytest.fixture(scope="module")
def run(tmp_path_factory, equality):
    """A run folder with a localization (equality MLP, saved with its heatmap) and an activation patching
    (a tiny GPT-2) side by side."""
    folder = tmp_path_factory.mktemp("run")
    task, net = equality
    res = cv.localize(net, task, ["left", "right"], [Neurons(), DAS(dim=4)], layers=[0, 1], n_train=200, n_test=100,
                      epochs=2, seed=0, progress=False, out=folder / "localize")
    res.heatmap(folder / "localize" / "heatmap.png")
    tok = make_tokenizer()
    lm = cv.HFModel(make_lm("gpt2", len(tok)), tok)
    pt = cv.patch(lm, prompt_task(lm), "io", layers=[0, 2], positions=["io", "last"], n=6, progress=False)
    pt.save(folder / "patch")
    pt.heatmap(folder / "patch" / "heatmap.png")
    return folder, {"localize": res, "patch": pt}


def test_the_report_is_self_contained_and_holds_every_cell(run, capsys):
    folder, results = run
    assert main(["report", str(folder)]) == 0 and "report.html" in capsys.readouterr().out
    page = (folder / "report.html").read_text()
    assert not re.search(r"(https?:)?//[\w.-]+\.\w+/", page), "an external address"
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=['\"](?!data:)", page), "a resource not embedded"
    assert page.count("src='data:image/png;base64,") == 2  # both heatmaps
    for name, res in results.items():
        rows = re.search(rf"{name} — [^<]*</h2>.*?Every row \((\d+)\)", page, re.S)
        assert rows and int(rows.group(1)) == len(res.rows)
        for row in res.table.itertuples(index=False):  # each row's leading cells, in order, in the table
            cells = "".join(f"<td>{html.escape(cv.report._text(v))}</td>" for v in list(row)[:5])
            assert cells in page, cells
    assert "title='layer 1, None: iia=" in page and "Best cell per variable" in page  # hover numbers, the best
    assert "activation patching" in page and "every pair is used" in page  # the patching section, its data report


def test_a_folder_without_results_is_refused(tmp_path):
    with pytest.raises(ValueError, match="holds no results"):
        write_report(tmp_path)
