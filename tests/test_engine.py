"""The interchange engine on real tiny networks: invariants, suffix execution, pyvene agreement."""
from __future__ import annotations

import pytest
import torch

import causalvar as cv
from causalvar.engine import ActivationStore
from causalvar.models.base import Batch
from causalvar.pyvene_bridge import pyvene_logits
from featurizers import DAS, Neurons

from conftest import make_lm, prompt_task


def _setup(model, tokenizer, padding_side="left", batch_size=4, n=10, variable="io"):
    adapter = cv.HFModel(model, tokenizer, padding_side=padding_side)
    task = prompt_task(adapter)
    ds = cv.CounterfactualDataset.generate(task.causal_model, variable, n, seed=0)
    engine = cv.Engine(adapter, batch_size=batch_size)
    return adapter, task, ds, engine, task.encode(ds.bases), task.encode(ds.sources)


def _sites(adapter):
    last = adapter.n_layers - 1
    mlp = adapter.block_paths[1] + ".mlp"
    return [cv.Site(0, "io"), cv.Site(1, "s2", "input"), cv.Site(last, "last"), cv.Site(mlp, "last")]


def test_self_interchange_changes_nothing_lm(tiny_lm, tokenizer):
    family, model = tiny_lm
    adapter, task, ds, engine, bases, _ = _setup(model, tokenizer)
    sites = _sites(adapter)
    logits, acts = engine.capture(bases, sites)
    prepared = engine.prepare(bases, sites)
    assert prepared.starts[sites[3]] is None  # an MLP submodule: hooked full forward
    for site in sites:
        out = engine.run(prepared, site, Neurons().build(acts[site].shape[-1]), acts[site])
        torch.testing.assert_close(out, logits, atol=1e-5, rtol=0)


def test_full_vector_at_last_layer_gives_source_output(tiny_lm, tokenizer):
    family, model = tiny_lm
    adapter, task, ds, engine, bases, sources = _setup(model, tokenizer)
    site = cv.Site(adapter.n_layers - 1, "last")
    src_logits, acts = engine.capture(sources, [site])
    base_logits, _ = engine.capture(bases, [site])
    out = engine.run(engine.prepare(bases, [site]), site, Neurons().build(32), acts[site])
    torch.testing.assert_close(out, src_logits, atol=1e-5, rtol=1e-5)
    assert (out - base_logits).abs().max() > 1e-3  # the intervention did something


def test_padding_side_and_batch_size_do_not_change_results(tokenizer):
    model = make_lm("llama", len(tokenizer))
    sites = [cv.Site(0, "io"), cv.Site(2, "last"), cv.Site(1, "s2")]
    outs = []
    for side, bs in [("left", 64), ("right", 64), ("left", 1), ("right", 3)]:
        adapter, task, ds, engine, bases, sources = _setup(model, tokenizer, side, bs, n=12)
        _, acts = engine.capture(sources, sites)
        prepared = engine.prepare(bases, sites)
        outs.append([engine.run(prepared, s, Neurons(dims=range(8)).build(32), acts[s]) for s in sites])
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_localize_tables_identical_for_batch_sizes_and_padding(tokenizer):
    model = make_lm("gpt2", len(tokenizer))
    tables = []
    for side, bs in [("left", 1), ("left", 64), ("right", 64)]:
        adapter = cv.HFModel(model, tokenizer, padding_side=side)
        res = cv.localize(adapter, prompt_task(adapter), "io", Neurons(), layers=[0, 2], positions=["io", "last"],
                          n_train=0, n_test=40, filter_correct=False, batch_size=bs, progress=False)
        tables.append(res.table[["layer", "position", "iia", "n"]])
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_agrees_with_pyvene(family, tokenizer):
    model = make_lm(family, len(tokenizer))
    adapter, task, ds, engine, bases, sources = _setup(model, tokenizer, n=10)
    for site in [cv.Site(0, "io"), cv.Site(2, "last"), cv.Site(1, "s2")]:
        _, acts = engine.capture(sources, [site])
        base_logits, _ = engine.capture(bases, [site])
        f = Neurons(dims=range(0, 32, 2)).build(32)
        ours = engine.run(engine.prepare(bases, [site]), site, f, acts[site])
        ref = pyvene_logits(adapter, bases, sources, site, f, batch_size=4)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
        assert (ours - base_logits).abs().max() > 1e-4  # pyvene and causalvar both intervened


