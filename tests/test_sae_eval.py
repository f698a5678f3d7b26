"""cv.evaluate_dictionaries on a synthetic network with planted attribute directions: block 0 writes
h = d_a[a] + d_b[b] + d_c[c] + 0.5·d_z[z] (orthonormal planted directions, z a nuisance input), block 1 has
one ReLU unit per (a, b, c) combination reading the planted coordinates, block 2 gives that unit's class
(a + b + c) % 3 a logit of 5. Every attribute changes the answer, the mean ablation removes it."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import causalvar as cv
from causalvar.sae_eval import DictionaryError, DictionaryResults
from featurizers import PCA, SAE, DAS, Neurons, Subspace, SupervisedDictionary
from featurizers.testing import check_featurizer

D = 16
SIZES = {"a": 3, "b": 3, "c": 2}
ATTRS = list(SIZES)


def _planted():
    """Orthonormal directions ``[D, 12]``: 8 for the attribute values (a, b, c in order), 4 for z."""
    g = torch.Generator().manual_seed(0)
    return torch.linalg.qr(torch.randn(D, 12, generator=g)).Q


Q = _planted()
ATOMS = Q[:, :8]  # the attribute-value directions, as columns


def _net() -> nn.Sequential:
    embed = nn.Linear(12, D, bias=False)
    embed.weight.data = torch.cat([ATOMS, 0.5 * Q[:, 8:]], 1)  # one-hot inputs -> planted directions
    combos = list(itertools.product(range(3), range(3), range(2)))
    units = nn.Linear(D, len(combos))
    offsets = [0, 3, 6]
    for j, combo in enumerate(combos):
        units.weight.data[j] = sum(ATOMS[:, o + v] for o, v in zip(offsets, combo))
        units.bias.data[j] = -2.0
    out = nn.Linear(len(combos), 3, bias=False)
    out.weight.data.zero_()
    for j, (a, b, c) in enumerate(combos):
        out.weight.data[(a + b + c) % 3, j] = 5.0
    return nn.Sequential(embed, nn.Sequential(units, nn.ReLU()), out)


def _task() -> cv.Task:
    cm = cv.CausalModel(inputs={"a": range(3), "b": range(3), "c": range(2), "z": range(4)},
                        mechanisms={"out": lambda a, b, c: (a + b + c) % 3})
    hot = lambda s: torch.cat([torch.eye(3)[s["a"]], torch.eye(3)[s["b"]], torch.eye(2)[s["c"]], torch.eye(4)[s["z"]]])
    return cv.Task(cm, encode=hot, name="planted")


NET, TASK = _net(), _task()
SITE = cv.Site(0)
RUN = dict(attributes=ATTRS, n_fit=300, n_test=200, edit_k=(1, 2, 4), seed=0, progress=False)


def _value(ev, dictionary, attribute, test):
    t = ev.table
    sel = t[(t["dictionary"] == dictionary) & (t["test"] == test)
            & ((t["attribute"] == attribute) if attribute else t["attribute"].isna())]
    assert len(sel) == 1, (dictionary, attribute, test, sel)
    return sel.iloc[0]


def test_the_planted_network_answers_and_every_attribute_matters():
    assert cv.task_accuracy(NET, TASK, n=200) == 1.0


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The supervised dictionary, the planted directions as a fixed dictionary and as a pretrained SAE
    written in sae-lens's format, neurons, PCA and an SAE trained here by sae-lens."""
    from sae_lens import StandardSAE, StandardSAEConfig

    lens = StandardSAE(StandardSAEConfig(d_in=D, d_sae=8))
    with torch.no_grad():
        lens.W_dec.copy_(ATOMS.T)
        lens.W_enc.copy_(ATOMS)
        lens.b_enc.zero_(), lens.b_dec.zero_()
    path = tmp_path_factory.mktemp("sae") / "planted"
    lens.save_model(path)
    dictionaries = {"supervised": SupervisedDictionary(), "supervised(mean)": SupervisedDictionary(method="mean"),
                    "planted": Subspace.from_matrix(ATOMS), "sae(disk)": SAE(path=str(path)), "neurons": Neurons(),
                    "pca": PCA(), "sae": SAE(k=3, d_sae=16, train_tokens=12_800, batch_size=64)}
    return cv.evaluate_dictionaries(NET, TASK, SITE, dictionaries=dictionaries, **RUN)


