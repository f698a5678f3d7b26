"""Desiderata-based masking (DBM): a learned mask over the features of any other featurizer."""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import replace
from itertools import chain

import torch
from torch import nn

from .base import Featurizer, FeaturizerError, Tags, check_count, check_temperature


class DBM(Featurizer):
    """A binary mask over the ``k`` features of an inner featurizer (neurons, PCA components, SAE latents).

    Mask logits ``m: [k]`` start at 0. Training mixes base and source features with the soft mask
    ``σ(m/τ)``, τ annealed linearly from ``temperature[0]`` to ``temperature[1]`` (``set_progress``);
    ``regularizer() = l1 · ‖σ(m/τ)‖₁``; evaluation uses the hard mask ``σ(m) > 0.5``. The mask chooses
    among all of the inner featurizer's features (its own ``mask()`` is ignored). ``encode``/``decode``
    are the inner featurizer's; ``fit_activations`` forwards to it (the mask is allocated once it is fitted).

    Args:
        featurizer: the inner featurizer (unfitted or fitted; it is owned by this DBM).
        l1: weight of the L1 penalty on the soft mask (MIB baselines: 0).
        temperature: (start, end) of the annealed temperature.
        anneal_epochs: the epochs the temperature anneals over (training runs at least these, then stops
            by the validation metric).
    """

    def __featurizer_tags__(self) -> Tags:
        inner = self.featurizer.tags  # a mask over the inner featurizer's features, learned by intervening
        return replace(inner, learns_from=tuple(dict.fromkeys(inner.learns_from + ("interventions",))))

    def __init__(self, featurizer: Featurizer, l1: float = 0.0, temperature: Sequence[float] = (1.0, 0.01),
                 anneal_epochs: int = 10):
        super().__init__()
        if isinstance(featurizer, type) and issubclass(featurizer, Featurizer):
            raise FeaturizerError(f"DBM wraps a featurizer instance, got the class {featurizer.__name__}; "
                                  f"write DBM({featurizer.__name__}())")
        if not isinstance(featurizer, Featurizer):
            raise FeaturizerError(f"DBM wraps a Featurizer instance (e.g. DBM(Neurons()), DBM(PCA())), got "
                                  f"{featurizer!r} of type {type(featurizer).__name__}")
        if not isinstance(l1, numbers.Real) or not l1 >= 0:
            raise FeaturizerError(f"DBM: l1 must be a number >= 0 (the weight of the mask's L1 penalty), got {l1!r}")
        self.featurizer = featurizer
        self.l1 = float(l1)
        self.temperature = check_temperature("DBM", temperature)
        self.tau = self.temperature[0]
        self.anneal_epochs = check_count("DBM", "anneal_epochs", anneal_epochs)
        self.fitted = featurizer.fitted
        self.k: int | None = None  # the inner featurizer's feature count, known after build

    @property
    def name(self) -> str:
        return f"dbm({self.featurizer.name})"

    def _build(self, d: int) -> None:
        self.featurizer.build(d)
        if self.k is not None or not self.featurizer.learns_from_activations or self.featurizer.fitted:
            self._allocate(d)  # else fit_activations does, once the inner featurizer knows its k

    def _allocate(self, d: int) -> None:
        """Create the mask logits ``[k]``, probing k by encoding a zero vector unless known."""
        if self.k is None:
            self.featurizer.check_ready(d)
            ref = next((t for t in chain(self.featurizer.parameters(), self.featurizer.buffers())
                        if t.is_floating_point()), torch.empty(0))
            with torch.no_grad():
                self.k = self.featurizer.encode(torch.zeros(1, d, dtype=ref.dtype, device=ref.device))[0].shape[-1]
        self.logits = nn.Parameter(torch.zeros(self.k))

    def fit_activations(self, h: torch.Tensor, values=None) -> "DBM":
        """Fit the inner featurizer on ``h: [n, d]`` (and ``values``), then (re)allocate the mask."""
        self.featurizer.fit_activations(h, values)
        self.build(h.shape[-1])
        self.k = None
        self._allocate(h.shape[-1])
        self.fitted = self.featurizer.fitted
        return self

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_input(h)
        return self.featurizer.encode(h)

    def decode(self, f: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        return self.featurizer.decode(f, err)

    def soft_mask(self) -> torch.Tensor:
        """Float ``[k]``: ``σ(m/τ)``."""
        return torch.sigmoid(self.logits / self.tau)

    def mask(self) -> torch.Tensor:
        """Bool ``[k]``: ``σ(m) > 0.5``."""
        return self.logits.detach() > 0

    def subspace(self) -> tuple[torch.Tensor | None, list[int]]:
        return self.featurizer.subspace()[0], self._mask_indices()

    def set_progress(self, fraction: float) -> None:
        t0, t1 = self.temperature
        self.tau = t0 + (t1 - t0) * min(max(fraction, 0.0), 1.0)

    def regularizer(self) -> torch.Tensor | float:
        return self.l1 * self.soft_mask().sum() if self.l1 else 0.0

    def summary(self) -> dict:
        return {"kept": int(self.mask().sum()), "of": self.k}

    def _extra_state(self) -> dict:
        return {"k": self.k, "inner": self.featurizer._extra_state(), "inner_fitted": self.featurizer.fitted}

    def _load_extra_state(self, extra: dict) -> None:
        self.k = extra.get("k")
        self.featurizer._load_extra_state(extra.get("inner") or {})
        self.featurizer.fitted = bool(extra.get("inner_fitted", False))
