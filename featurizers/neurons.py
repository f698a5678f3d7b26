"""The neuron basis: the hidden vector itself, whole (the full-vector interchange) or a subset of dimensions."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Featurizer, FeaturizerError


class Neurons(Featurizer):
    """Identity features ``f = h`` with zero error.

    Args:
        dims: the dimensions an interchange takes from the source; ``None`` = all (full vector).
    """

    def __init__(self, dims: Sequence[int] | None = None):
        super().__init__()
        self.dims = None if dims is None else [int(i) for i in dims]

    @property
    def name(self) -> str:
        return "full_vector" if self.dims is None else f"neurons[{len(self.dims)}]"

    def _build(self, d: int) -> None:
        if self.dims is not None:
            bad = [i for i in self.dims if not 0 <= i < d]
            if bad:
                raise FeaturizerError(f"Neurons dims {bad} are outside the site's hidden size {d}")
        mask = torch.zeros(d, dtype=torch.bool)
        if self.dims is not None:
            mask[self.dims] = True
        self.register_buffer("_mask", mask, persistent=False)

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return h, torch.zeros_like(h)

    def decode(self, f: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        return f + err

    def mask(self) -> torch.Tensor | None:
        return None if self.dims is None else self._mask

    def interchange(self, h_base: torch.Tensor, h_source: torch.Tensor) -> torch.Tensor:
        # exact: no arithmetic on the kept coordinates
        return h_source if self.dims is None else torch.where(self._mask, h_source, h_base)
