"""Principal components of the site's activations (a frozen rotation)."""
from __future__ import annotations

from dataclasses import replace

import torch

from .base import Featurizer, FeaturizerError, Tags, check_count


class PCA(Featurizer):
    """Features ``f = ((h − μ)/σ) Bᵀ`` for the full orthonormal basis ``B: [d, d]`` whose first rows are
    scikit-learn's principal components (by decreasing variance), completed to a basis of ``R^d`` so that
    the round trip is exact even for rank-deficient activations; ``err`` holds the float rounding.

    Args:
        n_components: the top components an interchange takes from the source; ``None`` = all.
        standardize: z-score each dimension before PCA (MIB's PCA); σ = 1 otherwise (and for constant dims).
    """

    def __featurizer_tags__(self) -> Tags:
        return replace(super().__featurizer_tags__(), learns_from=("activations",))

    def __init__(self, n_components: int | None = None, standardize: bool = False):
        super().__init__()
        self.n_components = check_count("PCA", "n_components", n_components, none="all components")
        self.standardize = bool(standardize)

    @property
    def name(self) -> str:
        return "pca" if self.n_components is None else f"pca(k={self.n_components})"

    def _build(self, d: int) -> None:
        if self.n_components is not None and not 1 <= self.n_components <= d:
            raise FeaturizerError(f"{self.name}: n_components must be in [1, {d}] for hidden size {d}")
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("scale", torch.ones(d))
        self.register_buffer("basis", torch.eye(d))  # [d components, d]
        self.register_buffer("_mask", torch.arange(d) < (self.n_components or d), persistent=False)

    @torch.no_grad()
    def fit_activations(self, h: torch.Tensor, values=None) -> "PCA":
        """Fit on ``h: [n, d]``."""
        from sklearn.decomposition import PCA as SkPCA

        n, d = h.shape
        self.build(d)
        x = h.detach().to("cpu", torch.float64)
        mean = x.mean(0)
        std = x.std(0, correction=0) if self.standardize else torch.ones(d, dtype=torch.float64)
        std = torch.where(std > 1e-8 * std.max(), std, 1.0)  # constant dims: no scaling
        comps = torch.from_numpy(SkPCA(n_components=min(n, d)).fit(((x - mean) / std).numpy()).components_)
        # complete the components (rows) to an orthonormal basis of R^d (QR), keeping sklearn's signs
        q, r = torch.linalg.qr(torch.cat([comps, torch.eye(d, dtype=torch.float64)]).T)
        sign = torch.ones(d, dtype=torch.float64)
        sign[: len(comps)] = torch.where(torch.diagonal(r)[: len(comps)] < 0, -1.0, 1.0)
        dt, dev = self.basis.dtype, self.basis.device
        self.mean, self.scale, self.basis = (t.to(dev, dt) for t in (mean, std, (q * sign).T))
        self.fitted = True
        return self

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_input(h)
        f = ((h - self.mean) / self.scale) @ self.basis.T
        return f, h - self.decode(f, torch.zeros_like(h))

    def decode(self, f: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        return (f @ self.basis) * self.scale + self.mean + err

    def mask(self) -> torch.Tensor | None:
        return None if self.n_components is None else self._mask

    def subspace(self) -> tuple[torch.Tensor, list[int] | None]:
        if self.standardize:
            return super().subspace()  # the z-scoring makes the features non-orthonormal in h
        # PCA centres before rotating; the centring cancels in an interchange, so the basis alone is exact
        return self.basis.T.detach().float().cpu(), self._mask_indices()
