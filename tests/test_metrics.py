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
