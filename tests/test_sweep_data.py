"""The data a sweep scores: each row's no-effect baseline, pairs drawn until enough survive the filter,
distinct pairs, the network's own accuracy, and the evaluation batch apart from the training batch."""
from __future__ import annotations

import importlib
import warnings

import pandas as pd
import pytest
import torch
from torch import nn

import causalvar as cv
from featurizers import DAS, DBM, Neurons

from conftest import make_lm
from test_ioi_logit_diff import ioi_tokenizer

KW = dict(n_train=0, progress=False)


def test_baseline_is_the_score_with_nothing_interchanged(equality):
    task, mlp = equality
    data = cv.CounterfactualDataset.generate(task.causal_model, "left", 300, seed=4)
    res = cv.localize(mlp, task, "left", [Neurons(dims=[]), Neurons(dims=range(32))], layers=[0, 1, 2], n_test=300,
                      data=data, filter_correct=False, **KW)
    with torch.no_grad():
        said = task.predict(mlp(task.encode(data.bases).inputs["x"]))
    by_hand = sum(s == label for s, label in zip(said, data.labels)) / len(data)
    t = res.table
    assert t["baseline"].tolist() == [by_hand] * 6  # the same pairs in every cell
    nothing = t[t["featurizer"] == "neurons[]"]
    assert nothing["iia"].tolist() == nothing["baseline"].tolist()  # an interchange of no feature is no effect
    assert (t[t["featurizer"] != "neurons[]"]["iia"] != by_hand).any()


def test_baseline_of_a_real_valued_metric():
    ioi = importlib.import_module("causalvar.tasks.ioi")
    tok = ioi_tokenizer()
    lm = cv.HFModel(make_lm("llama", len(tok)), tok)
    task = ioi.ioi_logit_diff(lm, coefficients=(2.0, 1.0, 1.0))
    res = cv.localize(lm, task, "output_token", [Neurons(dims=[]), Neurons()], layers=[1], positions=["last"],
                      n_test=16, filter_correct=False, **KW)
    t = res.table
    nothing = t[t["featurizer"] == "neurons[]"]
    assert nothing["mse"].tolist() == pytest.approx(nothing["baseline"].tolist(), rel=1e-4)
    assert (t["baseline"] > 0).all()


def test_pairs_are_drawn_until_enough_survive_the_filter():
    task = cv.tasks.hierarchical_equality()
    weak = cv.tasks.train_mlp(task, hidden=(16,), steps=400, n=4000)  # wrong on a third of the inputs
    # the first draw (20 + 20 // 4 + 8 = 33 pairs, seed 1) leaves only 19: a second round, sized by the share kept
    runs = [cv.localize(weak, task, "left", Neurons(dims=range(4)), layers=[0], n_test=20, seed=1, **KW)
            for _ in range(2)]
    assert runs[0].table["n"].item() == 20
    report = runs[0].meta["data"]["left/random"]
    assert "round 1: 19 of 33 candidates survived the filter, 20 are needed; round 2 draws n=" in "\n".join(report)
    pd.testing.assert_frame_equal(runs[0].table, runs[1].table)  # seeded: the same rounds, the same table


def _always_true(n_values: int):
    """A task whose output is True for 1 in ``n_values`` inputs, and a network that always says True."""
    cm = cv.CausalModel(inputs={"w": range(n_values), "x": range(n_values), "unread": range(100)},
                        mechanisms={"left": lambda w, x: w == x, "out": lambda left: left})
    task = cv.Task(cm, encode=lambda s: [float(s["w"]), float(s["x"])], decode=lambda logits: logits.argmax(-1).bool())
    net = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([0.0, 1.0]))
    return task, net


