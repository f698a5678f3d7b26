"""Small MLPs trained in seconds to compute a task's high-level output: material for experiments."""
from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch import nn

from ..task import Task


def mlp(d_in: int, hidden: Sequence[int], n_classes: int) -> nn.Sequential:
    """Blocks ``0..len(hidden)-1``: ``Linear + ReLU``; the last block: the output ``Linear``."""
    dims = [d_in, *hidden]
    blocks = [nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(dims, dims[1:])]
    return nn.Sequential(*blocks, nn.Linear(dims[-1], n_classes))


def fit_classifier(net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
                   batch_size: int, seed: int) -> nn.Module:
    """``steps`` Adam steps of cross-entropy on seeded random batches of ``x: [n, d_in]``, ``y: [n]``;
    returns ``net`` in eval mode."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=gen)
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def train_mlp(task: Task, hidden: Sequence[int] = (32, 32), steps: int = 2000, lr: float = 3e-3,
              batch_size: int = 256, n: int = 20000, seed: int = 0) -> nn.Sequential:
    """Train ``mlp(...)`` on ``n`` inputs sampled from the task's causal model (seeded, deterministic)
    to predict the class ``task.targets`` gives its output. Returns the network in eval mode, with
    ``.accuracy`` set to its accuracy on 2000 fresh samples."""
    cm = task.causal_model
    rng = random.Random(seed)
    settings = [cm.draw(rng) for _ in range(n)]
    x = task.encode(settings).inputs["x"]
    y = task.targets([cm.run(s)[cm.output] for s in settings])
    torch.manual_seed(seed)
    net = fit_classifier(mlp(x.shape[1], hidden, int(y.max()) + 1), x, y, steps, lr, batch_size, seed)
    held_out = [cm.draw(rng) for _ in range(2000)]
    with torch.no_grad():
        logits = net(task.encode(held_out).inputs["x"])
    net.accuracy = float(task.correct(logits, [cm.run(s)[cm.output] for s in held_out]).float().mean())
    return net
