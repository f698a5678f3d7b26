"""A fixed linear subspace: features ``f = h R`` for a given ``R: [d, k]`` with orthonormal columns."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Featurizer, FeaturizerError, check_count, check_indices


class Subspace(Featurizer):
    """A frozen basis (e.g. an imported DAS rotation): ``f = h R``, ``err = h − f Rᵀ``; an interchange
    takes the features ``dims`` (``None`` = all k) from the source. Make one with ``from_matrix``.

    Args:
        k: the number of basis vectors (columns of R).
        dims: the features an interchange takes from the source.
    """

    def __init__(self, k: int, dims: Sequence[int] | None = None):
        super().__init__()
        self.k = check_count("Subspace", "k", k)
        self.dims = check_indices("Subspace", "dims", dims, none="all k features")

    @classmethod
    def from_matrix(cls, R: torch.Tensor, dims: Sequence[int] | None = None) -> "Subspace":
        """A subspace featurizer with basis ``R: [d, k]`` (columns orthonormal to 1e-4)."""
        R = torch.as_tensor(R, dtype=torch.float32)
        gram = R.T @ R
        if not torch.allclose(gram, torch.eye(R.shape[1]), atol=1e-4):
            raise FeaturizerError(f"the {tuple(R.shape)} basis is not orthonormal (max |RᵀR − I| = "
                                  f"{(gram - torch.eye(R.shape[1])).abs().max():.2e})")
        feat = cls(R.shape[1], dims).build(R.shape[0])
        feat.R.copy_(R)
        feat.fitted = True
        return feat

    @property
    def name(self) -> str:
        return f"subspace(k={self.k})" if self.dims is None else f"subspace(k={self.k},{len(self.dims)})"

    def _build(self, d: int) -> None:
        if not 1 <= self.k <= d:
            raise FeaturizerError(f"subspace size {self.k} must be in [1, {d}]")
        bad = [i for i in self.dims or [] if not 0 <= i < self.k]
        if bad:
            raise FeaturizerError(f"subspace feature indices {bad} are outside its {self.k} features")
        self.register_buffer("R", torch.zeros(d, self.k))
        mask = torch.zeros(self.k, dtype=torch.bool)
        mask[self.dims if self.dims is not None else slice(None)] = True
        self.register_buffer("_mask", mask, persistent=False)

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_input(h)
        f = h @ self.R
        return f, h - f @ self.R.T

    def decode(self, f: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        return f @ self.R.T + err

    def mask(self) -> torch.Tensor | None:
        return None if self.dims is None else self._mask

    def subspace(self) -> tuple[torch.Tensor, list[int] | None]:
        return self.R.detach().float().cpu(), self._mask_indices()


def random_controls(featurizer: Featurizer, k: int, seed: int = 0) -> list[Subspace]:
    """``k`` random same-size controls of a fitted featurizer of subspace form (``featurizer.subspace()``):
    for a subspace of dimension m (DAS, PCA), ``k`` random orthonormal m-dimensional subspaces of the same
    space; for a selection of s coordinates of a basis (a learned DBM mask, chosen neurons), ``k`` random
    selections of s coordinates of that basis. Drawn from ``seed``. The full vector has no smaller control:
    a ``FeaturizerError``, as for featurizers not of subspace form."""
    R, idx = featurizer.subspace()
    d = featurizer.d
    if R is None and idx is None:
        raise FeaturizerError(f"{featurizer.name} interchanges the whole vector: every same-size subspace is the "
                              "whole space, so it has no random control")
    gen = torch.Generator().manual_seed(seed)
    controls = []
    for _ in range(k):
        if idx is None:  # a learned or fitted subspace: a random one of its dimension
            q, r = torch.linalg.qr(torch.randn(d, R.shape[1], generator=gen, dtype=torch.float64))
            controls.append(Subspace.from_matrix((q * torch.sign(torch.diagonal(r))).float()))
        else:  # a selection: as many random coordinates of the same basis
            basis = torch.eye(d) if R is None else R
            dims = torch.randperm(basis.shape[1], generator=gen)[:len(idx)].sort().values.tolist()
            controls.append(Subspace.from_matrix(basis, dims=dims))
    return controls
