"""Supervised dictionaries (Makelov, Lange & Nanda 2024): one atom per value of each attribute."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch

from .base import Featurizer, FeaturizerError, Tags

METHODS = ("mse", "mean")
#: the attribute name given to values passed as one sequence (a single attribute)
SINGLE = "value"


def _as_list(values) -> list:
    """Values as a list of plain Python values (tensor items unwrapped)."""
    return values.tolist() if torch.is_tensor(values) else [v.item() if hasattr(v, "item") else v for v in values]


def _sorted(values) -> list:
    return sorted(set(values), key=lambda v: (str(type(v)), v))


class SupervisedDictionary(Featurizer):
    """Atoms ``u_{i,v}`` (rows of ``atoms: [K, d]``) for every value v of every attribute i, so that an
    activation with attribute values ``a_1..a_m`` is reconstructed as ``â = μ + Σ_i u_{i,a_i}``.

    ``method="mse"`` (the default, recommended when attributes correlate): the atoms are the least-squares
    solution ``U = C⁺ (A − μ)`` over the one-hot attribute indicators ``C: [n, K]`` (minimum norm; the
    reconstructions and the edits ``u_{i,v'} − u_{i,v}`` are unique). ``method="mean"``: the mean-difference
    dictionary ``u_{i,v} = mean(h | a_i = v) − μ``, which counts shared directions twice when attributes
    correlate. For a single attribute both give the same atoms.

    Features: ``encode(h)`` gives the least-squares coordinates of ``h − μ`` on the atoms, ``f = (h − μ) U⁺:
    [..., K]``, ``err = h − (f U + μ)`` (what a localization sweep interchanges). ``code(values)`` gives the
    supervised code of known attribute values: one-hot per attribute, so ``decode(code, 0) = â``; the
    evaluation of dictionaries (``cv.evaluate_dictionaries``) reads it, and its edit of attribute i from v
    to v' removes feature (i, v) and adds feature (i, v').
    """

    def __featurizer_tags__(self) -> Tags:
        # affine, but its atoms are linearly dependent: the pseudo-inverse does not give back any f
        return replace(super().__featurizer_tags__(), invertible=False, learns_from=("activations",))

    def __init__(self, method: str = "mse"):
        super().__init__()
        if method not in METHODS:
            raise FeaturizerError(f"SupervisedDictionary: method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.values_: list = []  # each atom's value, in atom order (set by fit_activations)
        self.attributes_: list[str] = []  # each atom's attribute, in atom order

    @property
    def name(self) -> str:
        return "supervised" if self.method == "mse" else f"supervised({self.method})"

    @property
    def attribute_names(self) -> list[str]:
        """The attributes, in atom order (``["value"]`` when the values were given as one sequence)."""
        return list(dict.fromkeys(self.attributes_))

    def atoms_of(self, attribute: str) -> list[int]:
        """The feature indices of ``attribute``'s atoms."""
        if attribute not in self.attributes_:
            raise FeaturizerError(f"{self.name} has no attribute {attribute!r}; it was fitted on "
                                  f"{self.attribute_names}")
        return [i for i, a in enumerate(self.attributes_) if a == attribute]

    def _build(self, d: int) -> None:
        K = len(self.values_)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("atoms", torch.zeros(K, d))
        self.register_buffer("pinv", torch.zeros(d, K))

    def _columns(self, values, n: int) -> dict[str, list]:
        """``values`` (one sequence, or ``{attribute: sequence}``) as ``{attribute: list}``, each of length n."""
        cols = ({str(a): _as_list(v) for a, v in values.items()} if isinstance(values, Mapping)
                else {SINGLE: _as_list(values)})
        if not cols:
            raise FeaturizerError(f"{self.name} needs at least one attribute's values")
        for a, v in cols.items():
            if len(v) != n:
                raise FeaturizerError(f"got {len(v)} values of attribute {a!r} for {n} activations")
        return cols

    @torch.no_grad()
    def fit_activations(self, h: torch.Tensor, values: Sequence | Mapping | torch.Tensor | None = None,
                        ) -> "SupervisedDictionary":
        """Fit on ``h: [n, d]`` with ``values``: each row's value of one attribute (a sequence of ints, strs,
        bools, ...), or ``{attribute: sequence}`` for several attributes at once."""
        if values is None:
            raise FeaturizerError("SupervisedDictionary.fit_activations needs the attribute values of each row")
        cols = self._columns(values, len(h))
        self.values_, self.attributes_ = [], []
        for a, v in cols.items():
            distinct = _sorted(v)
            self.values_ += distinct
            self.attributes_ += [a] * len(distinct)
        self.build(h.shape[-1])
        x = h.detach().to(torch.float64)
        mean = x.mean(0)
        C = self.code(cols).to(x)  # [n, K] one-hot per attribute
        if self.method == "mean":
            atoms = (C.T @ x) / C.sum(0)[:, None] - mean
        else:
            atoms = torch.linalg.pinv(C) @ (x - mean)
        pinv = torch.linalg.pinv(atoms, rtol=1e-6)
        dt, dev = self.mean.dtype, self.mean.device
        self.mean, self.atoms, self.pinv = (t.to(dev, dt) for t in (mean, atoms, pinv))
        self.fitted = True
        return self

    def code(self, values: Sequence | Mapping | torch.Tensor) -> torch.Tensor:
        """The supervised code ``[n, K]`` of known attribute values (as ``fit_activations`` takes them): 1 on
        each attribute's atom of the row's value, 0 elsewhere. A value without an atom is refused."""
        n = len(next(iter(values.values()))) if isinstance(values, Mapping) else len(values)
        cols = self._columns(values, n)
        missing = [a for a in self.attribute_names if a not in cols]
        if missing:
            raise FeaturizerError(f"{self.name} needs the values of every attribute it was fitted on; "
                                  f"missing {missing}")
        out = torch.zeros(n, len(self.values_), dtype=self.mean.dtype if self.d is not None else torch.float32)
        for a in self.attribute_names:
            index = {self.values_[i]: i for i in self.atoms_of(a)}
            for row, v in enumerate(cols[a]):
                if v not in index:
                    raise FeaturizerError(f"attribute {a!r} takes the value {v!r}, which {self.name} has no atom "
                                          f"for (it was fitted on {len(index)} values); fit it on rows that show it")
                out[row, index[v]] = 1.0
        return out

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_input(h)
        f = (h - self.mean) @ self.pinv
        return f, h - self.decode(f, torch.zeros_like(h))

    def decode(self, f: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        return f @ self.atoms + self.mean + err

    def _extra_state(self) -> dict:
        return {"values": self.values_, "attributes": self.attributes_}

    def _load_extra_state(self, extra: dict) -> None:
        self.values_ = list(extra.get("values", []))
        self.attributes_ = list(extra.get("attributes", [SINGLE] * len(self.values_)))
