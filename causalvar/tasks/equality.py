"""Hierarchical equality, the DAS paper's task: out = (w == x) == (y == z).

Each of the four inputs is one of ``N_VALUES`` objects, shown to the network as a fixed random
vector of ``EMBED`` numbers; a 3-hidden-layer MLP (width 16) learns the task. The network is trained
deterministically in seconds and cached under ``~/.cache/causalvar``.
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

N_VALUES = 10
EMBED = 4
HIDDEN = 16
LAYERS = 3
STEPS = 3000
BATCH = 256
LR = 3e-3
WD = 0.0
N_DATA = 20000
UNIFORM = False
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
    gen = torch.Generator().manual_seed(_SEED)
    if UNIFORM:
        return torch.rand(N_VALUES, EMBED, generator=gen) * 2 - 1
    return torch.randn(N_VALUES, EMBED, generator=gen)


def hierarchical_equality() -> Task:
    """The task: inputs -> ``[4 * EMBED]`` vectors; output class 1 = True."""
    emb = _embeddings()
    return Task(causal_model(), encode=lambda s: torch.cat([emb[s[v]] for v in "wxyz"]),
                decode=lambda logits: logits.argmax(-1).bool(), target=int, name="hierarchical_equality")


def _mlp() -> nn.Sequential:
    """Blocks 0-2: Linear+ReLU of width 16 (the hidden layers); block 3: the output Linear."""
    dims = [4 * EMBED] + [HIDDEN] * LAYERS
    blocks = [nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(dims, dims[1:])]
    return nn.Sequential(*blocks, nn.Linear(HIDDEN, 2))


def equality_mlp(cache: bool = True, steps: int | None = None) -> nn.Sequential:
    """The trained MLP (test accuracy ≈ 1.0), from the cache when present."""
    from safetensors.torch import load_file, save_file

    steps = STEPS if steps is None else steps
    key = f"{N_VALUES}-{EMBED}-{HIDDEN}-{LAYERS}-{steps}-{BATCH}-{LR}-{WD}-{N_DATA}-{UNIFORM}-{_SEED}"
    tag = hashlib.sha1(key.encode()).hexdigest()[:10]
    root = Path(os.environ.get("CAUSALVAR_CACHE", Path.home() / ".cache" / "causalvar"))
    path = root / f"hierarchical_equality_mlp_{tag}.safetensors"
    model = _mlp()
    if cache and path.exists():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    rng = random.Random(_SEED)
    ids = torch.tensor([[s[v] for v in "wxyz"] for s in (_balanced(rng) for _ in range(N_DATA))])
    x = _embeddings()[ids].flatten(1)  # the task's encoding, vectorised
    y = ((ids[:, 0] == ids[:, 1]) == (ids[:, 2] == ids[:, 3])).long()
    torch.manual_seed(_SEED)
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    gen = torch.Generator().manual_seed(_SEED)
    for _ in range(steps):
        idx = torch.randint(len(x), (BATCH,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(model.state_dict(), str(path))
    return model.eval()
