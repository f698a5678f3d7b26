"""Canonical sites read and written by the adapters: residual stream, attention and MLP outputs, heads."""
from __future__ import annotations

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
