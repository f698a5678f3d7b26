"""Activation patching on tiny real networks: the ends of the scale, a hand computation of the normalised
logit difference and of a head patch through the output projection, the errors and GN's seeding."""
from __future__ import annotations

import pytest
import torch

import causalvar as cv
from causalvar.metrics import MetricError
from causalvar.patching import compare, difference, patch
from conftest import make_lm, make_tokenizer, name_causal_model, name_prompt, prompt_task


@pytest.fixture(scope="module")
def gpt2():
    tok = make_tokenizer()
    adapter = cv.HFModel(make_lm("gpt2", len(tok)), tok)
    return adapter, prompt_task(adapter)


def _value(res, **where) -> float:
    t = res.table
    for k, v in where.items():
        t = t[t[k] == v]
    assert len(t) == 1
    return float(t[res.metric].iloc[0])


@pytest.mark.parametrize("corruption", ["str", "gn"])
def test_the_last_layer_residual_at_the_read_position_restores_everything(gpt2, corruption):
    adapter, task = gpt2
    gn = dict(noise_positions=["io", "s2"], contrast="s") if corruption == "gn" else {}
    kw = dict(variable=None if gn else "io", corruption=corruption, layers=[2], positions=["io", "last"], n=12,
              progress=False, **gn)
    denoised = patch(adapter, task, direction="denoise", **kw)
    noised = patch(adapter, task, direction="noise", **kw)
    assert denoised.metric == "logit_diff_norm"
    assert _value(denoised, position="last") == pytest.approx(1.0, abs=1e-5)  # the logits are the clean run's
    assert _value(noised, position="last") == pytest.approx(0.0, abs=1e-5)  # the corrupted run's
    assert _value(denoised, position="io") == pytest.approx(0.0, abs=1e-5)  # nothing reads it after the last block
    row = denoised.table.iloc[0]
    assert (row["corruption"], row["metric"], row["direction"], row["component"]) == (corruption, "logit_diff",
                                                                                      "denoise", "resid")
    assert not row["filter_correct"] and "every pair is used" in str(denoised.meta["data"])
    assert denoised.title.startswith(f"{corruption.upper()} · logit_diff_norm · denoise")


def _tokens(tok, prompts):
    return tok(prompts, return_tensors="pt")["input_ids"]


def test_the_normalised_logit_difference_of_a_cell_matches_a_hand_computation(gpt2):
    """Layer 1's residual at the IO's token, denoised, by plain torch hooks on the HF model."""
    adapter, task = gpt2
    res = patch(adapter, task, "io", layers=[1], positions="io", n=10, seed=4, progress=False)
    ds = task.counterfactual_sets("io", 10, seed=4, changes_output=True)[0]
    model, tok = adapter.module, adapter.tokenizer
    clean_ids, corrupt_ids = _tokens(tok, [name_prompt(s) for s in ds.bases]), _tokens(tok, [name_prompt(s) for s in ds.sources])
    where = lambda ids, settings: torch.tensor([row.tolist().index(tok.convert_tokens_to_ids(s["a"]))
                                                for row, s in zip(ids, settings)])
    p_clean, p_corrupt = where(clean_ids, ds.bases), where(corrupt_ids, ds.sources)
    rows = torch.arange(len(ds))
    with torch.no_grad():
        clean = model(clean_ids, output_hidden_states=True)
        h_clean = clean.hidden_states[2][rows, p_clean]  # block 1's output at the clean IO token
        corrupt = model(corrupt_ids).logits[:, -1]

        def write(module, args, out):
            h = out[0] if isinstance(out, tuple) else out
            h = h.clone()
            h[rows, p_corrupt] = h_clean
            return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h
        handle = model.transformer.h[1].register_forward_hook(write)
        try:
            patched = model(corrupt_ids).logits[:, -1]
        finally:
            handle.remove()
    r, r2 = task.targets(ds.base_labels), task.targets(ds.source_labels)
    ld = lambda logits: (logits[rows, r] - logits[rows, r2]).double().mean()
    want = float((ld(patched) - ld(corrupt)) / (ld(clean.logits[:, -1]) - ld(corrupt)))
    # a random network: the clean-corrupt gap is small, so float noise (threads) is amplified by ~1e3
    assert _value(res, layer=1) == pytest.approx(want, rel=1e-3)


