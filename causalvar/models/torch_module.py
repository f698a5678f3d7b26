"""Any torch module: sites are module paths; blocks are the network's declared block list."""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .base import Adapter, Batch, ModelError


@contextmanager
def _naming_the_input(inputs: dict[str, torch.Tensor]):
    """A network that rejects the task's encoding raises ``ModelError`` naming the input's shape."""
    try:
        yield
    except RuntimeError as e:
        shapes = ", ".join(f"{k}: {list(v.shape)}" for k, v in inputs.items())
        raise ModelError(f"the network rejected the input the task's encode produced ({shapes}, rows x "
                         f"features): {e}. Check that the task's encode returns the size the network "
                         "expects (e.g. its first layer's in_features)") from e


class TorchModel(Adapter):
    """Wrap a plain ``nn.Module`` that maps the task's encoded tensor(s) to logits ``[n, n_classes]``.

    Args:
        module: the network (frozen; put in eval mode here).
        blocks: module paths of its blocks, indexed by int layers. Default: the children of an
            ``nn.Sequential`` (then suffix execution is available), or of a ``blocks`` attribute.
    """

    def __init__(self, module: nn.Module, blocks: Sequence[str] | None = None):
        self.module = module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self._sequential = isinstance(module, nn.Sequential) and blocks is None
        if blocks is not None:
            self.block_paths = list(blocks)
        elif self._sequential:
            self.block_paths = [name for name, _ in module.named_children()]
        elif isinstance(getattr(module, "blocks", None), (nn.ModuleList, nn.Sequential)):
            self.block_paths = [f"blocks.{name}" for name, _ in module.blocks.named_children()]
        else:
            self.block_paths = []
        names = dict(module.named_modules())
        missing = [b for b in self.block_paths if b not in names]
        if missing:
            raise ModelError(f"blocks {missing} are not modules of the network")
        self.supports_suffix = self._sequential

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the network's parameters (float32 without any)."""
        p = next((p for p in self.module.parameters() if p.is_floating_point()), None)
        return torch.float32 if p is None else p.dtype

    def _inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The batch's inputs, float ones cast to the network's dtype (a ``net.double()`` or bfloat16
        network takes the task's float32 encoding as is)."""
        return {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in batch.inputs.items()}

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits ``[n, n_classes]`` (float32) of the inputs, e.g. ``x: [n, d_in]``; a network that
        rejects the shape the task's encode produced raises ``ModelError`` naming it."""
        inputs = self._inputs(batch)
        with _naming_the_input(inputs):
            out = self.module(*inputs.values()) if len(inputs) == 1 else self.module(**inputs)
        return out.float()

    def prefix_state(self, batch: Batch, starts: list[int]) -> dict:
        """Run the sequential network once; keep the hidden state entering each block in ``starts``."""
        inputs = self._inputs(batch)
        h = next(iter(inputs.values()))
        state = {}
        with _naming_the_input(inputs):
            for j, block in enumerate(self.module):
                if j in starts:
                    state[j] = h
                h = block(h)
        if len(self.module) in starts:
            state[len(self.module)] = h
        return {"hidden": state}

    def run_suffix(self, state: dict, start: int, hidden: torch.Tensor, batch: Batch,
                   positions: torch.Tensor | None = None) -> torch.Tensor:
        """Blocks ``start..`` on ``hidden: [n, d]`` -> logits ``[n, n_classes]``."""
        for block in list(self.module)[start:]:
            hidden = block(hidden)
        return hidden.float()
