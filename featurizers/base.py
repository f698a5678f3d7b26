"""The one interface every featurizer shares.

A featurizer maps a hidden vector to features and back, with an error term so that the round trip
is exact (up to float rounding):

    f, err = F.encode(h)        # h: [..., d]  ->  f: [..., k], err: [..., d]
    h      = F.decode(f, err)   # back to [..., d]

The featurized interchange intervention (MIB) replaces the intervened features of the base with the
source's and adds the base's error back:

    f_b, e_b = F.encode(h_b); f_s, _ = F.encode(h_s)
    f = where(mask, f_s, f_b)          (a soft mask mixes them during training)
    h = F.decode(f, e_b)

Hyperparameters go in ``__init__`` (scikit-learn style, every one stored under its own name so that
``config()`` rebuilds the object). Featurizers learned from activations implement
``fit_activations``; those learned from interventions (DAS, DBM) own trainable torch parameters and
are fitted by ``causalvar.fit(featurizer, model, task, variable, site, data)``. Every featurizer saves to safetensors
plus a JSON config, never pickle.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
import numbers
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

_REGISTRY: dict[str, type["Featurizer"]] = {}


class FeaturizerError(ValueError):
    """A featurizer was used or loaded in a way that cannot work (wrong size, not fitted, bad file)."""


@dataclass(frozen=True)
class Tags:
    """What a featurizer is, declared once (scikit-learn's estimator tags): causalvar and
    ``featurizers.testing.check_featurizer`` read these instead of checking classes.

    linear: features and error are affine in ``h`` (PCA, DAS, neurons, supervised dictionaries; not an SAE).
    invertible: ``encode(decode(f, e))[0] == f``: the features are coordinates of a basis, so an
        interchange hands over exactly the masked features.
    learns_from: what it is fitted on before use: ``"activations"`` (``fit_activations``: PCA, SAE,
        supervised) and/or ``"interventions"`` (trainable parameters: DAS, DBM); empty for fixed bases.
    """

    linear: bool = True
    invertible: bool = True
    learns_from: tuple[str, ...] = ()


class Featurizer(nn.Module):
    """Base class. Subclasses implement ``_build``, ``encode``, ``decode`` and, where they select
    features, ``mask``; fitted ones implement ``fit_activations``; trainable ones declare
    ``learns_from=("interventions",)`` in their tags and may override
    ``soft_mask``/``regularizer``/``set_progress``. Capabilities are declared by overriding
    ``__featurizer_tags__`` (see ``Tags``).
    """

    def __featurizer_tags__(self) -> Tags:
        """This featurizer's ``Tags``; subclasses return ``dataclasses.replace(super()..., ...)``."""
        return Tags()

    @property
    def tags(self) -> Tags:
        return self.__featurizer_tags__()

    @property
    def learns_from_activations(self) -> bool:
        """Needs ``fit_activations(h)`` on the site's activations before use (PCA, SAE, supervised)."""
        return "activations" in self.tags.learns_from

    @property
    def learns_from_interventions(self) -> bool:
        """Has parameters trained with the interchange objective (DAS, DBM)."""
        return "interventions" in self.tags.learns_from

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def __init__(self):
        super().__init__()
        self.d: int | None = None  # the hidden size, set by build()
        self.fitted = False

    # ----------------------------------------------------------------- configuration
    def config(self) -> dict:
        """The ``__init__`` arguments, JSON-serialisable; ``type(f)(**f.config())`` is an unfitted twin."""
        out = {}
        for name in inspect.signature(type(self).__init__).parameters:
            if name == "self":
                continue
            value = getattr(self, name)
            out[name] = _to_config(value)
        return out

    def clone(self) -> "Featurizer":
        """A fresh, unfitted featurizer with the same hyperparameters (one per localization cell)."""
        return _from_config(type(self).__name__, self.config())

    @property
    def name(self) -> str:
        """A short label for tables and plots."""
        return type(self).__name__.lower()

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())

    # ----------------------------------------------------------------- building
    def build(self, d: int) -> "Featurizer":
        """Allocate parameters for hidden size ``d`` (idempotent for the same d)."""
        if self.d is not None and self.d != d:
            raise FeaturizerError(
                f"{self.name} was built for hidden size {self.d} but the site has size {d}; "
                "use featurizer.clone() for another site")
        if self.d is None:
            self.d = int(d)
            self._build(int(d))
        return self

    def _build(self, d: int) -> None:
        """Create d-dependent parameters/buffers. Default: nothing."""

    def fit_activations(self, h: torch.Tensor, values=None) -> "Featurizer":
        """Fit on site activations ``h: [n, d]`` (``values``: the variable's value per row, for
        supervised featurizers). Featurizers that learn nothing from activations only build."""
        self.build(h.shape[-1])
        return self

    def _check_input(self, h: torch.Tensor) -> None:
        """Refuse ``h: [..., d']`` whose last size is not the hidden size this featurizer was built for
        (a no-op before ``build``); cheap enough to run on every call."""
        if self.d is not None and h.shape[-1] != self.d:
            raise FeaturizerError(
                f"{self.name} was built for hidden size {self.d}, but got vectors of size {h.shape[-1]} "
                f"(shape {tuple(h.shape)}); use featurizer.clone() for a site of another size")

    def check_ready(self, d: int) -> None:
        """Raise a clear error if this featurizer cannot act on hidden size ``d`` yet."""
        if self.learns_from_activations and not self.fitted:
            raise FeaturizerError(f"{self.name} must be fitted on activations (fit_activations) before use")
        if self.d is not None and self.d != d:
            raise FeaturizerError(f"{self.name} was built for hidden size {self.d}, the site has {d}")

    # ----------------------------------------------------------------- the maps
    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``h: [..., d] -> (features [..., k], error [..., d])``."""
        raise NotImplementedError

    def decode(self, f: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        """``(features [..., k], error [..., d]) -> h [..., d]``."""
        raise NotImplementedError

    def mask(self) -> torch.Tensor | None:
        """Bool ``[k]``: the features an interchange takes from the source; ``None`` means all."""
        return None

    def subspace(self) -> tuple[torch.Tensor | None, list[int] | None]:
        """``(R, indices)`` when the interchange is "replace the indexed coordinates of ``h R``" for an
        orthonormal ``R: [d, k]`` (``None``: the identity) and ``indices`` (``None``: all) — the form
        MIB's submissions take; a ``FeaturizerError`` for featurizers that are not of that form."""
        raise FeaturizerError(f"{self.name} is not an orthonormal subspace with feature indices; DAS, Neurons, "
                              "PCA without standardisation, Subspace and DBM over those are")

    def _mask_indices(self) -> list[int] | None:
        m = self.mask()
        return None if m is None else m.nonzero().flatten().tolist()

    def soft_mask(self) -> torch.Tensor | None:
        """Float ``[k]`` in [0, 1] used while training (DBM, Boundless DAS); ``None``: use ``mask()``."""
        return None

    def interchange(self, h_base: torch.Tensor, h_source: torch.Tensor) -> torch.Tensor:
        """The featurized interchange: ``h_base, h_source: [..., d] -> [..., d]``."""
        self._check_input(h_base)
        self._check_input(h_source)
        f_b, e_b = self.encode(h_base)
        f_s, _ = self.encode(h_source)
        soft = self.soft_mask() if self.training else None
        if soft is not None:
            f = f_b + soft * (f_s - f_b)
        else:
            m = self.mask()
            f = f_s if m is None else torch.where(m, f_s, f_b)
        return self.decode(f, e_b)

    # ----------------------------------------------------------------- training hooks
    def regularizer(self) -> torch.Tensor | float:
        """An extra loss term added during training (e.g. DBM's L1 on the mask)."""
        return 0.0

    #: featurizers with an annealed schedule (``set_progress``) anneal over this many epochs, and training
    #: stops early (by the validation metric) only once the schedule has ended; ``None``: no schedule
    anneal_epochs: int | None = None

    def set_progress(self, fraction: float) -> None:
        """Told the fraction of the annealing schedule done (0 → 1), for annealed temperatures."""

    def summary(self) -> dict:
        """What was learned, for results tables (e.g. how many features a mask keeps)."""
        return {}

    # ----------------------------------------------------------------- persistence
    @property
    def has_state(self) -> bool:
        """Whether there is anything to save: built, and fitted or holding parameters."""
        return self.d is not None and (self.fitted or any(True for _ in self.parameters()))

    def save(self, path: str | Path) -> Path:
        """Write ``path/featurizer.json`` and ``path/featurizer.safetensors``."""
        from safetensors.torch import save_file

        if self.d is None:
            raise FeaturizerError(f"{self.name} has not been built or fitted; nothing to save")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"class": type(self).__name__, "config": self.config(), "d": self.d,
                "fitted": self.fitted, "extra": self._extra_state()}
        (path / "featurizer.json").write_text(json.dumps(meta, indent=1))
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(path / "featurizer.safetensors"))
        return path

    @staticmethod
    def load(path: str | Path, d: int | None = None) -> "Featurizer":
        """Load what ``save`` wrote, fitted state included, in eval mode (ready to be scored). ``d``: the
        hidden size of the site it will act on; a mismatch is refused with a clear message, as are an
        unreadable file and a file whose tensors don't match its config."""
        path = Path(path)
        meta = _read_meta(path)
        if d is not None and meta["d"] != d:
            raise FeaturizerError(
                f"the featurizer in {path} was fitted on hidden size {meta['d']}, but the site has size {d}")
        feat = _from_config(meta["class"], meta["config"])
        feat._load_extra_state(meta.get("extra") or {})
        feat.build(meta["d"])
        tensors = _read_tensors(path / "featurizer.safetensors")
        expected = feat.state_dict()
        for key, value in expected.items():
            if key not in tensors:
                raise FeaturizerError(f"{path}: tensor '{key}' is missing from the saved file")
            if tuple(tensors[key].shape) != tuple(value.shape):
                raise FeaturizerError(
                    f"{path}: tensor '{key}' has shape {tuple(tensors[key].shape)}, "
                    f"but {meta['class']}({meta['config']}) at size {meta['d']} expects {tuple(value.shape)}")
        unexpected = sorted(set(tensors) - set(expected))
        if unexpected:
            raise FeaturizerError(f"{path}: unexpected tensors {unexpected} for {meta['class']}")
        feat.load_state_dict(tensors)
        feat.fitted = meta["fitted"]
        return feat.eval()

    def __reduce__(self):
        """Pickled as ``save`` writes it — class, config, hidden size, tensors, extra state — so featurizers
        travel between processes (Ray workers) although torch refuses to pickle parametrized modules."""
        tensors = {k: v.detach().cpu() for k, v in self.state_dict().items()} if self.d is not None else {}
        return _restored, (type(self), self.config(), self.d, tensors, self._extra_state(), self.fitted, self.training)

    def _extra_state(self) -> dict:
        """JSON state beyond config and tensors (e.g. shapes a subclass must know before build)."""
        return {}

    def _load_extra_state(self, extra: dict) -> None:
        """Inverse of ``_extra_state``, called before ``build``."""


