"""The embedded SmolLM2-135M (slow: ~20 s to load, once per session). Run with ``pytest -m slow``."""
from __future__ import annotations

import pytest
import torch

import causalvar as cv
from causalvar import task_accuracy
from causalvar.pyvene_bridge import pyvene_logits
from featurizers import Neurons

pytestmark = pytest.mark.slow


def test_embedded_model_shape_and_ioi_accuracy(smollm):
    assert smollm.n_layers == 30 and smollm.d_model == 576
    assert task_accuracy(smollm, cv.tasks.ioi(smollm), n=128) >= 0.95


def test_ioi_variables_live_where_expected(smollm):
    """The IO's name sits at its own token early and at the last token late."""
    task = cv.tasks.ioi(smollm)
    res = cv.localize(smollm, task, "output_token", Neurons(), layers=[3, 29], positions=["io", "last"],
                      n_train=0, n_test=48, progress=False)
    iia = {(r["layer"], r["position"]): r["iia"] for r in res.rows}
    assert iia[(3, "io")] >= 0.85 and iia[(29, "last")] >= 0.85
    assert iia[(3, "last")] <= 0.2 and iia[(29, "io")] <= 0.2
    assert res.meta["data"]["output_token/random"][2].startswith("filter 'network answers base and source correctly'")


def test_agrees_with_pyvene_on_smollm2(smollm):
    task = cv.tasks.ioi(smollm)
    ds = cv.CounterfactualDataset.generate(task.causal_model, "output_position", 12, seed=2)
    bases, sources = task.encode(ds.bases), task.encode(ds.sources)
    engine = cv.Engine(smollm, batch_size=6)
    for site in [cv.Site(0, "s2"), cv.Site(15, "s2"), cv.Site(29, "last")]:
        _, acts = engine.capture(sources, [site])
        f = Neurons(dims=range(0, 576, 3)).build(576)
        ours = engine.run(engine.prepare(bases, [site]), site, f, acts[site])
        ref = pyvene_logits(smollm, bases, sources, site, f, batch_size=6)
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
        assert torch.equal(ours.argmax(-1), ref.argmax(-1))


def test_gguf_file_path_loads(smollm):
    lm = cv.load_model(str(cv.models.embedded_path()))
    assert lm.n_layers == 30


def test_localize_command_writes_a_results_folder(smollm, tmp_path, monkeypatch):
    from causalvar import cli

    monkeypatch.setattr(cv, "load_model", lambda name: smollm)  # the session's copy
    out = tmp_path / "ioi"
    assert cli.main(["localize", "--task", "ioi", "--featurizer", "full,das:4", "--layers", "27:30",
                     "--positions", "s2,last", "--n-train", "24", "--n-test", "16", "--epochs", "1",
                     "--out", str(out)]) == 0
    table = cv.Results.load(out).table
    assert set(table["featurizer"]) == {"full_vector", "das(k=4)"} and set(table["layer"]) == {27, 28, 29}
    assert set(table["dataset"]) == {"random", "s1_io_flip"}
    assert (out / "heatmap.png").exists() and (out / "mib_scores.csv").read_text().startswith("variable,featurizer")


@pytest.mark.slow
def test_the_kept_conversion_is_the_gguf_model(smollm):
    """The float32 copy kept after the first load gives the GGUF file's logits and tokens."""
    from transformers import AutoModelForCausalLM

    from causalvar.models.load import converted_path, embedded_path

    path = embedded_path()
    assert (converted_path(path) / "config.json").exists()  # kept by the session's first load
    kept = cv.load_model("smollm2-135m")  # reads the copy
    gguf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    task = cv.tasks.ioi(kept)
    batch = task.encode(task.causal_model.sample(6, seed=1))
    with torch.no_grad():
        theirs = gguf(**batch.inputs).logits[torch.arange(6), batch.read]
    torch.testing.assert_close(kept.forward(batch), theirs, atol=1e-5, rtol=1e-5)
    assert kept.tokenizer("When Mary and John went")["input_ids"] == smollm.tokenizer("When Mary and John went")["input_ids"]


def test_attribution_patching_agrees_near_the_logits_and_not_at_the_early_names(smollm):
    """IOI's STR corruption of ``output_token`` (other names): at the last block's read position the linear
    screen matches exact patching (the tail is a norm and the unembedding), but writing the clean names
    into the early residual stream moves the network far from where it was linearised, so attribution
    misses most of that restoration (Kramár et al. and Zhang & Nanda saw the same in the early layers)."""
    task = cv.tasks.ioi(smollm)
    kw = dict(layers=[0, 29], positions=["io", "last"], n=16, progress=False)
    exact = cv.patch(smollm, task, "output_token", **kw)
    fast = cv.patch(smollm, task, "output_token", method="attribution", **kw)
    value = lambda res, layer, pos: float(res.table.query("layer == @layer and position == @pos")[res.metric].iloc[0])
    assert value(exact, 29, "last") == pytest.approx(1.0, abs=1e-4)
    assert value(fast, 29, "last") == pytest.approx(1.0, abs=0.1)
    assert value(exact, 0, "io") > 0.9 and value(exact, 0, "io") - value(fast, 0, "io") > 0.3


def test_a_bfloat16_sweep_is_within_a_hundredth_of_float32(smollm):
    """The embedded model in bfloat16 (featurizers stay float32) against float32: full-vector IIA of IOI's
    output_token at three layers x three positions, on the same pairs: those the float32 model answers
    correctly (MIB's filter judged once; filtering per dtype would score two different samples, as
    the bf16 model keeps another 317 of these 320). Measured: eight cells identical, the last block's
    read position 2 of 318 pairs apart (0.006)."""
    import torch

    from causalvar.engine import Engine
    from causalvar.splits import build_splits

    half = cv.load_model("smollm2-135m", dtype=torch.bfloat16)
    task = cv.tasks.ioi(smollm)
    drawn = task.counterfactual_sets("output_token", 320, seed=0)[0]
    _, data = build_splits(Engine(smollm), task, drawn, [], [None], filter_correct=True)
    kw = dict(layers=[6, 18, 27], positions=["io", "s2", "last"], n_train=0, n_test=len(data), data=data,
              filter_correct=False, seed=0, progress=False)
    a = cv.localize(smollm, task, "output_token", Neurons(), **kw)
    b = cv.localize(half, cv.tasks.ioi(half), "output_token", Neurons(), **kw)
    diff = (a.table["iia"] - b.table["iia"]).abs()
    shown = a.table.assign(bf16=b.table["iia"])[["layer", "position", "n", "iia", "bf16"]]
    assert len(data) > 300 and a.table["iia"].max() > 0.85, shown  # the sweep localizes somewhere
    assert diff.max() <= 0.01 and (diff > 0).sum() <= 1, shown
