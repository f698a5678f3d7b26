"""The conformance suite every featurizer passes, public so that a user's own featurizer is held to the
same bar (as scikit-learn's ``check_estimator``)::

    from featurizers.testing import check_featurizer
    check_featurizer(MyFeaturizer(k=4))      # raises AssertionError naming the first check that fails

The checks read the featurizer's ``tags`` to decide what applies (e.g. only an ``invertible`` one must
hand over exactly its masked features).
"""
from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import torch

from .base import Featurizer, FeaturizerError


def activations(n: int = 200, d: int = 16, seed: int = 0) -> torch.Tensor:
    """Random activations ``[n, d]`` with a non-zero mean and uneven scales (what a site looks like)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) * torch.linspace(0.5, 3.0, d) + 0.7).contiguous()


def check_featurizer(featurizer: Featurizer, d: int = 16, n: int = 200, seed: int = 0) -> Featurizer:
    """Run every conformance check on ``featurizer`` (an unfitted instance; it is not modified) at hidden
    size ``d``: its clone is an unfitted twin with a JSON config; after fitting on activations (where it
    learns from them; supervised ones get a 3-valued label per row) and with its trainable parameters
    set to random values: exact round trip ``decode(*encode(h)) == h`` for any leading shape;
    self-interchange changes nothing (training and eval); an invertible featurizer hands over exactly
    its masked features; a complete basis with every feature taken gives the source (the full-vector
    interchange); save → load gives identical numbers, in eval mode, fitted as before; float64 and back;
    CUDA and back where available; a wrong hidden size is refused; the name does not change with fitting.
    Returns the fitted copy it checked."""
    name = featurizer.name
    fail = lambda check, detail: AssertionError(f"check_featurizer({name}): {check}: {detail}")
    h = activations(n, d, seed)
    labels = (torch.arange(n) % 3).tolist()

    twin = featurizer.clone()
    if type(twin) is not type(featurizer) or twin.config() != featurizer.config():
        raise fail("clone", f"clone() gave {type(twin).__name__}({twin.config()}), not the same hyperparameters")
    try:
        json.dumps(twin.config())
    except TypeError as e:
        raise fail("config", f"config() is not JSON-serialisable ({e})") from None
    if twin.d is not None or twin.fitted:
        raise fail("clone", "a clone must be unbuilt and unfitted")

    feat = copy.deepcopy(featurizer)
    torch.manual_seed(seed)
    feat.build(d)
    feat.fit_activations(h, labels)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for p in feat.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    feat.check_ready(d)
    if feat.name != name:
        raise fail("name", f"the name changed from {name!r} to {feat.name!r} on fitting; names key results")

    def close(a, b, what, atol=1e-5):
        if a.shape != b.shape or not torch.allclose(a, b, atol=atol, rtol=0):
            err = (a - b).abs().max().item() if a.shape == b.shape else f"shapes {tuple(a.shape)} vs {tuple(b.shape)}"
            raise fail(what, f"max |difference| {err}")

    f, err = feat.encode(h)
    if f.shape[:-1] != h.shape[:-1] or err.shape != h.shape:
        raise fail("encode", f"features {tuple(f.shape)} and error {tuple(err.shape)} for h {tuple(h.shape)}")
    close(feat.decode(f, err), h, "round trip decode(*encode(h)) == h")
    h3 = h[: (n // 10) * 10].view(10, n // 10, d)
    close(feat.decode(*feat.encode(h3)), h3, "round trip with leading shape [10, n/10]")
    for training in (True, False):
        feat.train(training)
        close(feat.interchange(h, h), h, f"self-interchange ({'training' if training else 'eval'})")
    feat.eval()
    hb, hs = activations(n, d, seed + 2), activations(n, d, seed + 3)
    if feat.tags.invertible:
        f_b, f_s = feat.encode(hb)[0], feat.encode(hs)[0]
        m = feat.mask()
        close(feat.encode(feat.interchange(hb, hs))[0], f_s if m is None else torch.where(m, f_s, f_b),
              "interchange hands over exactly the masked features", atol=1e-4)
    if feat.mask() is None and feat.encode(hb)[1].abs().max() < 1e-4 and feat.encode(hs)[1].abs().max() < 1e-4:
        close(feat.interchange(hb, hs), hs, "full interchange of a complete basis equals the full vector", atol=1e-4)

    with tempfile.TemporaryDirectory() as tmp:
        feat.save(Path(tmp))
        loaded = Featurizer.load(Path(tmp), d=d)
        if loaded.training:
            raise fail("save/load", "Featurizer.load must return the featurizer in eval mode")
        if type(loaded) is not type(feat) or loaded.config() != feat.config() or loaded.name != name:
            raise fail("save/load", f"loaded {loaded.name} with config {loaded.config()}")
        if loaded.fitted != feat.fitted or loaded.summary() != feat.summary():
            raise fail("save/load", "the fitted flag or the summary changed")
        for a, b in zip(feat.encode(h), loaded.encode(h)):
            close(a, b, "save/load: same encode", atol=0)
        close(feat.interchange(hb, hs), loaded.interchange(hb, hs), "save/load: same interchange", atol=0)
        try:
            Featurizer.load(Path(tmp), d=d + 1)
        except FeaturizerError:
            pass
        else:
            raise fail("wrong size", f"Featurizer.load(..., d={d + 1}) accepted a featurizer of size {d}")
    try:
        feat.interchange(activations(4, d + 1), activations(4, d + 1))
    except FeaturizerError:
        pass
    else:
        raise fail("wrong size", f"interchange accepted vectors of size {d + 1} on a featurizer of size {d}")

    for dtype, atol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        moved = feat.to(dtype)
        x = h.to(dtype)
        f, err = moved.encode(x)
        if f.dtype != dtype or err.dtype != dtype:
            raise fail("dtype", f"encode of {dtype} vectors gave {f.dtype} / {err.dtype}")
        close(moved.decode(f, err), x, f"round trip in {dtype}", atol=atol)
        close(moved.interchange(x, x), x, f"self-interchange in {dtype}", atol=atol)
    if torch.cuda.is_available():
        feat.cuda()
        close(feat.decode(*feat.encode(h.cuda())).cpu(), h, "round trip on CUDA")
        feat.cpu()
    return feat
