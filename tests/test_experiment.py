"""Experiment files: validated before any model loads (unknown keys named with their nearest valid
spelling, wrong values with what was expected), copied into the run folder, run as the command would."""
from __future__ import annotations

import pytest

import causalvar as cv
from causalvar.cli import main
from causalvar.experiment import ExperimentError, load

from conftest import make_lm


def write(tmp_path, text: str):
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, expected", [
    ("analysis: localize\ntask: ioi\nout: runs/x\nfeaturizers: das:4\n",
     "unknown key 'featurizers'; did you mean 'featurizer'?"),
    ("analysis: patch\ntask: ioi\nout: runs/x\ncorruptions: [str, gn]\n",
     "unknown key 'corruptions'; did you mean 'corruption'?"),
    ("analysis: patch\ntask: ioi\nout: runs/x\nn: many\n", "key 'n': Input should be a valid integer"),
    ("analysis: patch\ntask: ioi\nout: runs/x\ncorruption: [str, noise]\n", "key 'corruption.list[literal['str','gn']].1'"),
    ("analysis: patch\ntask: ioi\n", "missing key 'out'"),
    ("analysis: dictionaries\ntask: ioi\nout: runs/x\nsite: 18:s2\nlayers: all\n", "unknown key 'layers'"),
    ("analysis: dictionaries\ntask: ioi\nout: runs/x\n", "missing key 'site'"),
    ("analysis: validate\nout: runs/x\norder: sorted\n", "key 'order': Input should be 'ignored' or 'required'"),
    ("analysis: patching\ntask: ioi\nout: runs/x\n", "analysis must be one of ['dictionaries', 'localize', 'patch', 'validate'], got 'patching' "
                                                       "(did you mean 'patch'?)"),
    ("- analysis: patch\n", "expected a mapping of keys"),
    ("analysis: patch\ntask: [ioi\n", "is not valid YAML"),
])
def test_a_bad_file_is_refused_before_any_model_loads(tmp_path, monkeypatch, capsys, text, expected):
    monkeypatch.setattr(cv, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    path = write(tmp_path, text)
    with pytest.raises(ExperimentError) as e:
        load(path)
    assert expected in str(e.value) and str(path) in str(e.value)
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]


def test_a_patch_experiment_runs_like_the_command_and_lands_in_its_folder(tmp_path):
    from test_ioi_logit_diff import ioi_tokenizer

    folder, out = tmp_path / "model", tmp_path / "runs" / "patch"
    tokenizer = ioi_tokenizer()
    make_lm("llama", len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    path = write(tmp_path, f"analysis: patch\ntask: ioi\nmodel: {folder}\nvariable: output_token\n"
                           f"corruption: [str, gn]\ncomponent: resid\nlayers: [0, 2]\npositions: [io, last]\n"
                           f"n: 8\nout: {out}\n")
    assert main(["run", str(path)]) == 0
    assert (out / "experiment.yaml").read_text() == path.read_text()
    res = cv.patching.PatchingResults.load(out / "str_resid")
    assert sorted(set(res.table["layer"])) == [0, 2] and set(res.table["n"]) == {8}
    assert (out / "gn_resid" / "heatmap.png").exists() and (out / "str_vs_gn_resid.png").exists()
