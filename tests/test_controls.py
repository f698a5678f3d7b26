"""Random same-size controls: what they are (random subspaces of a subspace's dimension, random selections
of a mask's size), seeded, and in a sweep beside the trained featurizer they control for."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import causalvar as cv
from featurizers import DAS, DBM, PCA, SAE, FeaturizerError, Neurons
from featurizers.subspace import random_controls


def test_a_subspace_gets_random_orthonormal_subspaces_of_its_dimension_and_a_mask_random_masks_of_its_size():
    das = DAS(dim=4).build(16)
    controls = random_controls(das, 3, seed=1)
    for c in controls:
        R, idx = c.subspace()
        assert R.shape == (16, 4) and idx is None
        torch.testing.assert_close(R.T @ R, torch.eye(4), atol=1e-5, rtol=0)
    assert not torch.allclose(controls[0].R, controls[1].R)
    torch.testing.assert_close(random_controls(das, 3, seed=1)[2].R, controls[2].R)  # seeded
    picked = random_controls(Neurons(dims=[0, 3, 5]).build(16), 4, seed=0)
    assert all(len(c.subspace()[1]) == 3 for c in picked) and len({tuple(c.subspace()[1]) for c in picked}) > 1
    x = torch.randn(5, 16)
    chosen = picked[0].subspace()[1]
    swapped = picked[0].interchange(x, -x)  # the chosen neurons from the source, the rest from the base
    torch.testing.assert_close(swapped[:, chosen], -x[:, chosen])
    keep = [i for i in range(16) if i not in chosen]
    torch.testing.assert_close(swapped[:, keep], x[:, keep])
    with pytest.raises(FeaturizerError, match="whole vector: every same-size subspace is the whole space"):
        random_controls(Neurons().build(16), 2)


def test_a_trained_das_beats_its_controls_where_it_localizes_and_the_heatmap_hatches_where_not(equality, tmp_path):
    """Block 0 of the equality MLP: an 8-dimensional DAS subspace (IIA 0.99) far above 8-dimensional random
    subspaces, 8 chosen neurons no better than 8 random ones; block 2 (no localization): the controls sit at
    the no-effect baseline. The heatmap hatches exactly the cells not above their best control."""
    task, net = equality
    res = cv.localize(net, task, "left", [DAS(dim=8), Neurons(dims=range(8)), Neurons()], layers=[0, 2],
                      n_train=2000, n_test=400, seed=0, controls=5, progress=False)
    t = res.table.set_index(["featurizer", "layer"])
    das0, das2, neurons0 = t.loc[("das(k=8)", 0)], t.loc[("das(k=8)", 2)], t.loc[("neurons[0-7]", 0)]
    assert das0["controls"] == 5 and das0["iia"] > 0.95
    assert das0["iia"] > das0["control_max"] + 0.2 and das0["control_max"] >= das0["control_mean"]
    assert neurons0["iia"] < neurons0["control_max"] + 0.1  # a fixed choice of neurons: no better than chance
    assert abs(das2["control_mean"] - das2["baseline"]) < 0.1  # where nothing localizes: at the baseline
    full = t.loc[("full_vector", 0)]
    assert full["controls"] == 0 and np.isnan(full["control_max"])  # the full vector has none
    fig = res.heatmap(tmp_path / "h.png")
    hatches = [p for ax in fig.axes for p in ax.patches if p.get_hatch()]
    assert len(hatches) == int((res.table["iia"] <= res.table["control_max"]).sum()) > 0


def test_controls_of_a_featurizer_not_of_subspace_form_are_refused_before_its_interchange_training(equality):
    task, net = equality
    with pytest.raises(FeaturizerError, match=r"controls: sae is not an orthonormal subspace.*score dbm\(sae.*\) with controls=0"):
        cv.localize(net, task, "left", DBM(SAE(d_sae=8)), layers=[0], n_train=64, n_test=32, controls=2,
                    progress=False)


def test_a_dbm_over_pca_gets_random_masks_of_its_learned_size_over_the_same_components(equality):
    """DBM(PCA()) knows its size only once PCA is fitted: its controls are drawn then, as many random
    components of the fitted basis as the mask kept."""
    task, net = equality
    res = cv.localize(net, task, "left", DBM(PCA()), layers=[0], n_train=256, n_test=128, epochs=2, seed=0,
                      controls=3, progress=False)
    row = res.table.iloc[0]
    assert row["controls"] == 3 and 0 <= row["control_mean"] <= row["control_max"] <= 1
