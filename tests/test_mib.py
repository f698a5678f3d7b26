"""MIB submission format: export -> import -> same IIA; missing units refused; indices honoured."""
from __future__ import annotations

import pytest
import torch

import causalvar as cv
from causalvar.splits import build_splits, evaluate
from causalvar.mib import evaluate_submission, export_submission, load_unit, unit_name
from featurizers import DAS, DBM, PCA, Neurons


@pytest.fixture(scope="module")
def trained(equality):
    task, mlp = equality
    feats = [DAS(dim=4), Neurons(dims=[1, 4, 9]), DBM(Neurons()), PCA(n_components=5)]
    return cv.localize(mlp, task, "left", feats, layers=[0, 1], n_train=400, n_test=100, epochs=2, progress=False)


@pytest.mark.parametrize("name", ["das(k=4)", "neurons[1,4,9]", "dbm(full_vector)", "pca(k=5)"])
def test_round_trip_gives_the_same_iia(trained, equality, tmp_path, name):
    task, mlp = equality
    export_submission(trained, tmp_path, "left", name)
    ds = cv.CounterfactualDataset.generate(task.causal_model, "left", 300, seed=11)
    sub = evaluate_submission(mlp, task, tmp_path, "left", layers=[0, 1], positions=[None], data=ds)
    engine = cv.Engine(cv.TorchModel(mlp))
    sites = [cv.Site(0), cv.Site(1)]
    (split,), _ = build_splits(engine, task, ds, sites, [None])
    for row in sub.rows:
        original = trained.featurizers[("left", name, str(row["layer"]), "None")]
        score, _ = evaluate(engine, split, cv.Site(row["layer"]), original)
        assert row["iia"] == score and row["n"] == len(split)


def test_indices_are_honoured(trained, equality, tmp_path):
    task, mlp = equality
    export_submission(trained, tmp_path, "left", "das(k=4)")
    (tmp_path / f"{unit_name(0, None)}_indices").write_text("[]")  # intervene on nothing
    feat = load_unit(tmp_path, 0, None, 64)
    h = torch.randn(5, 64)
    torch.testing.assert_close(feat.interchange(h, torch.randn(5, 64)), h, atol=1e-6, rtol=0)
    ds = cv.CounterfactualDataset.generate(task.causal_model, "left", 200, seed=3)
    res = evaluate_submission(mlp, task, tmp_path, "left", layers=[0], positions=[None], data=ds)
    # no feature swapped: the network keeps its base answer, so IIA = share of pairs whose label is the base's
    same = sum(l == b for l, b in zip(ds.labels, ds.base_labels)) / len(ds)
    assert res.rows[0]["iia"] == pytest.approx(same, abs=0.02)


def test_missing_unit_is_refused(trained, equality, tmp_path):
    task, mlp = equality
    export_submission(trained, tmp_path, "left", "das(k=4)")
    ds = cv.CounterfactualDataset.generate(task.causal_model, "left", 50, seed=3)
    with pytest.raises(FileNotFoundError, match=r"no unit for layer 2, position None: missing"):
        evaluate_submission(mlp, task, tmp_path, "left", layers=[0, 2], positions=[None], data=ds)
    (tmp_path / f"{unit_name(1, None)}_indices").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing \['ResidualStream\(Layer:1,Token:None\)_indices'\]"):
        evaluate_submission(mlp, task, tmp_path, "left", layers=[1], positions=[None], data=ds)