def test_a_head_patch_on_grouped_query_llama_matches_the_output_projection_by_hand():
    """Head h of layer 1 at the last token, denoised: the corrupted run's attention output plus
    (z_clean[h] − z_corrupt[h]) through head h's columns of o_proj, with 4 query heads sharing 2 key/value heads."""
    tok = make_tokenizer()
    model = make_lm("llama", len(tok))
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    adapter = cv.HFModel(model, tok)
    task = prompt_task(adapter)
    res = patch(adapter, task, "io", component="heads", layers=[1], positions="last", n=8, seed=2, progress=False)
    assert sorted(res.table["head"]) == [0, 1, 2, 3] and res.heatmap().axes[0].get_xlabel() == "head"
    ds = task.counterfactual_sets("io", 8, seed=2, changes_output=True)[0]
    clean_ids, corrupt_ids = _tokens(tok, [name_prompt(s) for s in ds.bases]), _tokens(tok, [name_prompt(s) for s in ds.sources])
    attn = model.model.layers[1].self_attn
    d_head = model.config.hidden_size // model.config.num_attention_heads
    rows = torch.arange(len(ds))

    def z_of(ids):  # o_proj's input at the last token: [n, n_heads * d_head]
        seen = {}
        handle = attn.o_proj.register_forward_pre_hook(lambda m, args: seen.__setitem__("z", args[0][:, -1]))
        try:
            logits = model(ids).logits[:, -1]
        finally:
            handle.remove()
        return seen["z"], logits

    r, r2 = task.targets(ds.base_labels), task.targets(ds.source_labels)
    ld = lambda logits: (logits[rows, r] - logits[rows, r2]).double().mean()
    with torch.no_grad():
        z_clean, clean = z_of(clean_ids)
        z_corrupt, corrupt = z_of(corrupt_ids)
        for h in range(4):
            cols = slice(h * d_head, (h + 1) * d_head)
            delta = (z_clean[:, cols] - z_corrupt[:, cols]) @ attn.o_proj.weight[:, cols].T  # [n, d]

            def add(module, args, out, delta=delta):
                a = out[0].clone()
                a[:, -1] += delta
                return (a,) + tuple(out[1:])
            handle = attn.register_forward_hook(add)
            try:
                patched = model(corrupt_ids).logits[:, -1]
            finally:
                handle.remove()
            want = float((ld(patched) - ld(corrupt)) / (ld(clean) - ld(corrupt)))
            assert _value(res, head=h) == pytest.approx(want, abs=1e-4)


def test_a_corruption_that_changes_nothing_is_an_error_not_a_nan(gpt2):
    adapter, task = gpt2
    same = cv.CounterfactualDataset.generate(task.causal_model, "io", 6, source=lambda base, rng: dict(base))
    with pytest.raises(MetricError, match="the corruption changes nothing"):
        patch(adapter, task, data=same, layers=[1], progress=False)
    flip = lambda base, rng: {**base, "order": "BAB" if base["order"] == "ABB" else "ABB"}  # the same answer
    same_answer = cv.CounterfactualDataset.generate(task.causal_model, "io", 6, source=flip)
    with pytest.raises(ValueError, match="the contrast answer r' is the clean answer r"):
        patch(adapter, task, data=same_answer, layers=[1], progress=False)


def test_prompts_of_different_token_lengths_are_refused_naming_the_pair(gpt2):
    adapter, _ = gpt2
    longer = lambda s: name_prompt(s) + (" then" if s["order"] == "BAB" else "")
    task = cv.PromptTask(adapter, name_causal_model(), prompt=longer, answer=lambda v: " " + v,
                         positions={"io": cv.word("a")})
    flip = lambda base, rng: {**base, "order": "BAB" if base["order"] == "ABB" else "ABB"}
    data = cv.CounterfactualDataset.generate(task.causal_model, "io", 6, seed=1, source=flip)
    with pytest.raises(ValueError, match=r"pair 0 of set 'random' has prompts of different token lengths: "
                                         r"clean 'When .*' \(\d+ tokens\) and corrupted"):
        patch(adapter, task, data=data, layers=[0], progress=False)


