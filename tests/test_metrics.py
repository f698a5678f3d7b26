"""Scores: IIA, Clopper–Pearson, ε bounds, MIB aggregation on hand-made tables."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from causalvar.metrics import clopper_pearson, epsilon_bound, iia, logit_diff, mib_aggregate


def test_iia_and_bounds():
    assert iia(torch.tensor([True, False, True, True])) == 0.75
    with pytest.raises(ValueError, match="empty after filtering"):
        iia(torch.tensor([], dtype=torch.bool))
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0 and hi == pytest.approx(0.3084971, abs=1e-6)
    assert clopper_pearson(5, 10) == pytest.approx((0.187086, 0.812914), abs=1e-6)
    # Palumbo et al.: zero errors gives 1 - 0.05 ** (1 / n) (8,939 pairs -> 3.35e-4)
    assert epsilon_bound(0, 8939) == pytest.approx(1 - 0.05 ** (1 / 8939), rel=1e-9)
    assert epsilon_bound(0, 8939) == pytest.approx(3.35e-4, abs=5e-7)
    logits = torch.tensor([[1.0, 3.0, 0.5], [2.0, -1.0, 0.0]])
    assert logit_diff(logits, torch.tensor([1, 0]), torch.tensor([0, 1])).tolist() == [2.0, 3.0]


def _table(rows):
    return pd.DataFrame(rows, columns=["variable", "featurizer", "layer", "position", "dataset", "iia"])


def test_mib_aggregation_by_hand():
    t = _table([
        # layer 0: position a averages (0.2+0.4)/2 = 0.3, position b 0.5 -> layer best 0.5
        ("x", "das", 0, "a", "s1", 0.2), ("x", "das", 0, "a", "s2", 0.4),
        ("x", "das", 0, "b", "s1", 0.5), ("x", "das", 0, "b", "s2", 0.5),
        # layer 1: a -> 0.9, b -> 0.1 -> layer best 0.9
        ("x", "das", 1, "a", "s1", 1.0), ("x", "das", 1, "a", "s2", 0.8),
        ("x", "das", 1, "b", "s1", 0.1), ("x", "das", 1, "b", "s2", 0.1),
        ("x", "full", 0, "a", "s1", 0.3), ("x", "full", 1, "a", "s1", 0.6),
    ])
    out = mib_aggregate(t).set_index("featurizer")
    assert out.loc["das", "mean"] == pytest.approx(0.7) and out.loc["das", "best"] == pytest.approx(0.9)
    assert out.loc["das", "best_layer"] == 1 and out.loc["das", "n_layers"] == 2
    assert out.loc["full", "mean"] == pytest.approx(0.45) and out.loc["full", "best"] == pytest.approx(0.6)


def test_mib_aggregation_lower_is_better():
    t = _table([("ioi", "das", 0, "a", "s", 2.0), ("ioi", "das", 0, "b", "s", 1.0),
                ("ioi", "das", 1, "a", "s", 4.0), ("ioi", "das", 1, "b", "s", 3.0)])
    out = mib_aggregate(t, lower_is_better=True).iloc[0]
    assert out["mean"] == pytest.approx(2.0) and out["best"] == 1.0 and out["best_layer"] == 0


# ------------------------------------------------------------------------------------------ metric objects
def _ioi_split(variable="io", n=12, seed=3):
    """A split of the conftest name task on tiny GPT-2 (no filter: a random net solves nothing)."""
    import causalvar as cv
    from causalvar.splits import build_splits
    from conftest import make_lm, make_tokenizer, prompt_task

    tok = make_tokenizer()
    adapter = cv.HFModel(make_lm("gpt2", len(tok)), tok)
    task = prompt_task(adapter)
    data = cv.CounterfactualDataset.generate(task.causal_model, variable, n, seed=seed, changes_output=True)
    engine = cv.Engine(adapter, batch_size=5)
    sites = [cv.Site(1, "io"), cv.Site(2, "last")]
    (split,), _ = build_splits(engine, task, data, sites, [None], filter_correct=False)
    return engine, task, split, sites


def test_kl_and_normalised_logit_difference_match_a_hand_computation():
    from causalvar.metrics import KLDiff, NormalizedLogitDiff, ProbDiff
    from causalvar.splits import intervene
    from featurizers import Neurons

    engine, task, split, (site, last) = _ioi_split()
    out = intervene(engine, split, site, Neurons().build(32))
    pt, cl, co = out.logits.double(), split.source_out.double(), split.base_out.double()  # denoise: source is clean
    r, r2 = task.targets(split.labels), task.targets(split.base_labels)
    rows = torch.arange(len(r))
    ld = lambda logits: logits[rows, r] - logits[rows, r2]
    by_hand = float((ld(pt).mean() - ld(co).mean()) / (ld(cl).mean() - ld(co).mean()))
    m = NormalizedLogitDiff(clean="source")
    assert m.value(m.score(out), out) == pytest.approx(by_hand, abs=1e-5)
    lo, hi = m.interval(m.score(out), out)
    assert lo <= by_hand <= hi
    p = lambda logits: logits.softmax(-1)
    kl = lambda a, b: (p(a) * (a.log_softmax(-1) - b.log_softmax(-1))).sum(-1)
    torch.testing.assert_close(KLDiff().score(out).double(), kl(cl, co) - kl(cl, pt), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ProbDiff().score(out).double(), p(pt)[rows, r] - p(co)[rows, r], atol=1e-6, rtol=1e-5)
    # the whole last-layer vector at the read position: the patched run is the clean run
    full = intervene(engine, split, last, Neurons().build(32))
    assert m.value(m.score(full), full) == pytest.approx(1.0, abs=1e-5)
    assert float(KLDiff().score(full).sub(kl(cl, co).float()).abs().max()) < 1e-4
    noised = NormalizedLogitDiff(clean="base")  # noising: the corrupted source written into the clean base
    assert noised.value(noised.score(full), full) == pytest.approx(0.0, abs=1e-5)


def test_a_corruption_that_changes_nothing_is_an_error_not_a_nan():
    from causalvar.metrics import MetricError, NormalizedLogitDiff, Outcome

    engine, task, split, _ = _ioi_split()
    same = Outcome(task, split.base_out, split.labels, split.base_labels, split.base_out, split.base_out)
    m = NormalizedLogitDiff()
    with pytest.raises(MetricError, match="the corruption changes nothing"):
        m.value(m.score(same), same)


def test_one_sweep_reports_two_metrics(equality):
    import causalvar as cv
    from causalvar.splits import build_splits, intervene
    from featurizers import Neurons

    task, mlp = equality
    res = cv.localize(mlp, task, "left", Neurons(), layers=[0, 3], n_train=0, n_test=80, metrics=["iia", "prob"],
                      progress=False)
    t = res.table
    assert list(t.columns[5:9]) == ["iia", "n", "ci_low", "ci_high"] and {"prob", "prob_ci_low", "prob_ci_high"} <= set(t)
    assert res.meta["metrics"] == ["iia", "prob"] and res.metric == "iia"
    alone = cv.localize(mlp, task, "left", Neurons(), layers=[0, 3], n_train=0, n_test=80, progress=False).table
    assert t["iia"].tolist() == alone["iia"].tolist() and "prob" not in alone
    # the probability by hand at block 3 (the logits layer): the mean softmax probability of the label
    ds = cv.CounterfactualDataset.generate(task.causal_model, "left", 60, seed=2)
    engine = cv.Engine(cv.TorchModel(mlp))
    (split,), _ = build_splits(engine, task, ds, [cv.Site(3)], [None])
    out = intervene(engine, split, cv.Site(3), Neurons().build(2))
    want = out.logits.softmax(-1)[torch.arange(len(split)), task.targets(split.labels)].mean()
    assert cv.metrics.Prob().value(cv.metrics.Prob().score(out), out) == pytest.approx(float(want), abs=1e-6)
    with pytest.raises(cv.metrics.MetricError, match="unknown metric 'accuracy'"):
        cv.localize(mlp, task, "left", Neurons(), layers=[0], n_train=0, n_test=8, metrics=["accuracy"])
