"""Localization, the front door of a sweep: validate the arguments, prepare each variable's data once,
plan its cells (variable × featurizer × layer × position), hand them to an executor, collect ``Results``."""
from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path

from featurizers import Featurizer, FeaturizerError

from .counterfactuals import CounterfactualDataset, DuplicatePairsWarning
from .engine import Engine
from .metrics import Metric, as_metric
from .models import as_adapter
from .results import Results
from .runstore import RunStore
from .sites import Site
from .splits import Split, build_splits, drawn_splits, warn_no_effect
from .executors import as_executor
from .sweep import Cell, SweepData, Training, trained
from .train import EPOCHS, PATIENCE, ConvergenceWarning, check_count, check_training


def _as_list(x) -> list:
    if x is None:
        return [None]
    return list(x) if isinstance(x, (list, tuple, range)) else [x]


def _as_layers(layers) -> list:
    """``layers`` as a list: one int or module path is one layer, the way ``variable`` takes one name."""
    if isinstance(layers, (int, str)):
        return [layers]
    if layers is None or not isinstance(layers, Sequence) or not len(layers):
        raise ValueError(f"layers must be a block index, a module path, or a non-empty list of them "
                         f"(e.g. layers=[0, 1, 2] or layers=range(12)), got {layers!r}")
    return list(layers)


def _check_featurizers(featurizer, n_train: int) -> list[Featurizer]:
    """The featurizers as a list, refused before any work when they are classes, untrainable with
    ``n_train`` pairs, or already trained while ``n_train`` asks to train them again."""
    feats = _as_list(featurizer)
    for f in feats:
        if isinstance(f, type) and issubclass(f, Featurizer):
            raise ValueError(f"featurizer {f.__name__} is a class; pass an instance, e.g. {f.__name__}() "
                             "(with its hyperparameters: DAS(dim=8), Neurons(dims=[0, 3]), PCA(n_components=8))")
        if not isinstance(f, Featurizer):
            raise ValueError(f"featurizer must be a Featurizer instance (e.g. Neurons(), DAS(dim=8)), got {f!r} "
                             f"of type {type(f).__name__}")
        if trained(f) and n_train > 0:
            raise ValueError(f"{f.name} is already trained (on hidden size {f.d}) and n_train={n_train} would "
                             "train it again; pass n_train=0 to score it as is, or featurizer.clone() to train "
                             "a new one")
        if f.learns_from_interventions and not trained(f) and n_train <= 0:
            raise ValueError(f"{f.name} learns from interventions; n_train must be > 0 (or pass a trained one, "
                             "e.g. Featurizer.load(path), with n_train=0 to score it as is)")
        if f.learns_from_activations and not f.fitted and n_train <= 0:
            raise ValueError(f"{f.name} must be fitted on activations; pass n_train > 0 or a fitted featurizer")
    names = [f.name for f in feats]
    if len(set(names)) != len(names):
        raise ValueError(f"featurizers must have distinct names, got {names}")
    return feats


def _check_sites(feats: Sequence[Featurizer], sizes: dict[Site, int]) -> None:
    """Every featurizer must fit every site's hidden size (from the capture pass): checked for all
    cells before any is fitted or scored, naming the layer."""
    for f in feats:
        fits: set[int] = set()
        for s, d in sizes.items():
            where = f"layer {s.layer!r}" + ("" if s.position is None else f" (position {s.position!r})")
            if f.d is not None and f.d != d:
                raise FeaturizerError(f"{f.name} was fitted on hidden size {f.d}, but {where} has size {d}; pass "
                                      f"a featurizer fitted at a site of size {d}, or featurizer.clone() to fit "
                                      "a new one in every cell")
            if f.d is None and d not in fits:
                try:  # a throwaway twin: the cells build their own
                    (copy.deepcopy(f) if f.fitted else f.clone()).build(d)
                except ValueError as e:
                    raise FeaturizerError(f"{f.name} does not fit {where}, whose activations have size {d}: "
                                          f"{e}") from e
                fits.add(d)