def test_supervised_dictionary_recovers_the_planted_directions(planted):
    assert _value(planted, "supervised", None, "sufficiency")["value"] == pytest.approx(1.0, abs=1e-4)
    assert _value(planted, "supervised", None, "necessity")["value"] == pytest.approx(1.0, abs=1e-4)
    # mean differences count twice what the attributes share, here the chance correlation of 300 draws;
    # least squares does not
    assert _value(planted, "supervised(mean)", None, "sufficiency")["value"] < 0.99
    for name in ("supervised", "supervised(mean)"):
        for a in ATTRS:
            row = _value(planted, name, a, "edit_accuracy@2")
            assert row["value"] == 1.0 and row["n"] == 200 and row["baseline"] == 0.0  # no edit never agrees
            assert row["edit"] == "supervised"
            assert _value(planted, name, a, "f1")["value"] == 1.0  # its code is the attribute indicator
    fitted = planted.featurizers[("all", "supervised", 0, None)]
    # on the planted directions, the edit directions u_{a,v'} − u_{a,v} are the planted ones (off them they
    # pick up z's chance correlation with a)
    u = fitted.atoms[fitted.atoms_of("a")]
    torch.testing.assert_close((u[1] - u[0]) @ ATOMS, torch.eye(8)[1] - torch.eye(8)[0], atol=1e-4, rtol=0)


def test_greedy_edit_over_the_planted_directions_matches_the_supervised_edit(planted):
    for a in ATTRS:
        assert _value(planted, "planted", a, "edit_accuracy@2")["value"] == 1.0
        one = _value(planted, "planted", a, "edit_accuracy@1")["value"]
        assert one < 1.0  # removing the old value without adding the new one is not the edit
        assert _value(planted, "planted", a, "edit_magnitude@2")["value"] == pytest.approx(1 / 3, abs=1e-4)
        assert _value(planted, "sae(disk)", a, "edit_accuracy@2")["value"] == 1.0
        assert _value(planted, "neurons", a, "edit_accuracy@2")["value"] < 1.0  # no two neurons make the edit


def test_f1_is_one_for_a_feature_equal_to_an_attribute_indicator(planted):
    best = planted.best_features
    for name in ("planted", "sae(disk)"):
        for a in ATTRS:
            assert _value(planted, name, a, "f1")["value"] == 1.0
            assert _value(planted, name, a, "occluded")["value"] == 0.0
        rows = best[(best["dictionary"] == name) & (best["attribute"] == "a")]
        assert rows["feature"].tolist() == [0, 1, 2] and (rows["precision"] == 1).all()


def test_an_sae_trained_by_sae_lens_is_scored_by_the_same_code(planted):
    tests = set(planted.table.loc[planted.table["dictionary"] == "sae", "test"])
    assert {"sufficiency", "necessity", "edit_accuracy@1", "edit_accuracy@4", "edit_magnitude@4", "f1",
            "over_split"} <= tests
    for a in ATTRS:
        row = _value(planted, "sae", a, "edit_accuracy@4")
        assert 0.0 <= row["ci_low"] <= row["value"] <= row["ci_high"] <= 1.0
    # the real patch takes the answer's lead of 5 away (to 0, or to -5 where r' is the new answer)
    assert 1.0 <= _value(planted, "patch", "a", "effect")["value"] <= 2.0


def test_complete_bases_reconstruct_exactly(planted):
    for name in ("neurons", "pca"):
        assert _value(planted, name, None, "sufficiency")["value"] == pytest.approx(1.0, abs=1e-4)
        assert _value(planted, name, None, "necessity")["value"] == pytest.approx(1.0, abs=1e-4)


def test_results_save_and_figure(planted, tmp_path):
    planted.figure(tmp_path / "fig.png")
    out = planted.save(tmp_path / "run")
    assert (tmp_path / "fig.png").stat().st_size > 0
    assert {"results.json", "results.csv", "best_features.json"} <= {p.name for p in out.iterdir()}
    back = DictionaryResults.load(out)
    assert back.table.equals(planted.table) and back.best_features.equals(planted.best_features)
    h = torch.randn(5, D)
    for key in (("all", "supervised", 0, None), ("all", "sae", 0, None)):
        torch.testing.assert_close(back.featurizers[key].encode(h)[0], planted.featurizers[key].encode(h)[0])
    assert list(planted.table.columns[:8]) == DictionaryResults().columns


def test_das_is_trained_for_each_attribute_and_edits_by_its_interchange():
    ev = cv.evaluate_dictionaries(NET, TASK, SITE, dictionaries=[DAS(dim=2)], epochs=3, lr=5e-2,
                                  train_batch_size=50, **{**RUN, "edit_k": 2})
    for a in ATTRS:
        row = _value(ev, "das(k=2)", a, "edit_accuracy@2")
        assert row["edit"] == "interchange" and row["value"] >= 0.5
    assert ("a", "das(k=2)", 0, None) in ev.featurizers


