"""Featurizers: one conformance suite every featurizer passes (round trip, self-interchange, save/load,
dtype moves, clone, size checks), then checks specific to each featurizer. Real tensors throughout; the
SAEs are trained by sae-lens on the random activations."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from featurizers import (DAS, DBM, PCA, SAE, BoundlessDAS, Featurizer, FeaturizerError, Neurons,
                         Subspace, SupervisedDictionary, Tags)
from featurizers.testing import check_featurizer

D, N = 16, 200
SAE_FAST = dict(train_tokens=6_400, batch_size=64)


def acts(n: int = N, d: int = D, seed: int = 0) -> torch.Tensor:
    """Random activations ``[n, d]`` with a non-zero mean and uneven scales."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) * torch.linspace(0.5, 3.0, d) + 0.7).contiguous()


H = acts()
LABELS = torch.arange(N) % 3

CASES = {
    "neurons": lambda: Neurons(),
    "neurons_dims": lambda: Neurons(dims=[0, 3, 5]),
    "das": lambda: DAS(dim=4),
    "das_full": lambda: DAS(),
    "boundless_das": lambda: BoundlessDAS(),
    "pca": lambda: PCA(),
    "pca_k_std": lambda: PCA(n_components=4, standardize=True),
    "sae": lambda: SAE(**SAE_FAST),
    "sae_topk_dims": lambda: SAE(k=4, dims=[1, 2, 7], **SAE_FAST),
    "sae_object": lambda: SAE(sae=_fitted("sae_topk_dims").sae),
    "supervised": lambda: SupervisedDictionary(),
    "dbm_neurons": lambda: DBM(Neurons(), l1=1e-3),
    "dbm_pca": lambda: DBM(PCA(n_components=4)),
    "dbm_sae": lambda: DBM(SAE(k=4, **SAE_FAST)),
    "subspace": lambda: Subspace.from_matrix(torch.linalg.qr(torch.randn(D, 5)).Q, dims=[0, 2]),
}
_CACHE: dict[str, Featurizer] = {}


def _fitted(case: str) -> Featurizer:
    """The case's featurizer fitted on ``H`` (cached; trainable parameters set to non-trivial values)."""
    if case not in _CACHE:
        torch.manual_seed(0)
        feat = CASES[case]().fit_activations(H, LABELS)
        if isinstance(feat, DBM):
            feat.logits.data = torch.randn(feat.k)
        _CACHE[case] = feat
    return _CACHE[case]


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------ conformance
@pytest.mark.parametrize("name", list(CASES))
def test_check_featurizer(name):
    """Every featurizer passes the public conformance suite (featurizers.testing.check_featurizer)."""
    feat = CASES[name]()
    checked = check_featurizer(feat, d=D)
    assert checked is not feat and feat.d in (None, D) and checked.d == D


class _DropsTheError(Neurons):
    """A broken featurizer: its decode forgets the error term."""

    def encode(self, h):
        return h[..., :2], h - torch.nn.functional.pad(h[..., :2], (0, h.shape[-1] - 2))

    def decode(self, f, err):
        return torch.nn.functional.pad(f, (0, err.shape[-1] - f.shape[-1]))

    def interchange(self, h_base, h_source):
        return Featurizer.interchange(self, h_base, h_source)


def test_check_featurizer_names_the_check_a_broken_featurizer_fails():
    with pytest.raises(AssertionError, match=r"check_featurizer\(full_vector\): round trip"):
        check_featurizer(_DropsTheError())


def test_tags_declare_what_each_featurizer_is():
    tags = {name: CASES[name]().tags for name in CASES}
    assert tags["das"] == Tags(linear=True, invertible=True, learns_from=("interventions",))
    assert tags["pca"].learns_from == ("activations",) and tags["neurons"].learns_from == ()
    assert not tags["sae"].linear and tags["sae_object"].learns_from == ()  # a given SAE is not retrained
    assert tags["supervised"] == Tags(linear=True, invertible=False, learns_from=("activations",))
    assert tags["dbm_pca"].learns_from == ("activations", "interventions") and not tags["dbm_sae"].invertible
    assert DAS().name == DAS().build(D).name == "das(k=d)"  # a name is fixed at construction