def localize(model, task, variable: str | Sequence[str], featurizer: Featurizer | Sequence[Featurizer],
             layers: int | str | Sequence[int | str], positions=None, n_train: int = 1000, n_test: int = 200,
             seed: int = 0, data: CounterfactualDataset | dict | None = None, batch_size: int = 64,
             epochs: int = EPOCHS, lr: float = 1e-2, val_fraction: float = 0.2, patience: int = PATIENCE,
             filter_correct: bool = True,
             changes_output: bool = False, component: str = "resid_post", out: str | Path | None = None,
             progress: bool = True, max_memory_gb: float | None = 4.0, train_batch_size: int = 64,
             metrics: Sequence[Metric | str] | None = None, controls: int = 0, executor=None) -> Results:
    """Localize ``variable`` (one or several) with ``featurizer`` (one or several) at every
    ``layers`` × ``positions`` cell, and score each on held-out pairs by the task's metric (IIA;
    tasks with real-valued outputs name theirs, e.g. the squared error of IOI's logit difference).

    Args:
        model: a torch module, a ``cv.HFModel``/``cv.load_model(...)`` adapter, or a model name.
        task: a ``cv.Task`` / ``cv.PromptTask`` whose causal model has ``variable``.
        featurizer: instances (``DAS(dim=8)``, not ``DAS``). One already trained or fitted (e.g. loaded
            with ``Featurizer.load``) is scored as is with ``n_train=0``; a trained DAS/DBM with
            ``n_train > 0`` is refused (``featurizer.clone()`` trains a new one).
        layers: one layer or a list; ints index blocks, strings name modules. positions: ints, "last",
            task roles, or ``None`` for networks without a sequence axis.
        n_train: training pairs per variable (0 for featurizers that learn nothing, e.g. Neurons or a
            fitted PCA); a ``val_fraction`` of them is held out for early stopping of trainable ones.
        n_test: evaluation pairs. data: a dataset, a list of datasets (MIB's counterfactual sets: the
            featurizer is trained on all their training pairs and scored on each one's test pairs; the
            table's ``dataset`` column names the set), or {variable: dataset(s)}. By default the task's
            ``counterfactual_sets`` (random pairs unless the task names others), drawn in rounds until
            ``n_train + n_test`` pairs per set survive the filter (up to 10x that many candidates).
            ``n_train`` and ``n_test`` count pairs per set. Pairs are drawn independently, so a small
            input space repeats them: each row's ``n_distinct`` counts the distinct (base, source)
            pairs among its ``n``, and a ``DuplicatePairsWarning`` says when under 90% are distinct (the
            interval ``ci_low``..``ci_high`` counts repeats as new evidence).
        batch_size: rows per forward when capturing activations and evaluating; no number depends on it.
        train_batch_size: training pairs per AdamW step of DAS/DBM; the trained featurizers (and so
            their scores) depend on it.
        epochs, lr, patience: training of DAS/DBM (AdamW on the featurizer only) to convergence: stopping
            after ``patience`` epochs without a better validation score (after the annealing schedule of
            DBM and Boundless DAS), ``epochs`` the upper bound. Rows carry ``epochs_run``, ``converged``
            (False: stopped at the bound, still improving; a ``ConvergenceWarning`` counts them) and
            ``val_curve`` (the validation score per epoch).
        filter_correct: score only pairs the network gets right on base and source (MIB).
        changes_output: generate only pairs whose interchange changes the high-level output.
        out: a folder; every finished cell is appended to ``out/cells.jsonl`` and a rerun with the
            same settings resumes where it stopped; the final results are saved there.
        max_memory_gb: captured activations kept in memory; the rest goes to memory-mapped files
            (``None``: no bound).
        metrics: what to report, each a column (``cv.metrics.Metric`` instances or names: "iia",
            "logit_diff", "prob", "kl_diff", ...); the first is the table's primary metric (with ``n``,
            the interval and the baseline). Default: the task's metric, which is also what training
            minimises and early stopping reads.
        controls: score, beside each fitted featurizer, this many random same-size controls at its cell
            (``featurizers.subspace.random_controls``: random orthonormal subspaces of a DAS or PCA
            subspace's dimension, random selections of as many neurons or basis vectors for a mask),
            seeded; columns ``controls``, ``control_mean``, ``control_max`` (the best control); the
            heatmap hatches cells that do not beat their best control. The full vector has none (NaN).
        executor: runs the planned cells: ``None`` (in this process), ``"ray"`` or a ``cv.RayExecutor(...)``
            (Ray actors; the same table), or any object with the executors' ``run``.
    Returns: ``Results`` (``.table``, ``.heatmap(path)``, ``.save(dir)``). Each row holds the metric, its
    ``baseline`` (the metric with nothing interchanged: the network's own outputs on the bases scored
    against the counterfactual labels), ``n``, ``n_distinct`` and a 95% interval.
    Warns ``NoEffectWarning`` when no pair's counterfactual label differs from its base's output.
    """
    check_count("seed", seed, 0, "the same seed gives the same table")
    check_count("n_train", n_train, 0, "training pairs per set")
    check_count("n_test", n_test, 1, "evaluation pairs per set")
    check_count("batch_size", batch_size, 1, "rows per forward")
    check_training(epochs, lr, val_fraction, patience, train_batch_size)
    check_count("controls", controls, 0, "random same-size controls per cell")
    adapter = as_adapter(model)
    variables = _as_list(variable)
    layers = _as_layers(layers)
    feats = _check_featurizers(featurizer, n_train)
    metrics = [as_metric(m) for m in (metrics or [task.metric])]
    if len({m.name for m in metrics}) != len(metrics):
        raise ValueError(f"metrics must have distinct names, got {[m.name for m in metrics]}")
    cm = task.causal_model
    for v in variables:
        if v not in cm.variables:
            raise ValueError(f"unknown variable '{v}'; the causal model's variables are {list(cm.variables)}")
    sites = [Site(layer, pos, component) for layer in layers for pos in _as_list(positions)]
    for s in sites:
        adapter.module_path(s)  # unknown layers fail before any work
    meta = {"model": type(adapter.module).__name__, "task": task.name, "variables": variables,
            "featurizers": [{"name": f.name, "class": type(f).__name__, "config": f.config()} for f in feats],
            "layers": [str(x) for x in layers], "positions": [str(p) for p in _as_list(positions)],
            "n_train": n_train, "n_test": n_test, "seed": seed, "epochs": epochs, "lr": lr,
            "train_batch_size": train_batch_size, "filter_correct": filter_correct, "component": component,
            "controls": controls, "metric": metrics[0].name, "lower_is_better": metrics[0].lower_is_better,
            **({"metrics": [m.name for m in metrics]} if len(metrics) > 1 else {}), "data": {}}
    store = RunStore(out, {k: v for k, v in meta.items() if k != "data"}) if out is not None else None
    try:
        engine = Engine(adapter, batch_size=batch_size, max_memory_gb=max_memory_gb)
        executor = as_executor(executor)
        training = Training(epochs=epochs, lr=lr, patience=patience, seed=seed)
        results = Results(meta=meta)
        for v in variables:
            prepared = _prepare(engine, task, v, data.get(v) if isinstance(data, dict) else data, sites, feats,
                                metrics, n_train, n_test, val_fraction, batch_size, train_batch_size, seed,
                                filter_correct, changes_output, meta["data"])
            if v == variables[0]:  # the capture pass gives every site's size: check all cells before any runs
                _check_sites(feats, {s: prepared.train.sources[s].shape[-1] for s in sites})
            cells = [Cell(v, f, s, training, controls) for f in feats for s in sites]
            for result in executor.run(cells, prepared, store, progress, desc=f"localize {v}"):
                results.rows += result.rows
                if result.featurizer is not None:
                    results.featurizers[result.cell.key] = result.featurizer
        stopped = [r for r in results.rows if r.get("converged") is False]
        if stopped:
            cells = sorted({f"{r['variable']} {r['featurizer']} L{r['layer']} {r['position']}" for r in stopped})
            warnings.warn(ConvergenceWarning(
                f"{len(cells)} trained cell(s) stopped at the upper bound epochs={epochs} with the validation score "
                f"still improving (column converged=False): {', '.join(cells[:5])}{' ...' if len(cells) > 5 else ''}; "
                "raise epochs, or the learning rate"), stacklevel=2)
        if out is not None:
            results.save(out)
        return results
    finally:
        if store:
            store.close()  # released also when a cell raises (a notebook can retry at once)


