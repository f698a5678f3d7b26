"""Counterfactual datasets: (base, source, counterfactual label) rows for one variable.

Each row says: if the high-level ``variable`` took the value it has on ``source``
while everything else is computed from ``base``, the model's output would be ``label``.
A network that realises the variable at some location must reproduce these labels
under the matching interchange intervention.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from causalvar.causal_model import CausalModel, Setting

SourceGenerator = Callable[[Setting, random.Random], Setting]


class CounterfactualError(ValueError):
    """A counterfactual dataset could not be built or was used incorrectly."""


class NoEffectWarning(UserWarning):
    """No interchange of the variable changes the high-level output: its score cannot tell anything."""


class DuplicatePairsWarning(UserWarning):
    """The scored pairs repeat (base, source) pairs, so their count overstates the evidence."""


class Row(NamedTuple):
    """One counterfactual pair with its labels."""

    base: Setting
    source: Setting
    label: Any
    base_label: Any
    source_label: Any


@dataclass
class CounterfactualDataset:
    """Rows of (base inputs, source inputs, counterfactual label) for interchanging ``variable``.

    ``labels[i]`` is the model output when ``variable`` takes its value under ``sources[i]``
    in the run on ``bases[i]``; ``base_labels`` / ``source_labels`` are the plain outputs.
    ``report`` is a human-readable log of how the dataset was drawn and filtered.
    """

    variable: str
    bases: list[Setting]
    sources: list[Setting]
    labels: list
    base_labels: list
    source_labels: list
    name: str = "random"
    report: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        lengths = [len(c) for c in (self.bases, self.sources, self.labels, self.base_labels, self.source_labels)]
        if len(set(lengths)) != 1:
            raise CounterfactualError(
                "bases, sources, labels, base_labels and source_labels must have equal lengths, "
                f"got {', '.join(map(str, lengths))}"
            )

    @classmethod
    def generate(
        cls,
        causal_model: CausalModel,
        variable: str,
        n: int,
        seed: int = 0,
        source: SourceGenerator | None = None,
        changes_output: bool = False,
        max_draws: int | None = None,
        name: str = "random",
    ) -> CounterfactualDataset:
        """Draw ``n`` counterfactual pairs for ``variable`` with ``random.Random(seed)``.

        Bases are drawn like :meth:`CausalModel.sample` (using the model's sampler if any).
        Sources are drawn the same way, independently, unless ``source`` is given: a
        generator ``(base, rng) -> source inputs`` such as "swap the two names".
        With ``changes_output`` only pairs whose counterfactual label differs from the base
        label are kept. Drawing stops once ``n`` pairs are kept; if ``max_draws``
        (default ``100 * n``) candidates do not yield them, :class:`CounterfactualError`.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise CounterfactualError(f"n must be a positive integer, got {n!r}")
        max_draws = 100 * n if max_draws is None else max_draws
        if max_draws < n:
            raise CounterfactualError(f"max_draws ({max_draws}) is smaller than n ({n})")
        if variable not in causal_model.variables:
            raise CounterfactualError(
                f"unknown variable {variable!r}; variables are: {', '.join(causal_model.variables)}"
            )
        rng = random.Random(seed)
        out = causal_model.output
        rows: list[Row] = []
        drawn = 0
        while len(rows) < n and drawn < max_draws:
            drawn += 1
            base = causal_model.draw(rng)
            src = causal_model.draw(rng) if source is None else source(dict(base), rng)
            src = {key: src[key] for key in causal_model.inputs if key in src}
            row = Row(
                base,
                src,
                causal_model.interchange(base, {variable: src})[out],
                causal_model.run(base)[out],
                causal_model.run(src)[out],
            )
            if not changes_output or row.label != row.base_label:
                rows.append(row)
        if len(rows) < n:
            raise CounterfactualError(
                f"only {len(rows)} of the {n} requested pairs for variable {variable!r} change the output "
                f"after {drawn} draws; relax changes_output or check the causal model"
            )
        origin = "independent draws" if source is None else getattr(source, "__name__", repr(source))
        report = [f"drew {drawn} candidate pairs for variable {variable!r} (seed {seed}, sources: {origin})"]
        if changes_output:
            report.append(f"filter 'changes output (label != base label)': dropped {drawn - n} of {drawn}")
        report.append(f"kept {n} pairs in counterfactual set {name!r}")
        return cls(variable, *_columns(rows), name=name, report=report)

    def __len__(self) -> int:
        return len(self.bases)

    def __getitem__(self, i: int) -> Row:
        return Row(self.bases[i], self.sources[i], self.labels[i], self.base_labels[i], self.source_labels[i])

    def __iter__(self) -> Iterator[Row]:
        return (self[i] for i in range(len(self)))

    def n_distinct(self) -> int:
        """How many distinct (base, source) pairs the rows hold: pairs are drawn independently, so a
        small input space repeats them (27 settings give 729 pairs, whatever ``n`` asks)."""
        key = lambda setting: repr(sorted(setting.items()))
        return len({(key(b), key(s)) for b, s in zip(self.bases, self.sources)})

    def subset(self, indices: Iterable[int]) -> CounterfactualDataset:
        """A new dataset with the rows at ``indices``, in that order."""
        indices = list(indices)
        return self._take(indices, f"subset: kept {len(indices)} of {len(self)} rows")

    def filter(
        self, keep: Sequence[bool] | Callable[[Row], bool], reason: str
    ) -> CounterfactualDataset:
        """A new dataset with the rows where ``keep`` holds (a bool per row, or a predicate on rows).

        The drop count is logged in the report as ``filter '<reason>': dropped k of n``.
        """
        mask = [bool(keep(row)) for row in self] if callable(keep) else [bool(k) for k in keep]
        if len(mask) != len(self):
            raise CounterfactualError(f"filter {reason!r}: got {len(mask)} keep flags for {len(self)} rows")
        indices = [i for i, k in enumerate(mask) if k]
        return self._take(indices, f"filter {reason!r}: dropped {len(self) - len(indices)} of {len(self)}")

    def split(
        self, n_train: int | float, seed: int = 0
    ) -> tuple[CounterfactualDataset, CounterfactualDataset]:
        """Shuffle with ``random.Random(seed)`` and split into (train, test).

        ``n_train`` is a row count, or a fraction of the rows if it is a float.
        """
        if isinstance(n_train, float):
            if not 0.0 <= n_train <= 1.0:
                raise CounterfactualError(f"a fractional n_train must lie in [0, 1], got {n_train}")
            n_train = round(n_train * len(self))
        if isinstance(n_train, bool) or not isinstance(n_train, int) or not 0 <= n_train <= len(self):
            raise CounterfactualError(
                f"n_train must be an int in [0, {len(self)}] or a fraction, got {n_train!r}"
            )
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        note = f"split (seed {seed}): {n_train} train / {len(self) - n_train} test of {len(self)}"
        train = self._take(order[:n_train], note + "; this is train")
        return train, self._take(order[n_train:], note + "; this is test")

    def summary(self) -> str:
        """The report, one line per step."""
        return "\n".join(self.report)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (given JSON-serialisable values); inverse of :meth:`from_dict`."""
        return {
            "variable": self.variable,
            "name": self.name,
            "bases": [dict(b) for b in self.bases],
            "sources": [dict(s) for s in self.sources],
            "labels": list(self.labels),
            "base_labels": list(self.base_labels),
            "source_labels": list(self.source_labels),
            "report": list(self.report),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CounterfactualDataset:
        """Rebuild a dataset from :meth:`to_dict` output."""
        return cls(
            variable=data["variable"],
            bases=[dict(b) for b in data["bases"]],
            sources=[dict(s) for s in data["sources"]],
            labels=list(data["labels"]),
            base_labels=list(data["base_labels"]),
            source_labels=list(data["source_labels"]),
            name=data.get("name", "random"),
            report=list(data.get("report", [])),
        )

    def _take(self, indices: list[int], note: str) -> CounterfactualDataset:
        return CounterfactualDataset(
            self.variable, *_columns([self[i] for i in indices]), name=self.name, report=self.report + [note]
        )


def _columns(rows: list[Row]) -> tuple[list, list, list, list, list]:
    """Rows -> (bases, sources, labels, base_labels, source_labels)."""
    return (
        [r.base for r in rows],
        [r.source for r in rows],
        [r.label for r in rows],
        [r.base_label for r in rows],
        [r.source_label for r in rows],
    )