def test_saved_files_and_clones_keep_what_they_hold(tmp_path):
    feat = _fitted("sae_object")
    assert feat.clone().sae is feat.sae  # a given SAE is shared, not retrained
    das = DAS(dim=3).build(D)
    das.save(tmp_path)
    meta = json.loads((tmp_path / "featurizer.json").read_text())
    assert meta["class"] == "DAS" and meta["d"] == D and meta["config"] == {"dim": 3}


def test_unfitted_use_refused():
    for feat in (PCA(), SAE(), SupervisedDictionary(), DBM(PCA())):
        with pytest.raises(FeaturizerError, match="fitted"):
            feat.check_ready(D)
    with pytest.raises(FeaturizerError, match="not been built"):
        DAS().save("/nonexistent")


# ------------------------------------------------------------------------------------------ DAS
def test_das_full_dimension_is_full_vector_interchange():
    torch.manual_seed(0)
    das = DAS().build(D)
    hb, hs = acts(seed=1), acts(seed=2)
    _close(das.interchange(hb, hs), hs)
    assert das.name == "das(k=d)"


def test_das_subspace_interchange_and_orthonormal_after_training():
    torch.manual_seed(0)
    das = DAS(dim=4).build(D)
    assert das.name == "das(k=4)" and das.learns_from_interventions
    R0 = das.R.detach().clone()
    _close(R0.T @ R0, torch.eye(4))
    hb, hs, target = acts(seed=1), acts(seed=2), acts(seed=4)
    _close(das.interchange(hb, hs), hb + (hs - hb) @ R0 @ R0.T)
    opt = torch.optim.AdamW(das.parameters(), lr=0.05)
    for _ in range(5):
        loss = (das.interchange(hb, hs) - target).pow(2).mean()
        opt.zero_grad(), loss.backward(), opt.step()
    R = das.R.detach()
    assert (R - R0).abs().max() > 1e-3  # it moved ...
    _close(R.T @ R, torch.eye(4))  # ... and stayed orthonormal


def test_das_deterministic_from_global_rng():
    torch.manual_seed(7)
    a = DAS(dim=3).build(D).R
    torch.manual_seed(7)
    b = DAS(dim=3).build(D).R
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("d,k", [(96, 8), (96, 48), (96, 60), (12, 12)])  # rank 2k < d, 2k = d, 2k > d, square
def test_das_rotation_is_torchs_matrix_exp_orthogonal_map(d, k):
    """OrthogonalExp (the exponential in rank 2k when 2k < d) is the function, the initialisation and the
    state of torch's ``orthogonal(..., orthogonal_map="matrix_exp")``, gradients included, against a
    float64 reference of torch's map."""
    from torch import nn
    from torch.nn.utils.parametrizations import orthogonal

    torch.manual_seed(3)
    ref = orthogonal(nn.Linear(d, k, bias=False), orthogonal_map="matrix_exp")
    torch.manual_seed(3)
    das = DAS(dim=k).build(d) if k < d else BoundlessDAS().build(d)
    ours = das.rotate
    assert ours.state_dict().keys() == ref.state_dict().keys()
    _close(ours.parametrizations.weight[0].base, ref.parametrizations.weight[0].base)  # same start, same RNG
    ref = ref.double()
    X, g = torch.randn(k, d) * 0.3, torch.randn(k, d)
    with torch.no_grad():
        ref.parametrizations.weight.original.copy_(X)
        ours.parametrizations.weight.original.copy_(X)
    for m in (ref, ours):
        (m.weight * g.to(m.weight.dtype)).sum().backward()
    torch.testing.assert_close(ours.weight.double(), ref.weight, atol=1e-5, rtol=0)
    _close(ours.weight @ ours.weight.T, torch.eye(k))
    grad_ref = ref.parametrizations.weight.original.grad
    grad = ours.parametrizations.weight.original.grad.double()
    assert (grad - grad_ref).abs().max() <= 1e-4 * grad_ref.abs().max()


