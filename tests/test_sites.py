"""Canonical sites read and written by the adapters: residual stream, attention and MLP outputs, heads."""
from __future__ import annotations

import warnings

import pytest
import torch

import causalvar as cv

from conftest import make_lm, prompt_task

FAMILIES = ["gpt2", "llama", "gemma2"]  # llama and gemma2 have grouped-query attention (4 query, 2 kv heads)
COMPONENTS = ["resid_pre", "resid_post", "attn_out", "mlp_out"]


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request, tokenizer):
    model = make_lm(request.param, len(tokenizer))
    adapter = cv.HFModel(model, tokenizer)
    task = prompt_task(adapter)
    return request.param, adapter, task.encode(task.causal_model.sample(5, seed=2))


def _read(adapter, batch, site):
    """The site's activation in a plain forward, and the logits."""
    seen = {}
    handle = adapter.hook(site, lambda h: seen.__setitem__("h", h.detach().clone()))
    try:
        logits = adapter.forward(batch)
    finally:
        handle.remove()
    return seen["h"], logits


def _write(adapter, batch, site, fn):
    handle = adapter.hook(site, fn)
    try:
        return adapter.forward(batch)
    finally:
        handle.remove()


def test_sites_have_their_shapes_and_writing_their_own_value_changes_nothing(lm):
    family, adapter, batch = lm
    clean = adapter.forward(batch)
    n, T = batch.inputs["input_ids"].shape
    d_head = 8
    for site in [cv.Site(1, None, c) for c in COMPONENTS] + [cv.Site(1, None, "head", head=h) for h in range(4)]:
        h, _ = _read(adapter, batch, site)
        assert h.shape == ((n, T, d_head) if site.component == "head" else (n, T, 32)), site
        assert torch.equal(_write(adapter, batch, site, lambda x: x.clone()), clean), site


def test_residual_after_a_block_is_before_plus_attention_plus_mlp(lm):
    family, adapter, batch = lm
    acts = {c: _read(adapter, batch, cv.Site(2, None, c))[0] for c in COMPONENTS}
    torch.testing.assert_close(acts["resid_post"], acts["resid_pre"] + acts["attn_out"] + acts["mlp_out"],
                               atol=1e-5, rtol=1e-5)


def _out_proj_weight(adapter, layer):
    """W_O as ``[n_heads·d_head, d]`` (GPT-2's Conv1D stores it so; nn.Linear stores the transpose)."""
    block = adapter.submodule(adapter.block_paths[layer])
    attn = getattr(block, "self_attn", None) or block.attn
    proj = getattr(attn, "o_proj", None) or attn.c_proj
    return proj.weight if type(proj).__name__ == "Conv1D" else proj.weight.T


def test_head_outputs_sum_to_the_attention_output_through_the_projection(lm):
    family, adapter, batch = lm
    block = adapter.submodule(adapter.block_paths[0])
    if hasattr(block, "pre_feedforward_layernorm"):
        pytest.skip("Gemma 2 normalises the attention output after the projection")
    W = _out_proj_weight(adapter, 0).unflatten(0, (4, -1))  # [n_heads, d_head, d]
    z = torch.stack([_read(adapter, batch, cv.Site(0, None, "head", head=h))[0] for h in range(4)], -2)
    attn_out, _ = _read(adapter, batch, cv.Site(0, None, "attn_out"))
    bias = getattr(getattr(block, "attn", None), "c_proj", None)
    bias = bias.bias if bias is not None else 0
    torch.testing.assert_close(torch.einsum("nthk,hkd->ntd", z, W) + bias, attn_out, atol=1e-5, rtol=1e-5)


def test_writing_a_head_equals_the_hand_computation_through_the_projection(lm):
    """Writing value v into head 2 moves the attention output by (v - z_2) W_O[2] (linear in the head),
    and every later computation follows from that sublayer output."""
    family, adapter, batch = lm
    layer, head = 1, 2
    z, _ = _read(adapter, batch, cv.Site(layer, None, "head", head=head))
    v = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    W = _out_proj_weight(adapter, layer).unflatten(0, (4, -1))[head]  # [d_head, d]
    before, _ = _read(adapter, batch, cv.Site(layer, None, "attn_out"))
    block = adapter.submodule(adapter.block_paths[layer])
    attn_site = cv.Site(layer, None, "attn_out")
    seen = {}
    h1 = adapter.hook(cv.Site(layer, None, "head", head=head), lambda x: v)
    h2 = adapter.hook(attn_site, lambda x: seen.__setitem__("after", x.detach().clone()))
    try:
        patched = adapter.forward(batch)
    finally:
        h1.remove(), h2.remove()
    if hasattr(block, "pre_feedforward_layernorm"):  # Gemma 2: the head moves the input of the post norm
        norm = block.post_attention_layernorm
        raw = {}
        g = norm.register_forward_hook(lambda m, a, o: raw.__setitem__("x", a[0].detach().clone()))
        try:
            adapter.forward(batch)
        finally:
            g.remove()
        expected = norm(raw["x"] + (v - z) @ W)
    else:
        expected = before + (v - z) @ W
    torch.testing.assert_close(seen["after"], expected, atol=1e-5, rtol=1e-5)
    # and the logits are those of writing that attention output directly
    direct = _write(adapter, batch, attn_site, lambda x: expected)
    torch.testing.assert_close(patched, direct, atol=1e-5, rtol=1e-5)