def test_gaussian_noise_is_reproducible_under_a_seed_and_differs_across_seeds(gpt2, tmp_path):
    adapter, task = gpt2
    kw = dict(corruption="gn", noise_positions=["io"], contrast="s", layers=[0, 1], positions=["io", "last"], n=8,
              progress=False)
    a, again, other = patch(adapter, task, seed=0, **kw), patch(adapter, task, seed=0, **kw), patch(adapter, task, seed=1, **kw)
    assert a.table["logit_diff_norm"].tolist() == again.table["logit_diff_norm"].tolist()
    assert (difference(a, other).abs().to_numpy() > 1e-4).any()
    assert a.meta["noise_std"] == pytest.approx(3 * float(adapter.module.get_input_embeddings().weight.std()))
    a.heatmap(tmp_path / "gn.png")
    s = patch(adapter, task, "io", layers=[0, 1], positions=["io", "last"], n=8, progress=False)
    compare(a, s, tmp_path / "gn_vs_str.png")
    a.save(tmp_path / "run")
    assert {"gn.png", "gn_vs_str.png"} <= {p.name for p in tmp_path.iterdir()}
    assert (tmp_path / "run" / "results.csv").read_text().startswith("component,layer,position,head,logit_diff_norm")
    back = cv.patching.PatchingResults.load(tmp_path / "run")
    assert back.title == a.title and back.table["logit_diff_norm"].tolist() == a.table["logit_diff_norm"].tolist()


def test_windows_are_labelled_warned_about_and_agree_with_single_layer_cells(gpt2):
    adapter, task = gpt2
    kw = dict(variable="io", component="attn", positions=["io", "last"], n=8, progress=False)
    with pytest.warns(cv.patching.PatchingWarning, match="windows exaggerate localization"):
        win = patch(adapter, task, layers=[0, 1, 2], window=2, **kw)
    assert list(dict.fromkeys(win.table["layer"])) == ["0-1", "1-2", "2-2"] and set(win.table["window"]) == {2}
    single = patch(adapter, task, layers=[2], **kw)  # the window cut at the last block is one layer
    for pos in ["io", "last"]:
        assert _value(win, layer="2-2", position=pos) == pytest.approx(_value(single, position=pos), abs=1e-5)
    assert "0-1" in [t.get_text() for t in win.heatmap().axes[0].get_yticklabels()]


def test_probability_and_iia_of_the_last_layer_residual(gpt2):
    adapter, task = gpt2
    kw = dict(variable="io", layers=[2], positions="last", n=10, seed=5, progress=False)
    prob, iia = patch(adapter, task, metric="prob", **kw), patch(adapter, task, metric="iia", **kw)
    ds = task.counterfactual_sets("io", 10, seed=5, changes_output=True)[0]
    engine = cv.Engine(adapter)
    clean, _ = engine.capture(task.encode(ds.bases), [])
    corrupt, _ = engine.capture(task.encode(ds.sources), [])
    r, rows = task.targets(ds.base_labels), torch.arange(len(ds))
    p = lambda logits: logits.softmax(-1)[rows, r]
    assert _value(prob) == pytest.approx(float((p(clean) - p(corrupt)).mean()), abs=1e-5)
    # denoised at the last block the run is the clean one; the causal model's label is the clean answer
    assert _value(iia) == pytest.approx(float(task.correct(clean, ds.base_labels).float().mean()))
    with pytest.raises(ValueError, match="metric 'iia' needs the causal model"):
        patch(adapter, task, corruption="gn", metric="iia", noise_positions=["io"], contrast="s", layers=[2])


def test_gaussian_noise_gives_the_same_numbers_through_transformer_lens(gpt2):
    pytest.importorskip("transformer_lens")
    import warnings

    from test_tlens import hooked_from_hf

    adapter, task = gpt2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tlm = cv.TLModel(hooked_from_hf("gpt2", adapter.module), adapter.tokenizer)
    assert tlm.embedding_std == pytest.approx(adapter.embedding_std, rel=1e-5)
    kw = dict(corruption="gn", noise_positions=["io", "s2"], contrast="s", layers=[0, 1], positions=["io", "last"],
              n=8, progress=False)
    hf, tl = patch(adapter, task, **kw), patch(tlm, prompt_task(tlm), **kw)
    torch.testing.assert_close(torch.tensor(tl.table["logit_diff_norm"].tolist()),
                               torch.tensor(hf.table["logit_diff_norm"].tolist()), atol=1e-3, rtol=1e-3)


def test_probability_of_an_answer_the_corrupted_run_never_gives_is_warned_about(tokenizer):
    model = make_lm("gpt2", len(tokenizer))
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(300)  # sharp logits: the corrupted run's argmax takes all the mass
    adapter = cv.HFModel(model, tokenizer)
    with pytest.warns(cv.patching.PatchingWarning, match="cannot go below 0"):
        patch(adapter, prompt_task(adapter), "io", metric="prob", layers=[2], n=10, progress=False)


