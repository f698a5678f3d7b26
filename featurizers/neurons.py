"""The neuron basis: the hidden vector itself, whole (the full-vector interchange) or a subset of dimensions."""
from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch

from .base import Featurizer, FeaturizerError, check_indices


class Neurons(Featurizer):
    """Identity features ``f = h`` with zero error.

    Args:
        dims: the dimensions an interchange takes from the source; ``None`` = all (full vector).
    """

    def __init__(self, dims: Sequence[int] | None = None):
        super().__init__()
        self.dims = check_indices("Neurons", "dims", dims, none="the full vector")

    @property
    def name(self) -> str:
        """``full_vector``, or the dims as spans: ``neurons[0-7]``, ``neurons[3,9-12]`` (long lists are
        shortened to their count and a digest)."""
        if self.dims is None:
            return "full_vector"
        spans, dims = [], sorted(set(self.dims))
        for i in dims:
            if spans and i == spans[-1][1] + 1:
                spans[-1][1] = i
            else:
                spans.append([i, i])
        text = ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)
        if len(text) > 24:
            text = f"{len(dims)}:{zlib.crc32(text.encode()):08x}"
        return f"neurons[{text}]"

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
        self._check_input(h)
        return h, torch.zeros_like(h)

    def decode(self, f: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        return f + err

    def mask(self) -> torch.Tensor | None:
        return None if self.dims is None else self._mask

    def subspace(self) -> tuple[None, list[int] | None]:
        return None, self.dims

    def interchange(self, h_base: torch.Tensor, h_source: torch.Tensor) -> torch.Tensor:
        # exact: no arithmetic on the kept coordinates
        self._check_input(h_base)
        self._check_input(h_source)
        return h_source if self.dims is None else torch.where(self._mask, h_source, h_base)
