"""The adapter interface: the only things the engine asks of a network.

An adapter names the network's blocks, turns a site into a module, runs the network on a task's
encoded batch (returning only the logits the task reads) and, where it can, runs just the blocks
after a given one (suffix execution) from a cached hidden state.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..sites import Site


class ModelError(ValueError):
    """A network or a site that the adapter cannot handle, explained in the user's terms."""


class FastPathWarning(UserWarning):
    """A fast path (suffix execution, key/value reuse) cannot be used; results are the same, slower."""


@dataclass
class Batch:
    """A task's encoded examples.

    inputs: model inputs, each ``[n, ...]`` (e.g. ``x: [n, d_in]``, or ``input_ids, attention_mask,
        position_ids: [n, seq]``).
    positions: token index per named role, each ``[n]`` (empty for networks without a sequence axis).
    read: the position whose logits the task reads, ``[n]`` (``None`` without a sequence axis).
    """

    inputs: dict[str, torch.Tensor]
    positions: dict[str, torch.Tensor] = field(default_factory=dict)
    read: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def select(self, idx) -> "Batch":
        """Rows ``idx`` (a slice or a LongTensor of indices)."""
        return Batch({k: v[idx] for k, v in self.inputs.items()},
                     {k: v[idx] for k, v in self.positions.items()},
                     None if self.read is None else self.read[idx])

    def to(self, device) -> "Batch":
        return Batch({k: v.to(device) for k, v in self.inputs.items()},
                     {k: v.to(device) for k, v in self.positions.items()},
                     None if self.read is None else self.read.to(device))


def unwrap(output):
    """The hidden-state tensor of a module's output (HF blocks may return tuples)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def rewrap(output, hidden):
    """``output`` with its hidden-state tensor replaced by ``hidden``."""
    if isinstance(output, tuple):
        return (hidden,) + tuple(output[1:])
    if isinstance(output, list):
        return [hidden] + list(output[1:])
    return hidden


class Adapter:
    """Base adapter. Subclasses set ``module`` and ``block_paths`` and implement ``forward``.

    Suffix execution (``supports_suffix``): ``prefix_state`` runs the network once and keeps, for each
    requested block index j, the hidden state entering block j plus whatever blocks j.. need to be
    replayed; ``run_suffix`` replays them from an edited hidden state.
    """

    module: nn.Module
    block_paths: list[str]
    supports_suffix: bool = False
    #: for each fast path that is off, why (``fast_paths`` lists them all)
    why_not: dict[str, str] = {}

    @property
    def fast_paths(self) -> dict[str, bool]:
        """Which fast paths the adapter uses (``suffix``: run only the blocks after a site)."""
        return {"suffix": self.supports_suffix}

    @property
    def n_layers(self) -> int:
        return len(self.block_paths)

    @property
    def device(self) -> torch.device:
        p = next(self.module.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def module_path(self, site: Site) -> str:
        """The module path a site names; a clear error for an unknown layer."""
        if isinstance(site.layer, int):
            n = self.n_layers
            if not -n <= site.layer < n:
                raise ModelError(f"layer {site.layer} is out of range: the model has {n} blocks (0..{n - 1})")
            return self.block_paths[site.layer]
        names = dict(self.module.named_modules())
        if site.layer not in names:
            close = [n for n in names if n and site.layer.split(".")[-1] in n][:8]
            raise ModelError(f"the model has no module '{site.layer}'" + (f"; similar: {close}" if close else ""))
        return site.layer

    def submodule(self, path: str) -> nn.Module:
        return self.module.get_submodule(path)

    def block_index(self, site: Site) -> int | None:
        """The index j of the block whose INPUT equals this site's activation, when the site is on the
        residual stream between blocks (so suffix execution can start there); else ``None``."""
        path = self.module_path(site)
        if path not in self.block_paths:
            return None
        i = self.block_paths.index(path)
        return i + 1 if site.component == "output" else i

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits the task reads: ``[n, n_classes]`` (at ``batch.read`` for sequence models)."""
        raise NotImplementedError

    def prefix_state(self, batch: Batch, starts: list[int]) -> dict:
        raise NotImplementedError

    def run_suffix(self, state: dict, start: int, hidden: torch.Tensor, batch: Batch,
                   positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[n, C]`` from ``hidden`` entering block ``start``; ``positions: [n]`` are the
        intervened token indices (adapters may skip work on the positions before them)."""
        raise NotImplementedError