def test_every_token_index_for_prompts_of_one_template(gpt2):
    adapter, task = gpt2
    res = patch(adapter, task, "io", layers=[2], positions=None, n=6, progress=False)
    n_tokens = len(name_prompt(task.causal_model.sample(1)[0]).split())
    assert res.table["position"].tolist() == list(range(n_tokens))
    assert _value(res, position=n_tokens - 1) == pytest.approx(1.0, abs=1e-5)  # the read position
    with pytest.raises(ValueError, match="no pair of set 'random' is left: filter_correct"):
        patch(adapter, task, "io", layers=[2], n=6, filter_correct=True, progress=False)  # a random net is never right
    with pytest.raises(ValueError, match="component='heads' patches every head of a layer at one position"):
        patch(adapter, task, "io", component="heads", positions=["io", "last"], progress=False)
    with pytest.raises(ValueError, match="corruption='gn' needs noise_positions"):
        patch(adapter, task, corruption="gn", contrast="s", progress=False)


def test_ioi_names_its_corruptions_so_str_needs_no_data():
    """IOI's STR corruptions keep the prompt's length (one-token names), so ``cv.patch(lm, ioi, variable)``
    runs on the task's own draws, and the last block's residual restores the clean run exactly."""
    from test_ioi_logit_diff import ioi_tokenizer

    tok = ioi_tokenizer()
    lm = cv.HFModel(make_lm("llama", len(tok)), tok)
    task = cv.tasks.ioi(lm)
    for variable in ("output_token", "output_position"):
        res = patch(lm, task, variable, layers=[0, lm.n_layers - 1], positions=["io", "last"], n=12, progress=False)
        assert _value(res, layer=lm.n_layers - 1, position="last") == pytest.approx(1.0, abs=1e-5)
        assert set(res.table["n"]) == {12}


def linear_tail_gpt2():
    """A tiny GPT-2 whose last block's output reaches the logits linearly: no final LayerNorm and the last
    MLP's output projection zero (its bias a constant), so the logit difference is linear in the last
    block's residual, attention output and head outputs."""
    tok = make_tokenizer()
    model = make_lm("gpt2", len(tok))
    model.transformer.ln_f = torch.nn.Identity()
    with torch.no_grad():
        model.transformer.h[-1].mlp.c_proj.weight.zero_()
    adapter = cv.HFModel(model, tok)
    return adapter, prompt_task(adapter)


@pytest.mark.parametrize("component,positions", [("resid", ["io", "last"]), ("attn", ["io", "last"]),
                                                 ("heads", "last"), ("heads", None)])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_attribution_equals_exact_patching_where_the_network_is_linear_in_the_activation(component, positions,
                                                                                       direction):
    """At the last block of ``linear_tail_gpt2`` the first-order estimate is the patch itself: every cell
    (and its bootstrap interval) agrees with exact patching; a head at every token index together (positions
    None, one forward writing all of them) is the sum of its per-position estimates."""
    adapter, task = linear_tail_gpt2()
    kw = dict(component=component, direction=direction, layers=[2], positions=positions, n=10, seed=1, progress=False)
    exact = patch(adapter, task, "io", **kw)
    fast = patch(adapter, task, "io", method="attribution", **kw)
    labels, numbers = ["layer", "position", "head", "n"], ["logit_diff_norm", "ci_low", "ci_high", "baseline"]
    assert fast.table[labels].equals(exact.table[labels])
    # float32 runs of a random network: its small clean-corrupt gap amplifies rounding (~1e-6) by ~1e3
    assert fast.table[numbers].to_numpy().flatten() == pytest.approx(exact.table[numbers].to_numpy().flatten(), abs=1e-3)
    assert set(fast.table["method"]) == {"attribution"} and fast.title.endswith("attribution · every pair")
    if positions is None:
        assert set(exact.table["position"]) == {"all"} and len(exact.table) == adapter.n_heads


def test_attribution_differs_from_exact_where_the_network_is_not_linear(gpt2):
    """Before the last block (layer norms, MLPs, attention in between) the estimate is only first-order: it
    differs from the exact patch, and attribution of IIA (no gradient) is refused."""
    adapter, task = gpt2
    kw = dict(layers=[0, 2], positions=["io", "last"], n=10, seed=1, progress=False)
    exact, fast = patch(adapter, task, "io", **kw), patch(adapter, task, "io", method="attribution", **kw)
    diff = (exact.table["logit_diff_norm"] - fast.table["logit_diff_norm"]).abs()
    assert diff.max() > 1e-3
    with pytest.raises(ValueError, match="method='attribution' linearises a differentiable metric"):
        patch(adapter, task, "io", metric="iia", method="attribution", progress=False)
    with pytest.raises(ValueError, match="method must be one of"):
        patch(adapter, task, "io", method="fast", progress=False)
