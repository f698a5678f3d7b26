"""The TransformerLens adapter on HookedTransformers built offline from the same tiny weights as the HF
models: identical logits, sites and IIA to the HF adapter."""
from __future__ import annotations

import warnings

import pytest
import torch

import causalvar as cv
from causalvar.models.tlens import TLModel, is_hooked_transformer
from featurizers import DAS, Neurons

from conftest import make_lm, prompt_task

tl = pytest.importorskip("transformer_lens")


def hooked_from_hf(family: str, hf):
    """A HookedTransformer with ``hf``'s weights (GPT-2, or Llama with grouped-query attention)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights, convert_llama_weights

    c = hf.config
    common = dict(n_layers=c.num_hidden_layers, d_model=c.hidden_size, n_heads=c.num_attention_heads,
                  d_head=c.hidden_size // c.num_attention_heads, d_vocab=c.vocab_size, n_ctx=64,
                  default_prepend_bos=False)
    if family == "gpt2":
        cfg = HookedTransformerConfig(**common, d_mlp=4 * c.hidden_size, act_fn="gelu_new",
                                      normalization_type="LN", eps=c.layer_norm_epsilon,
                                      positional_embedding_type="standard", original_architecture="GPT2LMHeadModel")
        state = convert_gpt2_weights(hf, cfg)
    else:
        cfg = HookedTransformerConfig(**common, d_mlp=c.intermediate_size, act_fn="silu", gated_mlp=True,
                                      normalization_type="RMS", eps=c.rms_norm_eps, final_rms=True,
                                      positional_embedding_type="rotary", rotary_dim=c.hidden_size // c.num_attention_heads,
                                      rotary_base=c.rope_parameters["rope_theta"] if hasattr(c, "rope_parameters") else c.rope_theta,
                                      n_key_value_heads=c.num_key_value_heads, original_architecture="LlamaForCausalLM")
        state = convert_llama_weights(hf, cfg)
    model = HookedTransformer(cfg)
    model.load_state_dict(state, strict=False)
    return model.eval()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request, tokenizer):
    hf = make_lm(request.param, len(tokenizer))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cv.models.base.FastPathWarning)
        return request.param, cv.HFModel(hf, tokenizer), TLModel(hooked_from_hf(request.param, hf), tokenizer)


def test_same_logits_and_sites_as_the_hf_adapter(pair):
    family, hf, tlm = pair
    assert is_hooked_transformer(tlm.module) and tlm.block_paths == ["blocks.0", "blocks.1", "blocks.2"]
    task = prompt_task(hf)
    batch = task.encode(task.causal_model.sample(6, seed=3))  # left-padded prompts of different lengths
    torch.testing.assert_close(tlm.forward(batch), hf.forward(batch), atol=1e-4, rtol=1e-4)
    _same_sites(hf, tlm, batch)


def _same_sites(ref, other, batch):
    """Every canonical site of layers 1-2 reads the same activation from both adapters (real tokens)."""
    for site in [cv.Site(1, None, c) for c in ("resid_pre", "resid_post", "attn_out", "mlp_out")] + \
            [cv.Site(2, None, "head", head=3)]:
        got = []
        for adapter in (ref, other):
            handle = adapter.hook(site, lambda h: got.append(h.detach().clone()))
            try:
                adapter.forward(batch)
            finally:
                handle.remove()
        real = batch.inputs["attention_mask"].bool()  # padded positions may differ
        torch.testing.assert_close(got[1][real], got[0][real], atol=1e-4, rtol=1e-4, msg=str(site))


def test_same_iia_as_the_hf_adapter(pair):
    family, hf, tlm = pair
    tables = {}
    for name, adapter in (("hf", hf), ("tl", tlm)):
        task = prompt_task(adapter)
        res = cv.localize(adapter, task, "io", [Neurons(), Neurons(dims=range(0, 32, 2))], layers=[0, 2],
                          positions=["io", "last"], n_train=0, n_test=24, filter_correct=False, progress=False)
        tables[name] = res.table
    assert tables["tl"]["iia"].tolist() == tables["hf"]["iia"].tolist()


def test_suffix_runs_equal_full_hooked_forwards(pair):
    """Suffix execution through ``start_at_layer`` gives the logits of hooking the whole forward."""
    family, hf, tlm = pair
    task = prompt_task(tlm)
    ds = cv.CounterfactualDataset.generate(task.causal_model, "io", 8, seed=5)
    engine = cv.Engine(tlm, batch_size=4)
    bases, sources = task.encode(ds.bases), task.encode(ds.sources)
    site = cv.Site(1, "io")
    _, acts = engine.capture(sources, [site])
    prepared = engine.prepare(bases, [site])
    torch.manual_seed(0)
    das = DAS(dim=4).build(32).eval()
    suffix = engine.run(prepared, site, das, acts[site])
    pos = bases.position("io")
    handle = tlm.hook(site, lambda h: h.index_put(
        (torch.arange(len(pos)), pos), das.interchange(h[torch.arange(len(pos)), pos], acts[site])))
    try:
        full = tlm.forward(bases)
    finally:
        handle.remove()
    torch.testing.assert_close(suffix, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_greedy_generation_matches_the_hf_adapter(pair, side):
    family, hf, tlm = pair
    hf.padding_side = tlm.padding_side = side
    try:
        task = prompt_task(hf)
        batch = task.encode(task.causal_model.sample(5, seed=7))
        assert torch.equal(tlm.generate(batch, 3), hf.generate(batch, 3))
    finally:
        hf.padding_side = tlm.padding_side = "left"


def test_kv_reuse_off_is_said(tokenizer):
    hf = make_lm("gpt2", len(tokenizer))
    with pytest.warns(cv.models.base.FastPathWarning, match="key/value reuse is off"):
        tlm = TLModel(hooked_from_hf("gpt2", hf), tokenizer)
    assert tlm.fast_paths == {"suffix": True, "reuse_kv": False} and "recomputes" in tlm.why_not["reuse_kv"]
    with pytest.raises(cv.ModelError, match="wraps a TransformerLens HookedTransformer"):
        TLModel(hf, tokenizer)
    hooked = hooked_from_hf("gpt2", hf)
    hooked.tokenizer = tokenizer
    with pytest.warns(cv.models.base.FastPathWarning):
        wrapped = cv.as_adapter(hooked)  # it has .blocks, but it is no plain torch module
    assert type(wrapped) is TLModel and wrapped.tokenizer is tokenizer


def test_transformer_bridge_gives_the_hf_adapters_logits_sites_and_iia(tokenizer, tmp_path):
    """TransformerLens 4's TransformerBridge, booted offline around a tiny GPT-2: the same numbers as the
    HF adapter on a twin of the same weights (the bridge switches its model to eager attention)."""
    from transformer_lens.model_bridge import TransformerBridge

    from causalvar.models.tlens import BridgeModel

    hf = make_lm("gpt2", len(tokenizer))
    hf.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(str(tmp_path), hf_model=make_lm("gpt2", len(tokenizer)),
                                                     tokenizer=tokenizer)
    with pytest.warns(cv.models.base.FastPathWarning, match="suffix execution is off"):
        wrapped = cv.as_adapter(bridge)
    assert type(wrapped) is BridgeModel and wrapped.fast_paths == {"suffix": False, "reuse_kv": False}
    ref = cv.HFModel(hf, tokenizer)
    task = prompt_task(ref)
    batch = task.encode(task.causal_model.sample(6, seed=3))
    torch.testing.assert_close(wrapped.forward(batch), ref.forward(batch), atol=1e-4, rtol=1e-4)
    _same_sites(ref, wrapped, batch)
    tables = [cv.localize(a, prompt_task(a), "io", Neurons(), layers=[0, 2], positions=["io", "last"], n_train=0,
                          n_test=16, filter_correct=False, progress=False).table for a in (ref, wrapped)]
    assert tables[0]["iia"].tolist() == tables[1]["iia"].tolist()
