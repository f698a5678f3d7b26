"""Command-line parsing and the command's errors: one line each, before the model loads where they
can be (the commands themselves run in the slow SmolLM2 tests)."""
from __future__ import annotations

import pytest
from conftest import make_lm, make_tokenizer

from causalvar.cli import main, parse_featurizer, parse_featurizers, parse_layers


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


def _error(capsys, argv: list[str]) -> tuple[int, str, str]:
    """Run the command in-process; its exit status, its error (one line, the last on stderr: above it
    only a model's loading bar; no traceback) and its stdout."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own checks
        code = e.code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in err and err.count("causalvar: error: ") == 1, err
    last = err.splitlines()[-1]
    assert last.startswith("causalvar: error: "), err
    return code, last, captured.out


LOCALIZE = ["localize", "--task", "ioi", "--out", "unused"]


@pytest.mark.parametrize("args, expected", [
    (["--featurizer", "das:abc"], "featurizer 'das:abc': the size after 'das:' must be a whole number >= 1, e.g. das:16"),
    (["--featurizer", "das:0"], "featurizer 'das:0': the size after 'das:' must be a whole number >= 1"),
    (["--featurizer", "neurons:abc"], "featurizer 'neurons:abc': neurons takes hidden-unit indices and ranges, "
                                      "e.g. neurons:0-63 or neurons:0-3,7"),
    (["--featurizer", "neurons:5-2"], "featurizer 'neurons:5-2': neurons takes hidden-unit indices and ranges"),
    (["--featurizer", "full,rotation"], "unknown featurizer 'rotation'; choose from ['boundless', 'das', 'dbm',"),
    (["--featurizer", "boundless:4"], "featurizer 'boundless:4': boundless takes no size; write boundless"),
    (["--featurizer", "das:4", "--n-train", "0"], "--n-train 0: das(k=4) is trained on interchange pairs; "
                                                  "give --n-train of at least 1"),
    (["--featurizer", "pca:8", "--n-train", "0"], "--n-train 0: pca(k=8) is fitted on activations"),
    (["--layers", "0:x"], "--layers '0:x': expected all, a range start:stop[:step] (e.g. 0:30:3) or a list of "
                          "block indices (e.g. 0,5,29); layers count from 0"),
    (["--layers=-1,3"], "--layers '-1,3': expected all, a range"),
    (["--layers", "0:30:0"], "--layers '0:30:0': the step of a range must be at least 1"),
    (["--positions", "s2,,last"], "--positions 's2,,last': '' is neither a token role"),
    (["--positions", "s2 last"], "--positions 's2 last': 's2 last' is neither a token role"),
])
def test_bad_arguments_fail_in_one_line_before_the_model_loads(capsys, args, expected):
    code, err, out = _error(capsys, LOCALIZE + args)
    assert code == 2 and err.startswith("causalvar: error: " + expected), err
    assert out == ""  # not even "loading ioi ..."


@pytest.mark.parametrize("args, expected", [
    (["--n-test", "0"], "argument --n-test: expected a whole number >= 1, got '0' (see causalvar localize -h)"),
    (["--n-train", "-5"], "argument --n-train: expected a whole number >= 0, got '-5'"),
    (["--epochs", "two"], "argument --epochs: expected a whole number >= 1, got 'two'"),
    (["--lr", "-1"], "argument --lr: expected a number > 0, got '-1'"),
])
def test_bad_numbers_are_argparse_errors_in_one_line(capsys, args, expected):
    code, err, _ = _error(capsys, LOCALIZE + args)
    assert code == 2 and err.startswith("causalvar: error: " + expected), err


def test_unknown_task_names_the_built_in_ones(capsys):
    code, err, _ = _error(capsys, ["localize", "--task", "iio", "--out", "unused"])
    assert code == 2
    assert err == ("causalvar: error: unknown task 'iio'; built-in tasks: "
                   "['arithmetic', 'ioi', 'ioi_logit_diff', 'mcqa', 'ravel']")


def test_unknown_model_fails_at_once_offline(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err, _ = _error(capsys, LOCALIZE[:-1] + [str(tmp_path), "--model", "no-such-org/no-such-model"])
    assert code == 1
    assert err == ("causalvar: error: could not load 'no-such-org/no-such-model': it is not an embedded model (smollm2-135m), not an "
                   "existing folder or .gguf file, and not in the Hugging Face cache; HF_HUB_OFFLINE is set, so "
                   "the hub was not asked (unset it to download the model)")


def test_missing_folder_is_no_hub_name(capsys, tmp_path):
    code, err, _ = _error(capsys, LOCALIZE[:-1] + [str(tmp_path), "--model", str(tmp_path / "no" / "model")])
    assert code == 1 and err.endswith("not an existing folder or .gguf file, and not a Hugging Face hub name (org/name)")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny random Llama (3 layers) and its tokenizer, saved as a user's local model folder."""
    folder = tmp_path_factory.mktemp("tiny")
    tokenizer = make_tokenizer()
    make_lm("llama", len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("layers, expected", [
    ("0:99", "--layers 0:99: {m} has 3 layers (0..2); a range stops at 3 at most, e.g. 0:3"),
    ("1,5,7", "--layers 1,5,7: {m} has 3 layers (0..2), so [5, 7] do not exist"),
    ("5:", "--layers 5:: the range selects no layer; {m} has 3 layers (0..2)"),
])
def test_layers_outside_the_model_name_its_number_of_layers(capsys, tiny_folder, tmp_path, layers, expected):
    code, err, _ = _error(capsys, LOCALIZE[:-1] + [str(tmp_path), "--model", str(tiny_folder), "--layers", layers])
    assert code == 2 and err == "causalvar: error: " + expected.format(m=tiny_folder)


def test_unknown_token_role_names_the_task_roles(capsys, tiny_folder, tmp_path):
    code, err, _ = _error(capsys, LOCALIZE[:-1] + [str(tmp_path), "--model", str(tiny_folder), "--positions", "s2,io2"])
    assert code == 2
    assert err == ("causalvar: error: --positions: ioi has no token role ['io2']; its roles are "
                   "['io', 'last', 's1', 's2'], or give token indices (ints)")


def test_run_time_errors_are_one_line_and_the_traceback_is_behind_debug(capsys, tiny_folder, tmp_path):
    argv = LOCALIZE[:-1] + [str(tmp_path), "--model", str(tiny_folder), "--variables", "output_tokn"]
    code, err, _ = _error(capsys, argv)
    assert code == 1 and err.startswith("causalvar: error: unknown variable 'output_tokn'; the causal model's "
                                        "variables are ["), err
    with pytest.raises(ValueError, match="unknown variable 'output_tokn'"):
        main(argv + ["--debug"])


def test_featurizer_lists_keep_neuron_lists_whole():
    names = [f.name for f in parse_featurizers("full,neurons:0-3,7,das:16")]
    assert names == ["full_vector", "neurons[0-3,7]", "das(k=16)"]


PATCH = ["patch", "--task", "ioi", "--out", "unused"]


@pytest.mark.parametrize("args, expected", [
    (["--corruption", "str,noise"], "--corruption 'str,noise': ['noise']; choose from str, gn (comma-separated)"),
    (["--component", "resid,head"], "--component 'resid,head': ['head']; choose from resid, attn, mlp, heads"),
    (["--metric", "logitdiff"], "--metric 'logitdiff': ['logitdiff']; choose from logit_diff, prob, kl, iia"),
    (["--method", "fast"], "--method 'fast': ['fast']; choose from exact, attribution"),
    (["--layers", "x"], "--layers 'x': expected all, a range"),
])
def test_bad_patch_arguments_fail_in_one_line_before_the_model_loads(capsys, args, expected):
    code, err, out = _error(capsys, PATCH + args)
    assert code == 2 and err.startswith("causalvar: error: " + expected), err
    assert out == ""


def test_patch_writes_a_folder_per_setting_and_str_beside_gn(tmp_path, capsys):
    """``causalvar patch`` on a local tiny Llama with one-token IOI names: STR and GN for the residual stream
    and the heads, each a results folder, the last block's residual at the read position restoring the
    clean run exactly, and the side-by-side figure of each component."""
    import causalvar as cv
    from test_ioi_logit_diff import ioi_tokenizer

    folder, out = tmp_path / "model", tmp_path / "runs"
    tokenizer = ioi_tokenizer()
    make_lm("llama", len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert main(PATCH[:-1] + [str(out), "--model", str(folder), "--corruption", "str,gn", "--component",
                              "resid,heads", "--positions", "io,last", "--n", "8"]) == 0
    assert "STR · logit_diff_norm · denoise · resid · every pair" in capsys.readouterr().out
    for setting in ("str_resid", "gn_resid", "str_heads", "gn_heads"):
        res = cv.patching.PatchingResults.load(out / setting)
        assert (out / setting / "heatmap.png").exists() and set(res.table["n"]) == {8}
        if setting.endswith("resid"):
            last = res.table[(res.table["layer"] == 2) & (res.table["position"] == "last")]
            assert float(last["logit_diff_norm"].iloc[0]) == pytest.approx(1.0, abs=1e-5)
        else:
            assert sorted(res.table["head"]) == sorted([0, 1, 2, 3] * 3)
    assert (out / "str_vs_gn_resid.png").exists() and (out / "str_vs_gn_heads.png").exists()


@pytest.mark.parametrize("args, expected", [
    (["--site", "18"], "--site '18': expected LAYER:POSITION, e.g. 18:s2 or 24:last"),
    (["--site", "18:s2", "--dictionaries", "supervised,sae"], "dictionary 'sae': give the SAE's number of latents"),
    (["--site", "18:s2", "--dictionaries", "rotation"], "unknown featurizer 'rotation'"),
    (["--site", "18:s2", "--edit-k", "2,x"], "--edit-k '2,x': expected whole numbers"),
])
def test_bad_dictionaries_arguments_fail_in_one_line_before_the_model_loads(capsys, args, expected):
    code, err, out = _error(capsys, ["dictionaries", "--task", "ioi", "--out", "unused"] + args)
    assert code == 2 and err.startswith("causalvar: error: " + expected), err
    assert out == ""


def test_dictionaries_writes_the_comparison_of_a_site(tmp_path, capsys):
    import causalvar as cv
    from test_ioi_logit_diff import ioi_tokenizer

    folder, out = tmp_path / "model", tmp_path / "dict"
    tokenizer = ioi_tokenizer()
    make_lm("llama", len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert main(["dictionaries", "--task", "ioi", "--model", str(folder), "--site", "1:s2", "--dictionaries",
                 "supervised,neurons,pca:8", "--n-fit", "400", "--n-test", "20", "--edit-k", "2", "--out", str(out)]) == 0
    res = cv.sae_eval.DictionaryResults.load(out)
    assert {"supervised", "full_vector", "pca(k=8)"} <= set(res.table["dictionary"])
    assert (out / "dictionaries.png").exists() and "sufficiency" in capsys.readouterr().out


def test_validate_writes_the_epsilon_table_of_the_2sat_case_study(tmp_path, capsys):
    import causalvar as cv

    out = tmp_path / "v"
    assert main(["validate", "--task", "two_sat", "--n", "200", "--n-fit", "400", "--out", str(out)]) == 0
    rep = cv.ValidationResults.load(out)
    assert len(rep.table) == 12 and set(rep.table["n"]) == {200} and (out / "epsilon.png").exists()
    assert "prefix_replaceability" in capsys.readouterr().out
    code, err, _ = _error(capsys, ["validate", "--task", "ioi", "--out", str(out)])
    assert code == 2 and "built-in interpretation for the task 'two_sat' only" in err