def test_mlp_self_interchange_and_full_vector(equality):
    task, mlp = equality
    adapter = cv.TorchModel(mlp)
    ds = cv.CounterfactualDataset.generate(task.causal_model, "left", 64, seed=1)
    engine = cv.Engine(adapter, batch_size=16)
    bases, sources = task.encode(ds.bases), task.encode(ds.sources)
    sites = [cv.Site(i) for i in range(4)] + [cv.Site("1.0"), cv.Site(2, component="input")]
    base_logits, base_acts = engine.capture(bases, sites)
    src_logits, src_acts = engine.capture(sources, sites)
    prepared = engine.prepare(bases, sites)
    for s in sites:
        torch.testing.assert_close(engine.run(prepared, s, Neurons(), base_acts[s]), base_logits, atol=0, rtol=0)
        torch.testing.assert_close(engine.run(prepared, s, Neurons(), src_acts[s]), src_logits, atol=1e-6, rtol=0)


def test_unrelated_variable_iia_equals_base_output_agreement(equality):
    """Interchanging a variable the output ignores: the counterfactual label is the base label, so IIA
    is the agreement of the intervened network with the base output, computed here by hand."""
    task, mlp = equality
    cm = task.causal_model
    junk_model = cv.CausalModel(inputs=cm.inputs, mechanisms={**cm.mechanisms, "junk": lambda w, y: w + y},
                                output="out", sampler=lambda rng: cm.draw(rng))
    junk_task = cv.Task(junk_model, encode=task._encode, decode=task._decode)
    res = cv.localize(mlp, junk_task, "junk", Neurons(dims=range(8)), layers=[1], n_train=0, n_test=300,
                      filter_correct=False, progress=False)
    ds = cv.CounterfactualDataset.generate(junk_model, "junk", 300, seed=0)
    assert ds.labels == ds.base_labels
    xb, xs = junk_task.encode(ds.bases).inputs["x"], junk_task.encode(ds.sources).inputs["x"]
    with torch.no_grad():
        hb, hs = mlp[1](mlp[0](xb)), mlp[1](mlp[0](xs))
        h = torch.cat([hs[:, :8], hb[:, 8:]], dim=1)
        pred = mlp[3](mlp[2](h)).argmax(-1).bool().tolist()
    # localize shuffles rows before the test split; agreement is a mean, so order does not matter
    agreement = sum(p == b for p, b in zip(pred, ds.base_labels)) / len(pred)
    assert res.table["iia"].item() == pytest.approx(agreement, abs=1e-12)
    assert 0.3 < agreement < 1.0  # the intervention is not a no-op


@pytest.mark.parametrize("side", ["left", "right"])
def test_key_value_reuse_equals_full_suffix(tiny_lm, tokenizer, side):
    """Recomputing only the positions from the intervened one on gives the full recompute's logits."""
    family, model = tiny_lm
    outs = {}
    for reuse in (True, False):
        adapter = cv.HFModel(model, tokenizer, padding_side=side, reuse_kv=reuse)
        task = prompt_task(adapter)
        ds = cv.CounterfactualDataset.generate(task.causal_model, "io", 9, seed=4)
        engine = cv.Engine(adapter, batch_size=4)
        bases, sources = task.encode(ds.bases), task.encode(ds.sources)
        sites = [cv.Site(0, "io"), cv.Site(1, "s2", "input"), cv.Site(2, "last"), cv.Site(0, 2)]
        _, acts = engine.capture(sources, sites)
        prepared = engine.prepare(bases, sites)
        f = Neurons(dims=range(0, 32, 3)).build(32)
        outs[reuse] = [engine.run(prepared, s, f, acts[s]) for s in sites]
    assert adapter.reuse_kv is False and cv.HFModel(model, tokenizer).reuse_kv is True
    for a, b in zip(outs[True], outs[False]):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_greedy_generation_matches_transformers_generate(tiny_lm, tokenizer, side):
    family, model = tiny_lm
    adapter, task, ds, engine, bases, _ = _setup(model, tokenizer, padding_side=side, n=5)
    ours = engine.generate(engine.prepare(bases, []), 3)
    for i in range(len(bases)):
        real = bases.inputs["attention_mask"][i].bool()
        ids = bases.inputs["input_ids"][i][real][None]
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:]
        assert len(ref) >= 1 and ours[i, :len(ref)].tolist() == ref.tolist(), (family, side, i)  # HF stops at EOS


