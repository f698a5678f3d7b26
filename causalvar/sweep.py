"""A sweep's unit of work. A ``Cell`` is a value (variable × featurizer × site × training settings);
``run_cell`` is a pure function of a cell and the data its sweep prepared once (``SweepData``: the engine
and the captured splits); an executor runs cells and lands every finished one in the run store, so an
interrupted sweep resumes. Every analysis plans cells and hands them to an executor; ``InProcessExecutor``
is the default, and a distributed executor implements the same ``run``.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from featurizers import Featurizer, FeaturizerError
from featurizers.subspace import random_controls

from .engine import Engine
from .metrics import Metric
from .runstore import RunStore, featurizer_dir
from .sites import Site
from .splits import Split, baseline, fit_activations, intervene
from .train import EPOCHS, PATIENCE, train


@dataclass(frozen=True)
class Training:
    """How a cell fits a featurizer that learns from interventions (AdamW on the featurizer only, the
    best validation state kept, stopping after ``patience`` epochs without improvement, ``epochs`` the
    upper bound). The training batch is fixed by the prepared training split's chunks."""

    epochs: int = EPOCHS
    lr: float = 1e-2
    patience: int = PATIENCE
    seed: int = 0


@dataclass(frozen=True)
class Cell:
    """One cell of a sweep. ``featurizer`` is the template: a fresh clone is fitted in the cell, a fitted or
    trained one is scored as is (see ``cell_featurizer``)."""

    variable: str
    featurizer: Featurizer
    site: Site
    training: Training = Training()
    #: random same-size controls scored beside the fitted featurizer (``featurizers.subspace.random_controls``)
    controls: int = 0

    @property
    def key(self) -> tuple[str, str, str, str]:
        """(variable, featurizer, layer, position): how results and run folders name the cell."""
        return self.variable, self.featurizer.name, str(self.site.layer), str(self.site.position)

    def __str__(self) -> str:
        return f"{self.variable} {self.featurizer.name} {self.site}"


@dataclass
class SweepData:
    """What the cells of one variable share, prepared once: the engine (the frozen network and its
    activation store), the training and validation splits (every counterfactual set's pairs joined),
    each set's test split, its count of distinct pairs, the metrics to report (the first is the
    table's primary metric) and whether trainable featurizers are to be trained (``n_train > 0``)."""

    engine: Engine
    train: Split
    val: Split | None
    tests: dict[str, Split]
    metrics: Sequence[Metric]
    n_train: int
    distinct: dict[str, int] = field(default_factory=dict)


@dataclass
class CellResult:
    """A finished cell: its table rows (one per counterfactual set) and its fitted featurizer."""

    cell: Cell
    rows: list[dict]
    featurizer: Featurizer | None


def trained(f: Featurizer) -> bool:
    """Whether a featurizer that learns from interventions already holds trained parameters (it was
    fitted, or loaded with ``Featurizer.load``): built for a hidden size."""
    return f.learns_from_interventions and f.d is not None


def cell_featurizer(f: Featurizer) -> Featurizer:
    """The featurizer a cell fits and scores: a trained or fitted one as is (``n_train=0`` scores it), a
    copy where a fitted one is still to be trained (DBM over a fitted PCA: the same start in every
    cell, the user's object untouched), else a fresh clone."""
    if trained(f) or (f.fitted and not f.learns_from_interventions):
        return f
    return copy.deepcopy(f) if f.fitted else f.clone()