def test_drawing_stops_at_ten_times_the_request_with_the_report():
    task, net = _always_true(2)  # a quarter of the pairs survive: found in a second round
    with pytest.warns(cv.NoEffectWarning, match="variable 'left'"):  # kept: out is True on base and source
        assert cv.localize(net, task, "left", Neurons(), layers=[0], n_test=40, **KW).table["n"].item() == 40
    task, net = _always_true(4)  # one pair in 16 survives: 400 candidates are too few for 40
    with pytest.raises(cv.TooFewPairsError, match=r"(?s)only \d+ pairs of variable 'left' are left after filtering; see the "
                                                  r"report:\n.*round 1: \d+ of 58 candidates survived.*set 'random' "
                                                  r"was drawn in rounds up to 10x the 40 pairs requested \(400 "
                                                  r"candidates\)"):
        cv.localize(net, task, "left", Neurons(), layers=[0], n_test=40, **KW)


def test_task_accuracy_is_public(equality):
    task, mlp = equality
    assert cv.task_accuracy(mlp, task) > 0.95
    weak = cv.tasks.train_mlp(task, hidden=(16,), steps=400, n=4000)
    assert cv.task_accuracy(weak, task, n=2000, seed=1) == pytest.approx(weak.accuracy, abs=0.05)
    with pytest.raises(ValueError, match="n must be a positive int"):
        cv.task_accuracy(mlp, task, n=0)


def _small_space():
    """27 input settings, so 729 distinct (base, source) pairs; an untrained network (no filter)."""
    cm = cv.CausalModel(inputs={v: range(3) for v in "wxy"},
                        mechanisms={"left": lambda w, x: w == x, "out": lambda left, y: left or y == 0})
    task = cv.Task(cm, encode=lambda s: [float(s[v] == k) for v in "wxy" for k in range(3)])
    torch.manual_seed(0)
    return task, cv.tasks.mlp(9, [8], 2)


def test_repeated_pairs_are_counted_and_warned():
    task, net = _small_space()
    with pytest.warns(cv.DuplicatePairsWarning, match=r"the 2000 test pairs of variable 'left' \(set 'random'\) hold "
                                                      r"only \d+ distinct \(base, source\) pairs.*read n_distinct"):
        res = cv.localize(net, task, "left", Neurons(), layers=[0], n_test=2000, filter_correct=False, **KW)
    by_hand = cv.CounterfactualDataset.generate(task.causal_model, "left", 2000, seed=0).n_distinct()
    assert res.table["n_distinct"].item() == by_hand <= 729
    assert f"test pairs: 2000, of which {by_hand} distinct (base, source) pairs" in res.meta["data"]["left/random"]


def test_a_large_space_has_distinct_pairs_and_no_warning(equality):
    task, mlp = equality
    with warnings.catch_warnings():
        warnings.simplefilter("error", cv.DuplicatePairsWarning)
        res = cv.localize(mlp, task, "left", Neurons(), layers=[0], n_test=200, **KW)
    assert res.table["n_distinct"].item() >= 198


def test_the_evaluation_batch_changes_no_number(equality):
    task, mlp = equality
    kw = dict(layers=[0, 1], n_train=300, n_test=100, epochs=2, seed=3, train_batch_size=32, progress=False)
    feats = lambda: [DAS(dim=4), DBM(Neurons())]
    small = cv.localize(mlp, task, "left", feats(), batch_size=16, **kw)
    large = cv.localize(mlp, task, "left", feats(), batch_size=500, **kw)
    pd.testing.assert_frame_equal(small.table, large.table)
    assert small.meta["train_batch_size"] == 32
    # the training batch is a setting of its own: at the default (64) the same call trains otherwise
    default = cv.localize(mlp, task, "left", feats(), batch_size=16, **{**kw, "train_batch_size": 64})
    assert not default.table["final_loss"].equals(small.table["final_loss"])


def test_fit_takes_the_training_batch_apart_from_the_evaluation_batch(equality):
    task, mlp = equality
    data = cv.CounterfactualDataset.generate(task.causal_model, "left", 400, seed=0)
    rotations = []
    for batch_size in (16, 400):
        torch.manual_seed(0)
        das = cv.fit(DAS(dim=4), mlp, task, "left", cv.Site(1), data, epochs=1, batch_size=batch_size,
                             train_batch_size=50, progress=False)
        rotations.append(das.R.detach())
    torch.testing.assert_close(rotations[0], rotations[1], atol=1e-6, rtol=0)
