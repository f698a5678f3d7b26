"""Hierarchical equality, the DAS paper's task: out = (w == x) == (y == z).

Each of the four inputs is one of ``N_VALUES`` = 1000 objects, shown to the network as a fixed random
Gaussian vector of ``EMBED`` = 4 numbers (the paper draws a fresh vector per example; a large finite
set stands in for that, since the causal model needs finite domains). The network is an
``nn.Sequential`` of 3 hidden blocks ``Sequential(Linear, ReLU)`` of width 64 (16 -> 64 -> 64 -> 64)
and an output ``Linear(64, 2)``. It is trained with Adam (5000 steps of 256 examples, lr 1e-2,
dropout 0.2 on the hidden layers during training only) on examples drawn with the balanced sampler;
training is seeded, runs on one thread in about 10 s and reaches ≈ 0.997 test accuracy. The result
is cached under ``~/.cache/causalvar`` (``$CAUSALVAR_CACHE``), keyed by a hash of the constants.

With it the DAS paper's finding shows: at block 0 an 8-dimensional DAS subspace aligns ``left``
with IIA ≈ 1.0, while the best 8 neurons found (greedy and local search) reach ≈ 0.8. The first
layer's units each test one pair (``relu(u·(e_w − e_x))``), but dropout spreads that test over many
units, so no 8 neurons hold it while an 8-dimensional subspace can.
"""
from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import torch
from torch import nn

from ..causal_model import CausalModel
from ..task import Task
from .mlp import fit_classifier, mlp

N_VALUES = 1000  # objects; many, so that equality is computed from the vectors, not memorised per pair
EMBED = 4        # numbers per object (the paper's entity size)
HIDDEN = 64      # width of each hidden layer
LAYERS = 3       # hidden layers (blocks 0-2); block 3 is the output Linear
STEPS = 5000     # Adam steps
BATCH = 256
LR = 1e-2
DROPOUT = 0.2    # on the hidden layers while training only; the saved network has none
N_DATA = 20000   # training examples drawn with the balanced sampler
_SEED = 0


def _balanced(rng: random.Random) -> dict:
    """w == x half the time and y == z half the time, independently."""
    w, y = rng.randrange(N_VALUES), rng.randrange(N_VALUES)
    return {"w": w, "x": _same_or_other(rng, w), "y": y, "z": _same_or_other(rng, y)}


def _same_or_other(rng: random.Random, v: int) -> int:
    """``v`` with probability 1/2, else a uniformly drawn other object."""
    if rng.random() < 0.5:
        return v
    other = rng.randrange(N_VALUES - 1)
    return other + (other >= v)


def causal_model() -> CausalModel:
    """``left = (w == x)``, ``right = (y == z)``, ``out = (left == right)``; balanced sampling."""
    return CausalModel(
        inputs={v: range(N_VALUES) for v in "wxyz"},
        mechanisms={"left": lambda w, x: w == x, "right": lambda y, z: y == z,
                    "out": lambda left, right: left == right},
        sampler=_balanced,
    )


def _embeddings() -> torch.Tensor:
    """``[N_VALUES, EMBED]``: the fixed random vector of each object."""
    return torch.randn(N_VALUES, EMBED, generator=torch.Generator().manual_seed(_SEED))


def hierarchical_equality() -> Task:
    """The task: inputs -> ``[4 * EMBED]`` vectors; output class 1 = True."""
    emb = _embeddings()
    return Task(causal_model(), encode=lambda s: torch.cat([emb[s[v]] for v in "wxyz"]),
                decode=lambda logits: logits.argmax(-1).bool(), target=int, name="hierarchical_equality")


def _network() -> nn.Sequential:
    """Blocks 0-2: Linear+ReLU of width ``HIDDEN``; block 3: the output Linear."""
    return mlp(4 * EMBED, [HIDDEN] * LAYERS, 2)


def equality_mlp(cache: bool = True, steps: int | None = None) -> nn.Sequential:
    """The trained MLP (test accuracy ≈ 0.997), from the cache when present.

    Training is seeded and runs on one CPU thread (about 10 s), so it gives the same network everywhere.
    """
    from safetensors.torch import load_file, save_file

    steps = STEPS if steps is None else steps
    key = f"{N_VALUES}-{EMBED}-{HIDDEN}-{LAYERS}-{steps}-{BATCH}-{LR}-{DROPOUT}-{N_DATA}-{_SEED}"
    tag = hashlib.sha1(key.encode()).hexdigest()[:10]
    root = Path(os.environ.get("CAUSALVAR_CACHE", Path.home() / ".cache" / "causalvar"))
    path = root / f"hierarchical_equality_mlp_{tag}.safetensors"
    model = _network()
    if cache and path.exists():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: one thread is fastest, and immune to busy machines
    try:
        model = _train(steps)
    finally:
        torch.set_num_threads(threads)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(model.state_dict(), str(path))
    return model.eval()


def _train(steps: int) -> nn.Sequential:
    """``steps`` seeded Adam steps on ``N_DATA`` balanced examples; returns the network in eval mode."""
    rng = random.Random(_SEED)
    ids = torch.tensor([[s[v] for v in "wxyz"] for s in (_balanced(rng) for _ in range(N_DATA))])
    x = _embeddings()[ids].flatten(1)  # the task's encoding, vectorised
    y = ((ids[:, 0] == ids[:, 1]) == (ids[:, 2] == ids[:, 3])).long()
    torch.manual_seed(_SEED)
    model = _network()
    # dropout on the hidden layers' outputs through hooks, so the saved network keeps the plain blocks
    hooks = [block.register_forward_hook(lambda mod, args, out: nn.functional.dropout(out, DROPOUT, mod.training))
             for block in list(model)[:-1]] if DROPOUT else []
    fit_classifier(model, x, y, steps, LR, BATCH, _SEED)
    for h in hooks:
        h.remove()
    return model