@pytest.mark.parametrize("side", ["left", "right"])
def test_intervened_generation_equals_recomputing_the_whole_sequence(tiny_lm, tokenizer, side):
    family, model = tiny_lm
    adapter, task, ds, engine, bases, sources = _setup(model, tokenizer, padding_side=side, n=6)
    site, f = cv.Site(1, "io"), Neurons().build(32)
    _, acts = engine.capture(sources, [site])
    ours = engine.generate(engine.prepare(bases, [site]), 3, site, f, acts[site])  # prompt once, then cached steps
    pos = bases.position(site.position)
    for i in range(len(bases)):  # reference: each row alone, unpadded, the whole sequence re-run per token
        real = bases.inputs["attention_mask"][i].bool()
        ids, p = bases.inputs["input_ids"][i][real].tolist(), int(pos[i]) - int(real.nonzero()[0])
        for _ in range(3):
            n = len(ids)
            row = Batch({"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, n, dtype=torch.long),
                         "position_ids": torch.arange(n)[None]}, {}, torch.tensor([n - 1]))
            ids.append(int(engine.forward(row, site, f, acts[site][i:i + 1], pos=torch.tensor([p])).argmax(-1)))
        assert ours[i].tolist() == ids[-3:], (family, side, i)
    last = cv.Site(adapter.n_layers - 1, "last")  # the whole last-layer vector: the source's own first token
    _, acts = engine.capture(sources, [last])
    swapped = engine.generate(engine.prepare(bases, [last]), 2, last, f, acts[last])
    assert swapped[:, 0].tolist() == engine.generate(engine.prepare(sources, []), 1)[:, 0].tolist(), family


def test_capture_while_decoding_reads_the_prompt_pass(tiny_lm, tokenizer):
    family, model = tiny_lm
    adapter, task, ds, engine, bases, _ = _setup(model, tokenizer, n=6)
    sites = _sites(adapter)
    logits, acts = engine.capture(bases, sites)
    tokens, during = engine.capture(bases, sites, n_tokens=3)
    assert tokens.tolist() == engine.generate(engine.prepare(bases, []), 3).tolist()
    assert tokens[:, 0].tolist() == logits.argmax(-1).tolist()
    for s in sites:
        torch.testing.assert_close(during[s], acts[s], atol=1e-5, rtol=1e-5)


def test_greedy_checker_judges_whole_answers(tokenizer):
    model = make_lm("llama", len(tokenizer))
    adapter = cv.HFModel(model, tokenizer)
    base_task = prompt_task(adapter)
    task = cv.PromptTask(adapter, base_task.causal_model, prompt=base_task.prompt, answer=lambda v: f" {v} gave",
                         positions=base_task.positions, checker="greedy")
    ds = cv.CounterfactualDataset.generate(task.causal_model, "io", 40, seed=0)
    engine = cv.Engine(adapter, batch_size=16)
    bases = task.encode(ds.bases)
    plain = engine.generate(engine.prepare(bases, []), 2)
    expected = [row == task.answer_ids(label) for row, label in zip(plain.tolist(), ds.labels)]
    assert task.correct_tokens(plain, ds.labels).tolist() == expected
    # an interchange of nothing keeps the plain generation, so IIA is the plain agreement
    res = cv.localize(adapter, task, "io", Neurons(dims=[]), layers=[1], positions=["io"], n_train=0, n_test=40,
                      data=ds, filter_correct=False, progress=False)
    assert res.table["iia"].item() == sum(expected) / len(expected)
    # and a full-vector interchange at the last layer's last token makes the first token the source's
    sources = task.encode(ds.sources)
    site = cv.Site(2, "last")
    _, acts = engine.capture(sources, [site])
    first = engine.generate(engine.prepare(bases, [site]), 1, site, Neurons(), acts[site])
    assert first[:, 0].tolist() == engine.generate(engine.prepare(sources, []), 1)[:, 0].tolist()


def test_bfloat16_model_with_float32_featurizer(tokenizer):
    """Featurizers compute in their own dtype; a bf16 network gets bf16 back."""
    model = make_lm("llama", len(tokenizer)).to(torch.bfloat16)
    adapter, task, ds, engine, bases, sources = _setup(model, tokenizer, n=8)
    site = cv.Site(1, "last")
    src_logits, acts = engine.capture(sources, [site])
    base_logits, base_acts = engine.capture(bases, [site])
    prepared = engine.prepare(bases, [site])
    torch.manual_seed(0)
    das = DAS(dim=32).build(32)  # full rank: the full-vector interchange, up to bf16 rounding
    out = engine.run(prepared, site, das, acts[site])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out.argmax(-1) == engine.run(prepared, site, Neurons(), acts[site]).argmax(-1)).float().mean() >= 0.75
    torch.testing.assert_close(engine.run(prepared, site, Neurons(), base_acts[site]), base_logits, atol=0, rtol=0)


