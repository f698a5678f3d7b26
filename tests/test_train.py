"""Training trainable featurizers with the interchange objective; saving and pyvene interop."""
from __future__ import annotations

import copy

import pytest
import torch

import causalvar as cv
from causalvar.splits import build_splits, evaluate
from causalvar.pyvene_bridge import pyvene_logits
from causalvar.runstore import featurizer_dir
from featurizers import DAS, DBM, PCA, BoundlessDAS, Featurizer, FeaturizerError

from conftest import make_lm, prompt_task


def test_standalone_fit_improves_iia_and_keeps_rotation_orthonormal(equality):
    task, mlp = equality
    data = cv.CounterfactualDataset.generate(task.causal_model, "left", 1200, seed=0)
    train, test = data.split(1000, seed=0)
    engine = cv.Engine(cv.TorchModel(mlp))
    (split,), _ = build_splits(engine, task, test, [cv.Site(0)], [None])
    torch.manual_seed(0)
    untrained = DAS(dim=8).build(split.sources[cv.Site(0)].shape[-1])
    before, _ = evaluate(engine, split, cv.Site(0), untrained)
    torch.manual_seed(0)
    das = cv.fit(DAS(dim=8), mlp, task, "left", cv.Site(0), train, epochs=8, progress=False)
    after, _ = evaluate(engine, split, cv.Site(0), das)
    assert after > before + 0.1
    R = das.R.detach()
    torch.testing.assert_close(R.T @ R, torch.eye(8), atol=1e-5, rtol=0)


def test_nan_loss_is_a_clear_error(equality):
    task, mlp = equality
    broken = copy.deepcopy(mlp)
    with torch.no_grad():
        broken[3].bias.fill_(float("nan"))
    with pytest.raises(cv.TrainingError, match=r"the loss became nan at epoch 0, step 0 while training das\(k=4\)"):
        cv.localize(broken, task, "left", DAS(dim=4), layers=[1], n_train=200, n_test=50, filter_correct=False,
                    progress=False)


def test_trainable_featurizer_needs_training_pairs(equality):
    task, mlp = equality
    with pytest.raises(ValueError, match="das\\(k=4\\) learns from interventions; n_train must be > 0"):
        cv.localize(mlp, task, "left", DAS(dim=4), layers=[1], n_train=0, n_test=50, progress=False)
    with pytest.raises(ValueError, match="pca must be fitted on activations"):
        cv.localize(mlp, task, "left", PCA(), layers=[1], n_train=0, n_test=50, progress=False)


def test_saved_featurizers_reload_with_identical_iia(equality, tmp_path):
    task, mlp = equality
    feats = [DAS(dim=4), DBM(PCA()), BoundlessDAS(), PCA(n_components=4)]
    res = cv.localize(mlp, task, "left", feats, layers=[0, 1], n_train=400, n_test=200, epochs=2, seed=5,
                      out=tmp_path, progress=False)
    assert {"kept", "of"} <= set(res.table.columns) and "size" in res.table.columns
    loaded = cv.Results.load(tmp_path)
    engine = cv.Engine(cv.TorchModel(mlp))
    sites = [cv.Site(0), cv.Site(1)]
    ds = cv.CounterfactualDataset.generate(task.causal_model, "left", 600 + 600 // 4 + 8, seed=5)
    (_, _, test), _ = build_splits(engine, task, ds, sites, [320, 80, 200], seed=5)
    for row in res.rows:
        key = (row["variable"], row["featurizer"], str(row["layer"]), str(row["position"]))  # one per cell
        feat = loaded.featurizers[key]
        score, _ = evaluate(engine, test, cv.Site(row["layer"]), feat)
        assert score == row["iia"], key
        with pytest.raises(FeaturizerError, match="fitted on hidden size 64, but the site has size 7"):
            Featurizer.load(tmp_path / featurizer_dir(*key), d=7)


def test_pyvene_runs_a_trained_das_with_the_same_iia(tokenizer):
    model = make_lm("gpt2", len(tokenizer))
    adapter = cv.HFModel(model, tokenizer)
    task = prompt_task(adapter)
    engine = cv.Engine(adapter, batch_size=8)
    site = cv.Site(1, "last")
    ds = cv.CounterfactualDataset.generate(task.causal_model, "io", 64, seed=0)
    (train, test), kept = build_splits(engine, task, ds, [site], [48, 16], filter_correct=False)
    torch.manual_seed(0)
    das = DAS(dim=4).build(32)
    cv.train.train(engine, das, site, train, epochs=3, lr=0.05, progress=False)
    ours = engine.run(test.prepared, site, das, test.sources[site])
    bases, sources = (task.encode([rows[i] for i in test.rows]) for rows in (kept.bases, kept.sources))
    ref = pyvene_logits(adapter, bases, sources, site, das, batch_size=8)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert task.correct(ours, test.labels).tolist() == task.correct(ref, test.labels).tolist()


def test_boundless_das_learns_left_at_block_0_with_a_boundary_of_its_own(equality):
    """The boundary and temperature schedule learn: IIA ≥ 0.95 at block 0 of the equality MLP (a 64-wide
    layer), the learned subspace reported by size, well inside the layer and its controls far below."""
    task, net = equality
    res = cv.localize(net, task, "left", BoundlessDAS(), layers=[0], n_train=2000, n_test=500, epochs=20, seed=0,
                      controls=3, progress=False)
    row = res.rows[0]
    assert row["iia"] >= 0.95 and 4 <= row["size"] <= 48
    assert row["control_max"] < row["iia"] - 0.2