def _prepare(engine: Engine, task, variable: str, given, sites, feats, metrics, n_train, n_test, val_fraction,
             batch_size, train_batch_size, seed, filter_correct, changes_output, reports: dict) -> SweepData:
    """The data every cell of ``variable`` shares: each counterfactual set captured, filtered and split
    once (training splits in chunks of ``train_batch_size``), the training and validation splits of all
    sets joined, each set's test split with its count of distinct pairs."""
    n_val = int(round(n_train * val_fraction)) if any(f.learns_from_interventions for f in feats) else 0
    sizes, chunks = [n_train - n_val, n_val, n_test], [train_batch_size, batch_size, batch_size]
    built = _splits(engine, task, variable, given, sites, sizes, chunks, seed, filter_correct, changes_output)
    warn_no_effect(variable, [kept for _, kept in built], task.causal_model.output)
    train_split = Split.concat([p[0] for p, _ in built], engine.store)
    val = Split.concat([p[1] for p, _ in built], engine.store)
    return SweepData(engine, train_split, val, {kept.name: te for (_, _, te), kept in built}, metrics, n_train,
                     _distinct_pairs(variable, built, reports))


def _distinct_pairs(variable: str, built, reports: dict) -> dict[str, int]:
    """How many distinct (base, source) pairs each set's test split holds; each set's report (in
    ``reports``) says so, and a ``DuplicatePairsWarning`` when under 90% of the test pairs are distinct."""
    distinct = {}
    for (_, _, te), kept in built:
        distinct[kept.name] = n = kept.subset(te.rows).n_distinct()
        reports[f"{variable}/{kept.name}"] = kept.report + [f"test pairs: {len(te)}, of which {n} distinct "
                                                            "(base, source) pairs"]
        if n < 0.9 * len(te):
            warnings.warn(DuplicatePairsWarning(
                f"the {len(te)} test pairs of variable '{variable}' (set '{kept.name}') hold only {n} distinct "
                "(base, source) pairs: the input space is small, so pairs repeat and the interval (ci_low, "
                "ci_high), which counts each as new evidence, is narrower than the data support; read "
                "n_distinct, or lower n_test"), stacklevel=3)
    return distinct


def _splits(engine: Engine, task, variable: str, given, sites, sizes, chunks, seed, filter_correct, changes_output):
    """(splits, filtered dataset) per counterfactual set of ``variable``: the sets given, or the task's
    drawn until enough pairs survive the filter."""
    if given is None:
        return drawn_splits(engine, task, variable, sites, sizes, seed=seed, filter_correct=filter_correct,
                            changes_output=changes_output, batch_sizes=chunks)
    datasets = list(given) if isinstance(given, (list, tuple)) else [given]
    for ds in datasets:
        if ds.variable != variable:
            raise ValueError(f"the dataset '{ds.name}' given for variable '{variable}' interchanges '{ds.variable}'")
    if len({ds.name for ds in datasets}) != len(datasets):
        raise ValueError(f"the counterfactual sets of variable '{variable}' need distinct names, got "
                         f"{[ds.name for ds in datasets]}")
    return [build_splits(engine, task, ds, sites, sizes, seed=seed, filter_correct=filter_correct, batch_sizes=chunks)
            for ds in datasets]