def run_cell(cell: Cell, data: SweepData, progress: bool = False) -> CellResult:
    """Fit ``cell``'s featurizer at its site (on activations and/or by the interchange objective, as its
    tags say) and score it on every test split with every metric. Rows carry the primary metric with
    ``n`` and its interval, the other metrics with theirs, the no-effect ``baseline``, ``n_distinct``,
    the training history and what the featurizer learned (``summary``)."""
    site, t = cell.site, cell.training
    torch.manual_seed(t.seed)
    feat = cell_featurizer(cell.featurizer)
    feat.build(data.train.sources[site].shape[-1])
    info = {}
    if feat.learns_from_activations and not feat.fitted:
        fit_activations(feat, data.train, site)
    controlled = cell.controls > 0 and _has_controls(feat)  # of subspace form (once fitted: a DBM over PCA
    # knows its size then), checked before the interchange training
    if feat.learns_from_interventions and data.n_train > 0:
        val = data.val if data.val is not None and len(data.val) else None
        hist = train(data.engine, feat, site, data.train, val, epochs=t.epochs, lr=t.lr, seed=t.seed,
                     patience=t.patience, progress=progress, desc=f"train {cell}")
        info.update(epochs_run=hist["epochs"], converged=hist["converged"], final_loss=round(hist["loss"][-1], 5),
                    val_curve=[round(v, 5) for v in hist["val_score"]])
    primary, *others = data.metrics
    controls = random_controls(feat, cell.controls, t.seed) if controlled else []
    rows = []
    for name, test in data.tests.items():
        out = intervene(data.engine, test, site, feat)
        columns = primary.columns(out)
        for m in others:
            columns.update(m.columns(out, primary=False))
        if cell.controls:
            columns.update(_control_columns(data.engine, test, site, controls, primary))
        rows.append({"variable": cell.variable, "featurizer": cell.featurizer.name, "layer": site.layer,
                     "position": site.position, "dataset": name, **columns, "baseline": baseline(test, primary),
                     **({"n_distinct": data.distinct[name]} if name in data.distinct else {}), **info,
                     **feat.summary()})
    return CellResult(cell, rows, feat)


def _has_controls(feat: Featurizer) -> bool:
    """Whether random same-size controls exist for ``feat`` (not for the full vector); a featurizer not
    of subspace form is refused before its cell trains."""
    try:
        R, idx = feat.subspace()
    except FeaturizerError as e:
        raise FeaturizerError(f"controls: {e}; random controls are same-size random subspaces, so score "
                              f"{feat.name} with controls=0") from e
    return not (R is None and idx is None)


def _control_columns(engine: Engine, test: Split, site: Site, controls: list[Featurizer], metric: Metric) -> dict:
    """``controls`` (how many), ``control_mean`` and ``control_max`` (the best control: the highest, or the
    lowest where lower is better) of the metric over the random controls (none for the full vector: NaN)."""
    if not controls:
        return {"controls": 0, "control_mean": float("nan"), "control_max": float("nan")}
    values = []
    for ctrl in controls:
        out = intervene(engine, test, site, ctrl)
        values.append(metric.value(metric.score(out), out))
    best = min(values) if metric.lower_is_better else max(values)
    return {"controls": len(values), "control_mean": sum(values) / len(values), "control_max": best}


class InProcessExecutor:
    """Runs cells one after the other in this process, with a progress bar. Cells the run store already
    holds are not run again: their rows (and saved featurizers) are read back."""

    def run(self, cells: Sequence[Cell], data: SweepData, store: RunStore | None = None,
            progress: bool = True, desc: str = "cells") -> Iterator[CellResult]:
        done = store.done() if store else {}
        bar = tqdm(total=len(cells), desc=desc, disable=not progress)
        try:
            for cell in cells:
                bar.set_postfix_str(str(cell))
                yield resumed(cell, data, store, done) or self._finish(run_cell(cell, data, progress), store)
                bar.update(1)
        finally:
            bar.close()

    @staticmethod
    def _finish(result: CellResult, store: RunStore | None) -> CellResult:
        if store:
            store.write_cell(result.rows, result.featurizer, result.cell.key)
        return result


def resumed(cell: Cell, data: SweepData, store: RunStore | None, done: dict) -> CellResult | None:
    """The cell as a finished run left it in ``store`` (every test set's row present), else ``None``."""
    keys = [cell.key + (name,) for name in data.tests]
    if not store or not all(k in done for k in keys):
        return None
    path = Path(store.folder) / featurizer_dir(*cell.key)
    feat = Featurizer.load(path) if (path / "featurizer.json").exists() else None
    return CellResult(cell, [done[k] for k in keys], feat)