def test_boundless_das_masks_and_boundary():
    torch.manual_seed(0)
    bd = BoundlessDAS().build(D)
    bd.set_progress(0.0)
    assert bd.tau == 8.0 and 0.4 < bd.soft_mask().mean() < 0.6  # hot: a wide band around the boundary mixed
    bd.set_progress(1.0)
    soft = bd.soft_mask().detach()
    assert bd.tau == pytest.approx(0.1)
    assert int((soft > 0.99).sum()) == D // 2 and abs(float(soft.sum()) - D / 2) <= 1
    assert int(bd.mask().sum()) == D // 2 and bool(bd.mask()[: D // 2].all())
    assert bd.summary() == {"size": D // 2} and float(bd.regularizer().detach()) == pytest.approx(0.5)
    bd.eval()
    hb, hs = acts(seed=1), acts(seed=2)
    Rm = bd.R.detach()[:, : D // 2]
    _close(bd.interchange(hb, hs), hb + (hs - hb) @ Rm @ Rm.T)
    bd.train()  # the boundary learns through the soft mask and the penalty
    (bd.interchange(hb, hs).pow(2).mean() + bd.regularizer()).backward()
    assert bd.boundary.grad is not None and bd.boundary.grad != 0
    bd.boundary.data.fill_(3.0)  # clamped to 1
    assert bd.summary() == {"size": D} and float(bd.regularizer().detach()) == 1.0


# ------------------------------------------------------------------------------------------ DBM
@pytest.mark.parametrize("inner", ["neurons", "pca", "sae"])
def test_dbm_hard_masks(inner):
    dbm = copy.deepcopy(_fitted(f"dbm_{inner}")).eval()
    hb, hs = acts(seed=1), acts(seed=2)
    dbm.logits.data.fill_(20.0)
    assert dbm.summary() == {"kept": dbm.k, "of": dbm.k}
    full = dbm.featurizer.clone() if isinstance(dbm.featurizer, Neurons) else dbm.featurizer
    if isinstance(full, PCA):
        full = copy.deepcopy(full)
        full.n_components = None  # the inner featurizer's full interchange
    _close(dbm.interchange(hb, hs), full.build(D).interchange(hb, hs))
    dbm.logits.data.fill_(-20.0)
    assert dbm.summary()["kept"] == 0
    _close(dbm.interchange(hb, hs), hb)


def test_dbm_soft_mask_annealing_and_penalty():
    dbm = DBM(SAE(k=4, **SAE_FAST), l1=0.1)
    torch.manual_seed(0)
    dbm.fit_activations(H)
    assert dbm.k == 4 * D and dbm.logits.shape == (4 * D,)  # an SAE has k ≠ d
    assert dbm.summary() == {"kept": 0, "of": 4 * D}  # logits start at 0: σ(0) = 0.5 is not > 0.5
    dbm.set_progress(0.0)
    assert dbm.tau == 1.0 and float(dbm.regularizer().detach()) == pytest.approx(0.1 * 4 * D * 0.5)
    dbm.logits.data = torch.linspace(-1, 1, 4 * D)
    dbm.set_progress(1.0)
    assert dbm.tau == pytest.approx(0.01)
    soft = dbm.soft_mask()
    assert ((soft > 0.99) | (soft < 0.01)).float().mean() > 0.9
    trainable = [p for p in dbm.parameters() if p.requires_grad]
    assert len(trainable) == 1 and trainable[0] is dbm.logits  # the SAE is frozen
    assert DBM(Neurons()).name == "dbm(full_vector)"


@pytest.mark.parametrize("inner", [lambda: PCA(n_components=4), lambda: SAE(k=4, **SAE_FAST)])
def test_dbm_built_before_its_inner_featurizer_is_fitted(inner):
    dbm = DBM(inner()).build(D)  # the order causalvar.train.fit uses
    with pytest.raises(FeaturizerError, match="fitted"):
        dbm.check_ready(D)
    torch.manual_seed(0)
    dbm.fit_activations(H)
    dbm.check_ready(D)
    assert dbm.logits.shape == (dbm.k,) and dbm.k == dbm.featurizer.encode(H)[0].shape[-1]


# ------------------------------------------------------------------------------------------ PCA
@pytest.mark.parametrize("standardize", [False, True])
def test_pca_rank_deficient(standardize):
    h = acts(n=5)
    h[:, 3] = 7.0  # a constant dimension
    pca = PCA(standardize=standardize).fit_activations(h)
    B = pca.basis
    _close(B @ B.T, torch.eye(D))
    for x in (h, acts(seed=5)):  # the fitted rows and new ones
        f, err = pca.encode(x)
        _close(pca.decode(f, err), x)
        assert err.abs().max() < 1e-4  # the basis is complete: nothing is left in the error
    assert torch.isfinite(pca.scale).all() and pca.scale[3] == 1.0


def test_pca_components_match_sklearn_and_top_k_interchange():
    from sklearn.decomposition import PCA as SkPCA

    k = 4
    pca = PCA(n_components=k).fit_activations(H)
    assert pca.name == "pca(k=4)" and PCA().name == "pca"
    sk = torch.from_numpy(SkPCA().fit(H.double().numpy()).components_).float()
    _close(pca.basis, sk, atol=1e-4)
    hb, hs = acts(seed=1), acts(seed=2)
    out = pca.interchange(hb, hs)
    P = pca.basis[:k].T @ pca.basis[:k]  # projection on the top-k components
    mu = pca.mean
    _close((out - mu) @ P, (hs - mu) @ P, atol=1e-4)
    _close((out - mu) @ (torch.eye(D) - P), (hb - mu) @ (torch.eye(D) - P), atol=1e-4)


# ------------------------------------------------------------------------------------------ supervised
def test_supervised_dictionary_recovers_values_and_moves_toward_source_mean(tmp_path):
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(4, D, generator=g) * 3
    values = ["red", "green", "blue", "gold"]
    idx = torch.arange(400) % 4
    h = atoms[idx] + 0.3 * torch.randn(400, D, generator=g) + 1.0
    sd = SupervisedDictionary().fit_activations(h, [values[i] for i in idx])
    assert sorted(sd.values_) == sorted(values) and sd.encode(h)[0].shape == (400, 4)
    order = torch.tensor([sd.values_.index(v) for v in values])
    pred = sd.encode(h)[0].argmax(-1)
    assert (pred == order[idx]).float().mean() > 0.95
    base, src = h[idx == 0][:50], h[idx == 2][:50]  # red → blue
    out = sd.interchange(base, src)
    mean_src = h[idx == 2].mean(0)
    assert ((out - mean_src).norm(dim=-1) < (base - mean_src).norm(dim=-1)).all()
    assert (sd.encode(out)[0].argmax(-1) == order[2]).all()
    sd.save(tmp_path)
    assert json.loads((tmp_path / "featurizer.json").read_text())["extra"]["values"] == sd.values_
    with pytest.raises(FeaturizerError, match="value"):
        SupervisedDictionary().fit_activations(h)


# ------------------------------------------------------------------------------------------ SAE
def test_sae_trained_by_sae_lens_and_loaded_from_disk(tmp_path):
    import sae_lens

    topk = _fitted("sae_topk_dims")
    assert isinstance(topk.sae, sae_lens.TopKSAE) and isinstance(_fitted("sae").sae, sae_lens.StandardSAE)
    f = topk.encode(H)[0]
    assert f.shape == (N, 4 * D) and int((f > 0).sum(-1).max()) <= 4
    assert topk.mask().sum() == 3 and topk.name == "sae(k=4)[3]"
    assert not any(p.requires_grad for p in topk.parameters())
    topk.sae.save_model(tmp_path / "sae")  # a folder written by sae-lens
    from_disk = SAE(path=tmp_path / "sae").build(D)
    assert not from_disk.learns_from_activations and from_disk.name == "sae(sae)"
    torch.testing.assert_close(from_disk.encode(H)[0], f, atol=0, rtol=0)
    with pytest.raises(FeaturizerError, match="size 16, the site has size 17"):
        SAE(sae=topk.sae).build(D + 1)
    with pytest.raises(FeaturizerError, match="one of"):
        SAE(sae=topk.sae, path=tmp_path)


def test_sae_pretrained_release_fails_clearly_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    feat = SAE(release="gemma-scope-2b-pt-res-canonical", sae_id="layer_0/width_16k/canonical")
    assert not feat.learns_from_activations and feat.config()["release"] == "gemma-scope-2b-pt-res-canonical"
    with pytest.raises(FeaturizerError, match="from_pretrained needs the network"):
        feat.build(2304)