def test_site_errors_are_in_the_users_terms(tokenizer):
    adapter = cv.HFModel(make_lm("llama", len(tokenizer)), tokenizer)
    with pytest.raises(cv.ModelError, match="head 4 is out of range; the model has 4 query heads"):
        adapter.hook(cv.Site(0, None, "head", head=4), lambda h: None)
    with pytest.raises(ValueError, match="a 'head' site needs head=<int>"):
        cv.Site(0, None, "head")
    with pytest.raises(ValueError, match="a 'head' site needs head=<int>"):
        cv.Site(0, None, "attn_out", head=1)
    with pytest.raises(cv.ModelError, match="'attn_out' sites take an int layer"):
        adapter.hook(cv.Site("model.layers.0", None, "attn_out"), lambda h: None)
    mlp = cv.TorchModel(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()))
    with pytest.raises(cv.ModelError, match="has no 'mlp_out' component"):
        mlp.hook(cv.Site(0, None, "mlp_out"), lambda h: None)
    assert str(cv.Site(3, "s2", "head", head=5)) == "L3.head5@s2" and cv.Site(1, component="input").component == "resid_pre"


def _tiny(family, tokenizer):
    """The adapter of a tiny HF model of ``family``: conftest's, or a Falcon (ALiBi, ReLU, d_mlp 48) like the
    2-SAT network's (whose blocks take no key/value cache: the adapter's warning is not what is tested here)."""
    if family != "falcon":
        return cv.HFModel(make_lm(family, len(tokenizer)), tokenizer)
    import transformers as tf

    from causalvar.models.base import FastPathWarning

    torch.manual_seed(0)
    model = tf.FalconForCausalLM(tf.FalconConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, ffn_hidden_size=48, activation="relu",
                                                 alibi=True, new_decoder_architecture=False, parallel_attn=False,
                                                 bias=True)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FastPathWarning)
        return cv.HFModel(model, tokenizer)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2", "falcon"])
def test_unembed_of_the_last_residual_is_the_models_readout(family, tokenizer):
    adapter = _tiny(family, tokenizer)
    task = prompt_task(adapter)
    batch = task.encode(task.causal_model.sample(5, seed=2))
    resid, logits = _read(adapter, batch, cv.Site(-1, None))  # [n, seq, d] after the last block
    last = resid[torch.arange(len(batch)), batch.read]
    torch.testing.assert_close(adapter.unembed(last), logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(cv.ModelError, match="has no unembedding"):
        cv.TorchModel(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())).unembed(last)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2", "falcon"])
def test_mlp_hidden_is_the_input_of_the_mlps_output_projection(family, tokenizer):
    """``mlp_hidden`` reads the MLP's neurons ``[n, seq, d_mlp]`` (GPT-2: act(c_fc x); gated MLPs:
    act(gate x) * up x; Falcon: act(dense_h_to_4h x)): its output projection is the MLP's output
    (``mlp_out``), and adding 1 to one neuron moves ``mlp_out`` by that neuron's output column (Gemma 2:
    through the norm after the MLP)."""
    adapter = _tiny(family, tokenizer)
    task = prompt_task(adapter)
    batch = task.encode(task.causal_model.sample(5, seed=2))
    clean = adapter.forward(batch)
    site = cv.Site(1, None, "mlp_hidden")
    hidden, _ = _read(adapter, batch, site)
    mlp_out, _ = _read(adapter, batch, cv.Site(1, None, "mlp_out"))
    mlp = adapter.submodule(adapter.block_paths[1]).mlp
    proj = getattr(mlp, "down_proj", None) or getattr(mlp, "dense_4h_to_h", None) or mlp.c_proj
    d_mlp = {"gpt2": 128, "falcon": 48}.get(family, 64)  # GPT-2: 4·d by default; the others: as configured
    assert hidden.shape == (*batch.inputs["input_ids"].shape, d_mlp)
    if not hasattr(adapter.submodule(adapter.block_paths[1]), "pre_feedforward_layernorm"):
        torch.testing.assert_close(proj(hidden), mlp_out, atol=1e-5, rtol=1e-5)
    assert torch.equal(_write(adapter, batch, site, lambda x: x.clone()), clean)
    bumped = hidden.clone()
    bumped[..., 3] += 1.0
    seen = {}
    h1 = adapter.hook(site, lambda x: bumped)
    h2 = adapter.hook(cv.Site(1, None, "mlp_out"), lambda x: seen.__setitem__("after", x.detach().clone()))
    try:
        adapter.forward(batch)
    finally:
        h1.remove(), h2.remove()
    if not hasattr(adapter.submodule(adapter.block_paths[1]), "pre_feedforward_layernorm"):
        column = proj.weight[3] if type(proj).__name__ == "Conv1D" else proj.weight[:, 3]
        torch.testing.assert_close(seen["after"] - mlp_out, column.expand_as(mlp_out), atol=1e-5, rtol=1e-5)
    else:  # Gemma 2 normalises the MLP's output after the projection: the change goes through that norm
        assert not torch.allclose(seen["after"], mlp_out)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_mlp_hidden_is_the_same_through_transformerlens(family, tokenizer):
    """TransformerLens's ``mlp.hook_post`` of the same weights carries the same neurons as HF's ``mlp_hidden``."""
    pytest.importorskip("transformer_lens")
    from causalvar.models.tlens import TLModel
    from test_tlens import hooked_from_hf

    hf = make_lm(family, len(tokenizer))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cv.models.base.FastPathWarning)
        adapter, tlm = cv.HFModel(hf, tokenizer), TLModel(hooked_from_hf(family, hf), tokenizer)
    task = prompt_task(adapter)
    batch = task.encode(task.causal_model.sample(5, seed=2))
    mask = batch.inputs["attention_mask"].bool()  # real tokens only (the padding's activations differ)
    site = cv.Site(1, None, "mlp_hidden")
    torch.testing.assert_close(_read(tlm, batch, site)[0][mask], _read(adapter, batch, site)[0][mask],
                               atol=1e-4, rtol=1e-4)
