"""Drift guards: fast paths that must stay on across library releases, and plots that must carry values."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import causalvar as cv
from causalvar.models.base import FastPathWarning
from featurizers import Neurons

from conftest import make_lm, prompt_task


def _suffix_lengths(adapter, task, site):
    """Sequence lengths the last block sees during one intervened run at ``site``, and the padded length."""
    ds = cv.CounterfactualDataset.generate(task.causal_model, "io", 6, seed=1)
    engine = cv.Engine(adapter, batch_size=6)
    bases, sources = task.encode(ds.bases), task.encode(ds.sources)
    _, acts = engine.capture(sources, [site])
    prepared = engine.prepare(bases, [site])
    seen = []
    block = adapter.submodule(adapter.block_paths[-1])
    handle = block.register_forward_pre_hook(
        lambda m, args, kw: seen.append((args[0] if args else kw["hidden_states"]).shape[1]), with_kwargs=True)
    try:
        engine.run(prepared, site, Neurons().build(adapter.d_model), acts[site])
    finally:
        handle.remove()
    return seen, bases.inputs["input_ids"].shape[1]


def test_key_value_reuse_is_on_and_fires(tiny_lm, tokenizer):
    """On the installed transformers, every family uses key/value reuse, without a warning, and the
    suffix run really recomputes only the positions from the intervened one on."""
    family, model = tiny_lm
    with warnings.catch_warnings():
        warnings.simplefilter("error", FastPathWarning)
        adapter = cv.HFModel(model, tokenizer, padding_side="right")
    assert adapter.fast_paths == {"suffix": True, "reuse_kv": True}, adapter.why_not
    assert adapter.why_not == {}
    seen, T = _suffix_lengths(adapter, prompt_task(adapter), cv.Site(1, "s2"))
    assert len(seen) == 1 and seen[0] < T  # right padding: s2 is at the same index in every row


def test_fast_path_that_cannot_be_used_warns_and_says_why(tokenizer):
    model = make_lm("llama", len(tokenizer))
    model.config._attn_implementation = "flex_attention"  # an implementation whose mask causalvar cannot cut
    with pytest.warns(FastPathWarning, match="key/value reuse is off.*flex_attention"):
        adapter = cv.HFModel(model, tokenizer)
    assert adapter.fast_paths == {"suffix": True, "reuse_kv": False}
    assert "flex_attention" in adapter.why_not["reuse_kv"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FastPathWarning)  # turning it off on purpose is not warned about
        off = cv.HFModel(make_lm("llama", len(tokenizer)), tokenizer, reuse_kv=False)
    assert off.why_not == {"reuse_kv": "turned off by the caller (reuse_kv=False)"}


def test_heatmap_without_sequence_axis_carries_values(equality, tmp_path):
    """A sweep of a network without a sequence axis draws one column, labelled, every cell with its value
    (pandas 3 turned ``None`` positions into a missing label and an empty panel)."""
    task, mlp = equality
    res = cv.localize(mlp, task, "left", Neurons(), layers=[0, 1, 2], n_train=0, n_test=40, progress=False)
    fig = res.heatmap(tmp_path / "heat.png")
    ax = fig.axes[0]
    grid = ax.images[0].get_array()
    assert grid.shape == (3, 1) and not np.isnan(np.asarray(grid, dtype=float)).any()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["None"]
    shown = sorted(float(t.get_text()) for t in ax.texts if not t.get_text().startswith("("))  # (baselines)
    assert shown == pytest.approx(sorted(round(x, 2) for x in res.table["iia"]), abs=0.006)
    assert (tmp_path / "heat.png").stat().st_size > 1000
    assert res.mib_score()["n_layers"].item() == 3


def test_a_heatmap_of_variables_swept_at_different_layers_draws_the_layers_in_order(equality, tmp_path):
    """Each variable at its own layers (as bench_mib chooses them): the shared axis runs block 0 up,
    module names after (it followed the order of first appearance: 2 drawn below 0)."""
    task, mlp = equality
    kw = dict(n_train=0, n_test=40, progress=False)
    res = cv.localize(mlp, task, "left", Neurons(), layers=[2, 1], **kw)
    res.rows += cv.localize(mlp, task, "right", Neurons(), layers=[0, 1], **kw).rows
    ax = res.heatmap(tmp_path / "heat.png").axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2"]
    assert cv.metrics.layer_order([23, 27, "encoder.mlp", 17, 23]) == [17, 23, 27, "encoder.mlp"]


@pytest.mark.slow
def test_embedded_model_uses_every_fast_path(smollm):
    assert smollm.fast_paths == {"suffix": True, "reuse_kv": True}, smollm.why_not
    task = cv.tasks.ioi(smollm)
    ds = task.counterfactual_sets("output_token", 4, seed=0)[0]
    engine = cv.Engine(smollm, batch_size=4)
    site = cv.Site(20, "s2")
    _, acts = engine.capture(task.encode(ds.sources), [site])
    prepared = engine.prepare(task.encode(ds.bases), [site])
    seen = []
    handle = smollm.submodule(smollm.block_paths[-1]).register_forward_pre_hook(
        lambda m, args, kw: seen.append((args[0] if args else kw["hidden_states"]).shape[1]), with_kwargs=True)
    try:
        engine.run(prepared, site, Neurons().build(smollm.d_model), acts[site])
    finally:
        handle.remove()
    assert seen and seen[0] < prepared.batches[0].inputs["input_ids"].shape[1]