def test_supervised_dictionary_of_several_attributes_conforms_and_codes():
    check_featurizer(SupervisedDictionary())
    check_featurizer(SupervisedDictionary(method="mean"))
    h = NET[0](TASK.encode(TASK.causal_model.sample(100)).inputs["x"])
    vals = {"a": [0, 1, 2, 0] * 25, "c": [0, 1] * 50}
    sd = SupervisedDictionary().fit_activations(h, vals)
    assert sd.attribute_names == ["a", "c"] and sd.atoms_of("c") == [3, 4]
    assert sd.code({"a": [2], "c": [1]}).tolist() == [[0, 0, 1, 0, 1]]
    with pytest.raises(ValueError, match="no atom"):
        sd.code({"a": [5], "c": [0]})


def test_bad_input_is_refused_in_the_users_terms():
    good = dict(dictionaries=[Neurons()], n_fit=20, n_test=10, progress=False)
    with pytest.raises(DictionaryError, match="unknown attribute 'd'"):
        cv.evaluate_dictionaries(NET, TASK, SITE, attributes=["a", "d"], **good)
    with pytest.raises(DictionaryError, match="causal model's output"):
        cv.evaluate_dictionaries(NET, TASK, SITE, attributes=["out"], **good)
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        cv.evaluate_dictionaries(NET, TASK, cv.Site(7), attributes=["a"], **good)
    with pytest.raises(DictionaryError, match="is a class"):
        cv.evaluate_dictionaries(NET, TASK, SITE, ["a"], [SAE], 20, 10, progress=False)
    with pytest.raises(DictionaryError, match="distinct names"):
        cv.evaluate_dictionaries(NET, TASK, SITE, ["a"], [Neurons(), Neurons()], 20, 10, progress=False)
    with pytest.raises(DictionaryError, match="size 16"):
        cv.evaluate_dictionaries(NET, TASK, SITE, ["a"], [PCA().fit_activations(torch.randn(50, 8))], 20, 10,
                                 progress=False)
    with pytest.raises(DictionaryError, match="never on the n_fit=2 fit prompts"):
        cv.evaluate_dictionaries(NET, TASK, SITE, ["a"], [SupervisedDictionary()], 2, 10, progress=False)
    fitted_on_a = SupervisedDictionary().fit_activations(torch.randn(30, D), {"a": [0, 1, 2] * 10})
    with pytest.raises(DictionaryError, match="has no attribute 'b'"):
        cv.evaluate_dictionaries(NET, TASK, SITE, ["a", "b"], [fitted_on_a], 20, 10, progress=False)
    with pytest.raises(DictionaryError, match="edit_k"):
        cv.evaluate_dictionaries(NET, TASK, SITE, ["a"], [Neurons()], 20, 10, edit_k=0, progress=False)
    import copy

    odd = copy.copy(TASK)
    odd.edits, odd.contrast = {"a": lambda s, rng: None}, "nothing"
    with pytest.raises(DictionaryError, match="contrast 'nothing' is not a variable"):
        cv.evaluate_dictionaries(NET, odd, SITE, ["a"], [Neurons()], 20, 10, progress=False)
    with pytest.raises(DictionaryError, match="edit generator of attribute 'a' returned None"):
        cv.evaluate_dictionaries(NET, odd, SITE, ["a"], [Neurons()], 20, 10, contrast="c", progress=False)
    with pytest.raises(DictionaryError, match="also changes"):
        cv.evaluate_dictionaries(NET, TASK, SITE, ["a", "b"], [Neurons()], 20, 10, progress=False,
                                 edits={"a": lambda s, rng: {**s, "a": (s["a"] + 1) % 3, "b": (s["b"] + 1) % 3}})


def test_generic_activations_are_the_models_own_text_at_every_token(tokenizer):
    from conftest import make_lm

    from causalvar.sae_eval import generic_activations

    lm = cv.HFModel(make_lm("gpt2", len(tokenizer)), tokenizer)
    acts = generic_activations(lm, 1, n_prompts=6, n_tokens=8, seed=0, batch_size=4)
    assert acts.shape == (6 * 7, 32) and torch.isfinite(acts).all()
    both = generic_activations(lm, [0, 1], n_prompts=6, n_tokens=8, seed=0)
    torch.testing.assert_close(both[1], acts, atol=1e-5, rtol=0)  # chunking changes nothing
    assert not torch.allclose(both[0], both[1])
    with pytest.raises(DictionaryError, match="language model"):
        generic_activations(NET, 0)


def test_the_same_seed_gives_the_same_table():
    run = lambda: cv.evaluate_dictionaries(NET, TASK, SITE, ["a", "c"], [SupervisedDictionary(), PCA()], 60, 40,
                                           edit_k=(1, 3), seed=3, progress=False).table
    first, second = run(), run()
    # 2 dictionaries x (sufficiency, necessity); 2 patch effects; per attribute the supervised edit's 3 rows
    # (accuracy, LD share, magnitude) and PCA's at 2 k; per dictionary and attribute 4 interpretability rows
    assert first.equals(second) and len(first) == 2 * 2 + 2 + 2 * (3 + 2 * 3) + 2 * 2 * 4
