"""Distributed alignment search: a learned orthonormal subspace (DAS) or a learned-size one (Boundless DAS)."""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn
from torch.nn.utils import parametrize

from .base import Featurizer, FeaturizerError, Tags, check_count, check_temperature


class DAS(Featurizer):
    """Features ``f = h R`` for an orthonormal ``R: [d, k]`` (``RᵀR = I``, kept so by construction through
    :class:`OrthogonalExp`, torch's ``orthogonal(..., orthogonal_map="matrix_exp")`` map computed in rank 2k);
    ``err = h − f Rᵀ``. Every feature is intervened,
    so the interchange is ``h_b + R Rᵀ (h_s − h_b)``. Initialised from torch's global RNG.

    Args:
        dim: the subspace size k; ``None`` = the hidden size (a full rotation).
    """

    def __featurizer_tags__(self) -> Tags:
        return replace(super().__featurizer_tags__(), learns_from=("interventions",))

    def __init__(self, dim: int | None = None):
        super().__init__()
        self.dim = check_count("DAS", "dim", dim, none="the full rotation")

    @property
    def name(self) -> str:
        return f"das(k={self.dim or 'd'})"

    def _build(self, d: int) -> None:
        k = self.dim or d
        if not 1 <= k <= d:
            raise FeaturizerError(f"{self.name}: the subspace size must be in [1, {d}] for hidden size {d}")
        # weight [k, d] with orthonormal rows. The matrix exponential, not the Householder map torch picks for
        # k < d: that one truncates the diagonal of its raw parameter to ±1 with .int(), so weight decay zeroes R
        self.rotate = nn.Linear(d, k, bias=False)
        parametrize.register_parametrization(self.rotate, "weight", OrthogonalExp(), unsafe=True)

    @property
    def R(self) -> torch.Tensor:
        """The orthonormal basis ``[d, k]`` (columns)."""
        return self.rotate.weight.T

    def subspace(self) -> tuple[torch.Tensor, list[int] | None]:
        return self.R.detach().float().cpu(), self._mask_indices()

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_input(h)
        R = self.R
        f = h @ R
        return f, h - f @ R.T

    def decode(self, f: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        return f @ self.R.T + err

    def interchange(self, h_base: torch.Tensor, h_source: torch.Tensor) -> torch.Tensor:
        """The base class's interchange in closed form, ``h_b + (((h_s − h_b) R) ∘ M) Rᵀ``, computing R once."""
        self._check_input(h_base)
        self._check_input(h_source)
        R = self.R
        delta = (h_source - h_base) @ R
        m = self.soft_mask() if self.training else None
        m = self.mask() if m is None else m
        return h_base + (delta if m is None else delta * m) @ R.T


class OrthogonalExp(nn.Module):
    """A parametrization of ``[k, d]`` matrices with orthonormal rows, ``k ≤ d``: the same function, the same
    state (``original [k, d]``, buffer ``base [d, d]``) and the same initialisation as
    ``torch.nn.utils.parametrizations.orthogonal(..., orthogonal_map="matrix_exp")``, ``Q = base · exp(A)[:, :k]``
    transposed, with ``A = L Eᵀ − E Lᵀ`` skew, ``L = tril(originalᵀ) [d, k]``, ``E = I[:, :k]``.

    ``A`` has rank ≤ 2k, so for ``2k < d`` the exponential is taken in rank 2k:
    ``exp(U Wᵀ) E = E + U φ(Wᵀ U) Wᵀ E`` with ``U = [L, −E]``, ``W = [E, L]`` ``[d, 2k]``,
    ``φ(M) = Σ Mʲ/(j+1)!`` read off ``exp([[M, I], [0, 0]])`` ``[4k, 4k]``. torch exponentiates the ``d × d``
    matrix, and its backward a ``2d × 2d`` one: for DAS(k=32) on SmolLM2 (d = 576) that was most of a training
    step on one CPU thread.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("base", None)

    def forward(self, X: torch.Tensor) -> torch.Tensor:  # X: [k, d] -> [k, d]
        k, d = X.shape
        if k == d:  # a full rotation: torch's square case, untransposed
            A = X.tril()
            return self.base @ torch.matrix_exp(A - A.mT)
        L = X.mT.tril()  # [d, k]
        if 2 * k >= d:
            Y = torch.cat([L, L.new_zeros(d, d - k)], 1)
            Q = torch.matrix_exp(Y - Y.mT)[:, :k]
        else:
            E = torch.eye(d, k, dtype=L.dtype, device=L.device)
            U, W = torch.cat([L, -E], 1), torch.cat([E, L], 1)  # [d, 2k]
            M = W.mT @ U  # [2k, 2k]
            block = torch.cat([torch.cat([M, torch.eye(2 * k, dtype=M.dtype, device=M.device)], 1),
                               M.new_zeros(2 * k, 4 * k)], 0)
            phi = torch.matrix_exp(block)[:2 * k, 2 * k:]  # φ(M)
            Q = E + U @ (phi @ torch.cat([E[:k], L[:k].mT], 0))  # Wᵀ E = [I; L[:k]ᵀ]
        return (self.base @ Q).mT

    @torch.no_grad()
    def right_inverse(self, Q: torch.Tensor) -> torch.Tensor:
        """``Q: [k, d]`` (k ≤ d), any full-rank start (e.g. nn.Linear's): ``base`` is Q (its rows completed by Gaussian
        columns when k < d) orthonormalised by QR with signs fixed; the parameter is ``−I``, so that the
        exponential starts at the identity."""
        k, d = Q.shape  # k <= d: DAS checks the size before building
        full = Q if k == d else torch.cat([Q.mT, torch.randn(d, d - k, dtype=Q.dtype, device=Q.device)], 1)
        X, tau = torch.geqrf(full)
        self.base = torch.linalg.householder_product(X, tau) * X.diagonal().sgn().unsqueeze(0)
        return -torch.eye(k, d, dtype=Q.dtype, device=Q.device)


class BoundlessDAS(DAS):
    """Boundless DAS (Wu et al. 2023): a full ``d × d`` rotation and a learned boundary ``b ∈ [1e-3, 1]``;
    the first ``b·d`` rotated coordinates are intervened. Training uses the soft mask
    ``M_i = σ((b·d − i)/τ)`` with τ annealed linearly from ``temperature[0]`` to ``temperature[1]``
    (``set_progress``); evaluation the hard mask ``i < round(b·d)``. ``regularizer()`` is the penalty ``b``.

    τ is in rotated coordinates: at τ the mask falls from 0.73 to 0.27 over 2τ of them around ``b·d``. The
    default start, 8, was measured on the built-in equality MLP (d = 64, block 0, ``left``, 2000 training
    pairs, 20 epochs, seeds 0–3): IIA 0.964–0.996 with a learned boundary of 24–27 coordinates, where a
    start of 50 (pyvene's, for d = 4096) leaves every coordinate half-mixed for most of training and
    reached 0.62–0.75.

    (pyvene multiplies in a left factor ``σ(i/τ)``, which only halves coordinate 0; it is left out here.)
    """

    def __init__(self, init_boundary: float = 0.5, temperature: Sequence[float] = (8.0, 0.1), anneal_epochs: int = 10):
        super().__init__(dim=None)
        ok = isinstance(init_boundary, numbers.Real) and not isinstance(init_boundary, bool)
        if not (ok and 0 < init_boundary <= 1):
            raise FeaturizerError(f"BoundlessDAS: init_boundary must be a number in (0, 1] (the share of the "
                                  f"rotated coordinates intervened at the start), got {init_boundary!r}")
        self.init_boundary = float(init_boundary)
        self.temperature = check_temperature("BoundlessDAS", temperature)
        self.tau = self.temperature[0]
        self.anneal_epochs = check_count("BoundlessDAS", "anneal_epochs", anneal_epochs)

    @property
    def name(self) -> str:
        return "boundless_das"

    def _build(self, d: int) -> None:
        super()._build(d)
        self.boundary = nn.Parameter(torch.tensor(self.init_boundary))
        self.register_buffer("_index", torch.arange(d, dtype=torch.float32), persistent=False)

    def _b(self) -> torch.Tensor:
        return self.boundary.clamp(1e-3, 1.0)

    def soft_mask(self) -> torch.Tensor:
        """Float ``[d]``: ``σ((b·d − i)/τ)``."""
        return torch.sigmoid((self._b() * self.d - self._index) / self.tau)

    def mask(self) -> torch.Tensor:
        """Bool ``[d]``: ``i < round(b·d)``."""
        return self._index < torch.round(self._b().detach() * self.d)

    def set_progress(self, fraction: float) -> None:
        t0, t1 = self.temperature
        self.tau = t0 + (t1 - t0) * min(max(fraction, 0.0), 1.0)

    def regularizer(self) -> torch.Tensor:
        return self._b()

    def summary(self) -> dict:
        return {"size": int(self.mask().sum())}