def _restored(cls: type, config: dict, d: int | None, tensors: dict, extra: dict, fitted: bool,
              training: bool) -> Featurizer:
    """The inverse of ``Featurizer.__reduce__``."""
    feat = cls(**_kwargs(config))
    feat._load_extra_state(extra)
    if d is not None:
        feat.build(d)
        feat.load_state_dict(tensors)
    feat.fitted = fitted
    return feat.train(training)


def _read_meta(path: Path) -> dict:
    """``path/featurizer.json`` as a dict, refused clearly when absent, not JSON, or not one of ours."""
    meta_file = path / "featurizer.json"
    if not meta_file.exists():
        raise FeaturizerError(f"{path} holds no featurizer.json; was it written by Featurizer.save?")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FeaturizerError(f"{meta_file} is not valid JSON ({e}); the file is corrupted, save the "
                              "featurizer again") from e
    missing = [k for k in ("class", "config", "d", "fitted") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise FeaturizerError(f"{meta_file} lacks {missing}; it was not written by Featurizer.save")
    return meta


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors ``file``, refused clearly when absent or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not file.exists():
        raise FeaturizerError(f"{file} is missing; Featurizer.save writes it next to featurizer.json")
    try:
        return load_file(str(file))
    except SafetensorError as e:
        raise FeaturizerError(f"{file} is not a readable safetensors file ({e}); it is truncated or "
                              "corrupted, save the featurizer again") from e


def check_count(owner: str, arg: str, value, none: str | None = None) -> int | None:
    """``value`` as a positive int (``None`` passes when ``none`` says what it means); otherwise a
    FeaturizerError naming ``owner``'s argument, the value and what is expected."""
    if value is None and none is not None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        alt = f" (or None for {none})" if none is not None else ""
        raise FeaturizerError(f"{owner}: {arg} must be a positive int{alt}, got {value!r}")
    return int(value)


def check_indices(owner: str, arg: str, value, none: str) -> list[int] | None:
    """``value`` (a list, range, tensor or array) as a list of non-negative ints (``None``: ``none``);
    otherwise a FeaturizerError."""
    if value is None:
        return None
    items = value.tolist() if hasattr(value, "tolist") else value
    ok = isinstance(items, Sequence) and not isinstance(items, str) and all(
        isinstance(i, numbers.Integral) and not isinstance(i, bool) and i >= 0 for i in items)
    if not ok:
        raise FeaturizerError(f"{owner}: {arg} must be a list of non-negative ints (or None for {none}), "
                              f"got {value!r}")
    return [int(i) for i in items]


def check_temperature(owner: str, value) -> tuple[float, float]:
    """``value`` as a (start, end) pair of positive numbers; otherwise a FeaturizerError."""
    pair = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else ()
    if len(pair) != 2 or not all(isinstance(t, numbers.Real) and t > 0 for t in pair):
        raise FeaturizerError(f"{owner}: temperature must be a (start, end) pair of positive numbers, "
                              f"got {value!r}")
    return float(pair[0]), float(pair[1])


def _to_config(value):
    if isinstance(value, Featurizer):
        return {"__featurizer__": type(value).__name__, "config": value.config()}
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (tuple, range)):
        return list(value)
    return value


def _from_config(cls_name: str, config: dict) -> Featurizer:
    if cls_name not in _REGISTRY:
        raise FeaturizerError(f"unknown featurizer class '{cls_name}'; known: {sorted(_REGISTRY)}")
    return _REGISTRY[cls_name](**_kwargs(config))


def _kwargs(config: dict) -> dict:
    """A config's ``__init__`` arguments, nested featurizers (DBM's inner one) made again."""
    return {k: _from_config(v["__featurizer__"], v["config"]) if isinstance(v, dict) and "__featurizer__" in v else v
            for k, v in config.items()}