def test_activation_store_bound_spills_to_files_and_frees_memory(tmp_path):
    store = ActivationStore(max_memory_gb=100 / 2**30, folder=tmp_path)  # room for 100 bytes
    a = store.empty(5, 4)  # 80 bytes: in memory
    b = store.empty(5, 4)  # past the bound: a memory-mapped file
    assert (store.memory_bytes, store.disk_bytes) == (80, 80) and len(list(tmp_path.iterdir())) == 1
    b[2] = torch.arange(4.0)
    assert b.sum() == 6 and store.take(b, torch.tensor([2, 0])).tolist() == [[0, 1, 2, 3], [0, 0, 0, 0]]
    del a
    assert store.memory_bytes == 0 and store.cat([b, b]).shape == (10, 4)  # freed memory is given back
    with pytest.raises(ValueError, match="max_memory_gb"):
        ActivationStore(-1)


def test_sweeps_on_disk_activations_give_identical_tables(tokenizer, equality):
    adapter = cv.HFModel(make_lm("llama", len(tokenizer)), tokenizer)
    kw = dict(layers=[0, 2], positions=["io", "last"], n_train=0, n_test=24, filter_correct=False, progress=False)
    in_memory = cv.localize(adapter, prompt_task(adapter), "io", Neurons(), **kw)
    on_disk = cv.localize(adapter, prompt_task(adapter), "io", Neurons(), max_memory_gb=0, **kw)
    assert in_memory.table.equals(on_disk.table)
    task, mlp = equality  # trained featurizers read their sources chunk by chunk from the files
    kw = dict(layers=[0], n_train=300, n_test=100, epochs=2, progress=False)
    in_memory = cv.localize(mlp, task, "left", DAS(dim=4), **kw)
    on_disk = cv.localize(mlp, task, "left", DAS(dim=4), max_memory_gb=0, **kw)
    assert in_memory.table.equals(on_disk.table)


def test_prefix_states_come_under_the_memory_bound(tokenizer):
    """The bases' hidden states and keys/values live in the store too: past the bound, in files, with the
    same numbers."""
    adapter = cv.HFModel(make_lm("llama", len(tokenizer)), tokenizer)
    task = prompt_task(adapter)
    ds = cv.CounterfactualDataset.generate(task.causal_model, "io", 10, seed=1)
    bases, sources = task.encode(ds.bases), task.encode(ds.sources)
    site, f = cv.Site(1, "s2"), Neurons(dims=range(8)).build(32)
    runs = {}
    for bound in (None, 0):
        engine = cv.Engine(adapter, batch_size=4, max_memory_gb=bound)
        _, acts = engine.capture(sources, [site])
        captured = engine.store.disk_bytes
        prepared = engine.prepare(bases, [site])
        hidden, (k, v) = prepared.states[0]["hidden"][2], prepared.states[0]["kv"][2]
        runs[bound] = engine.run(prepared, site, f, acts[site])
        if bound == 0:  # hidden [4, T, 32] and this layer's keys/values went to files
            assert engine.store.disk_bytes - captured >= hidden.numel() * 4 + k.numel() * 4 + v.numel() * 4
            assert engine.store.memory_bytes == 0
        else:
            assert engine.store.disk_bytes == 0 and engine.store.memory_bytes > hidden.numel() * 4
    torch.testing.assert_close(runs[0], runs[None], atol=0, rtol=0)


@pytest.mark.parametrize("reuse", [True, False])
def test_sites_inside_a_block_run_as_suffixes_equal_to_a_full_forward(tiny_lm, tokenizer, reuse):
    """A sublayer's output or a head: the suffix starts at its block's cached input with the site hooked
    (only the recomputed positions seen, with key/value reuse); the logits are the hooked full forward's."""
    family, model = tiny_lm
    adapter, task, ds, engine, bases, sources = _setup(model, tokenizer)
    adapter.reuse_kv = reuse and adapter.reuse_kv
    sites = [cv.Site(1, "io", "attn_out"), cv.Site(0, "s2", "mlp_out"), cv.Site(2, "last", "attn_out"),
             cv.Site(1, "io", "head", head=3), cv.Site(2, "last", "head", head=0)]
    _, acts = engine.capture(sources, sites)
    prepared = engine.prepare(bases, sites)
    assert [prepared.starts[s] for s in sites] == [1, 0, 2, 1, 2]
    unpatched, changed = engine.capture(bases, [])[0], []
    for s in sites:
        f = Neurons().build(acts[s].shape[-1])
        full = torch.cat([engine.forward(b, s, f, acts[s][c]) for b, c in zip(prepared.batches, prepared.slices)])
        torch.testing.assert_close(engine.run(prepared, s, f, acts[s]), full.float().cpu(), atol=2e-5, rtol=1e-5)
        changed.append(not torch.allclose(full.float().cpu(), unpatched, atol=1e-4))
    assert changed[2] and changed[4]  # the last block's writes at the read position reach the logits
