"""Supervised mean dictionary (Makelov, Lange & Nanda 2024) for one causal variable."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from .base import Featurizer, FeaturizerError, Tags


class SupervisedDictionary(Featurizer):
    """One atom per value v of the variable: ``u_v = mean(h | value = v) − mean(h)`` (rows of ``U: [V, d]``).

    Features are the least-squares coordinates of ``h − μ`` on the atoms, ``f = (h − μ) U⁺: [..., V]``
    (pseudo-inverse; the atoms are linearly dependent, Σ n_v u_v = 0, so this is the minimum-norm
    solution), ``err = h − (f U + μ)``. Interchanging all features replaces the base's component in
    span(U) by the source's.
    """

    def __featurizer_tags__(self) -> Tags:
        # affine, but its atoms are linearly dependent: the pseudo-inverse does not give back any f
        return replace(super().__featurizer_tags__(), invertible=False, learns_from=("activations",))

    def __init__(self):
        super().__init__()
        self.values_: list = []  # the variable's values, in atom order (set by fit_activations)

    @property
    def name(self) -> str:
        return "supervised"

    def _build(self, d: int) -> None:
        V = len(self.values_)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("atoms", torch.zeros(V, d))
        self.register_buffer("pinv", torch.zeros(d, V))

    @torch.no_grad()
    def fit_activations(self, h: torch.Tensor, values: Sequence | torch.Tensor | None = None) -> "SupervisedDictionary":
        """Fit on ``h: [n, d]`` with ``values``: the variable's value (int, str, bool, ...) for each row."""
        if values is None:
            raise FeaturizerError("SupervisedDictionary.fit_activations needs the variable's value for each row")
        values = values.tolist() if torch.is_tensor(values) else [v.item() if hasattr(v, "item") else v for v in values]
        if len(values) != len(h):
            raise FeaturizerError(f"got {len(values)} values for {len(h)} activations")
        self.values_ = sorted(set(values), key=lambda v: (str(type(v)), v))
        self.build(h.shape[-1])
        x = h.detach().to(torch.float64)
        position = {v: i for i, v in enumerate(self.values_)}
        index = torch.tensor([position[v] for v in values], device=x.device)
        mean = x.mean(0)
        sums = torch.zeros(len(self.values_), x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, index, x)
        atoms = sums / torch.bincount(index, minlength=len(self.values_))[:, None] - mean
        pinv = torch.linalg.pinv(atoms, rtol=1e-6)
        dt, dev = self.mean.dtype, self.mean.device
        self.mean, self.atoms, self.pinv = (t.to(dev, dt) for t in (mean, atoms, pinv))
        self.fitted = True
        return self

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_input(h)
        f = (h - self.mean) @ self.pinv
        return f, h - self.decode(f, torch.zeros_like(h))

    def decode(self, f: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        return f @ self.atoms + self.mean + err

    def _extra_state(self) -> dict:
        return {"values": self.values_}

    def _load_extra_state(self, extra: dict) -> None:
        self.values_ = list(extra.get("values", []))
