"""MIB's IOI logit-difference task: the linear model, its squared-error score and loss, and the fit
of its coefficients, on a tiny random Llama whose tokenizer knows IOI's words (fast), and on the
embedded SmolLM2-135M (slow)."""
from __future__ import annotations

import importlib
import re

import pytest
import torch

import causalvar as cv
from causalvar.metrics import Outcome
from causalvar.splits import build_splits, evaluate
from featurizers import DAS, Neurons

from conftest import make_lm

ioi = importlib.import_module("causalvar.tasks.ioi")  # the module; cv.tasks.ioi is the factory

BASE = {"name_a": "Mary", "name_b": "John", "repeat": 0, "template": 0, "place": "store", "object": "drink"}


def ioi_tokenizer():
    """A word-level tokenizer over every word of IOI's prompts (offsets supported)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from causalvar.tasks.ioi_data import NAMES, OBJECTS, PLACES, TEMPLATES

    words = {w for t in TEMPLATES for w in re.findall(r"\w+|[^\w\s]", t) if not w.startswith("{")}
    words |= set(NAMES) | set(OBJECTS) | set(PLACES) | {"A", "B", "S", "PLACE", "OBJECT"}
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[EOS]"] + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")


@pytest.fixture(scope="module")
def lm():
    tok = ioi_tokenizer()
    return cv.HFModel(make_lm("llama", len(tok)), tok)


def test_linear_model_follows_mibs_signals():
    cm = ioi.logit_diff_model(bias=1.0, token_coeff=2.0, position_coeff=3.0)
    assert cm.run(BASE)["logit_diff"] == ioi.LogitDiff("John", "Mary", 6.0)  # token +1, position +1
    both = lambda src: cm.interchange(BASE, {"output_token": src, "output_position": src})["logit_diff"].value
    # MIB's table: s1_io_flip (tok +1, pos -1), s2_io_flip (-1, -1), both flips (-1, +1)
    assert [both(g(BASE, None)) for g in ioi.LD_SETS.values()] == [1 + 2 - 3, 1 - 2 - 3, 1 - 2 + 3]
    # one variable at a time: only its own signal moves
    s2 = ioi.flip_subject(BASE, None)
    assert cm.interchange(BASE, {"output_token": s2})["logit_diff"].value == 1 - 2 + 3
    assert cm.interchange(BASE, {"output_position": s2})["logit_diff"].value == 1 + 2 - 3
    with pytest.raises(cv.CausalModelError, match="neither the prompt's IO"):
        cm.interchange(BASE, {"output_token": {**BASE, "name_a": "Sarah", "name_b": "David"}})


def test_score_and_loss_are_the_squared_error_of_the_logit_difference(lm):
    task = ioi.ioi_logit_diff(lm, coefficients=(0.5, 1.0, -2.0))
    assert (task.metric.name, task.metric.lower_is_better, task.coefficients) == ("mse", True, (0.5, 1.0, -2.0))
    data = cv.CounterfactualDataset.generate(task.causal_model, "output_position", 12, seed=0,
                                             source=ioi.flip_order, name="s1_io_flip")
    engine = cv.Engine(lm)
    logits, _ = engine.capture(task.encode(data.bases), [])
    tok = lambda name: lm.tokenizer(" " + name, add_special_tokens=False)["input_ids"][0]
    by_hand = torch.tensor([(logits[i, tok(v.io)] - logits[i, tok(v.s)] - v.value).item() ** 2
                            for i, v in enumerate(data.labels)])
    out = Outcome(task, logits, data.labels)
    torch.testing.assert_close(task.metric.score(out), by_hand)
    torch.testing.assert_close(task.metric.loss(out), by_hand.mean())
    assert all(v.value == 0.5 + 1.0 + 2.0 for v in data.labels)  # token +1, position -1


def test_self_interchange_scores_the_unintervened_network(lm):
    task = ioi.ioi_logit_diff(lm, coefficients=(1.0, 0.5, 0.5))
    data = cv.CounterfactualDataset.generate(task.causal_model, "output_token", 16, seed=0, source=ioi.same)
    engine = cv.Engine(lm)
    site = cv.Site(1, "s2")
    (split,), _ = build_splits(engine, task, data, [site], [None], filter_correct=False)
    mse, scores = evaluate(engine, split, site, Neurons().build(32))
    logits, _ = engine.capture(task.encode(data.bases), [])
    torch.testing.assert_close(scores, task.metric.score(Outcome(task, logits[split.rows], split.labels)),
                               atol=1e-4, rtol=1e-4)
    assert mse == pytest.approx(float(scores.mean()))


def test_fit_solves_mibs_two_by_two_design(lm):
    # the four sets take the signals (tok, pos) = (+,+), (+,-), (-,-), (-,+): with equal counts, least
    # squares gives bias = the mean of the four set means, and each coefficient half a contrast
    fit = ioi.fit_logit_diff(lm, cv.Site(2, "last"), n=24, filter_correct=False)
    m = fit["mean_diff"]
    same, s1, s2, both = m["same"], m["s1_io_flip"], m["s2_io_flip"], m["s1_ioi_flip_s2_ioi_flip"]
    assert fit["n"] == {"same": 24, "s1_io_flip": 24, "s2_io_flip": 24, "s1_ioi_flip_s2_ioi_flip": 24}
    assert fit["bias"] == pytest.approx((same + s1 + s2 + both) / 4, abs=1e-5)
    assert fit["token_coeff"] == pytest.approx((same + s1 - s2 - both) / 4, abs=1e-5)
    assert fit["position_coeff"] == pytest.approx((same - s1 - s2 + both) / 4, abs=1e-5)
    assert 0.0 <= fit["r2"] <= 1.0


def test_localize_reports_mse_lower_is_better_and_das_lowers_it(lm, tmp_path):
    task = ioi.ioi_logit_diff(lm, coefficients=(2.0, 1.0, 1.0))
    res = cv.localize(lm, task, "output_token", [Neurons(dims=[0]), DAS(dim=8)], layers=[1], positions=["last"],
                      n_train=48, n_test=24, epochs=4, lr=5e-2, filter_correct=False, progress=False, out=tmp_path)
    t = res.table
    assert list(t.columns[:9]) == ["variable", "featurizer", "layer", "position", "dataset", "mse", "n", "ci_low",
                                   "ci_high"]
    assert set(t["dataset"]) == set(ioi.LD_SETS) and (t["ci_low"] <= t["mse"]).all()
    mean = t.groupby("featurizer")["mse"].mean()
    assert mean["das(k=8)"] < mean["neurons[0]"]  # trained on the squared error, DAS fits it better
    score = res.mib_score()
    assert (score["best"] <= score["mean"]).all()  # lower is better: the best layer is the minimum
    assert cv.Results.load(tmp_path).metric == "mse" and res.best()["mse"].tolist() == \
        t.groupby("featurizer", sort=False)["mse"].min().tolist()
    res.heatmap(tmp_path / "mse.png")
    assert (tmp_path / "mse.png").stat().st_size > 0


@pytest.mark.slow
def test_smollm_logit_difference_fit_and_sweep(smollm):
    fit = cv.tasks.fit_logit_diff(smollm, n=64)
    assert min(fit["n"].values()) >= 60  # SmolLM2 answers nearly every IOI prompt (filtering keeps them)
    # the default site (s2 at 60% depth) carries both signals: measured c_tok 2.1, c_pos 3.5, R² 0.82
    assert fit["r2"] > 0.7 and fit["token_coeff"] > 1.0 and fit["position_coeff"] > 1.0
    # fitted where the answer's identity lives (the last token, layer 24): a token model (c_tok 5.0)
    late = cv.tasks.fit_logit_diff(smollm, cv.Site(24, "last"), n=64)
    assert late["r2"] > 0.8 and late["token_coeff"] > 3.0 and abs(late["position_coeff"]) < 1.0
    task = cv.tasks.ioi_logit_diff(smollm, late)
    res = cv.localize(smollm, task, "output_token", Neurons(), layers=[2, 28], positions=["last"],
                      n_train=0, n_test=32, progress=False)
    mse = res.table.groupby("layer")["mse"].mean()
    assert mse[28] < mse[2] / 4  # late, the last token carries the answer's identity; early it does not
