"""The sweep: every (variable × featurizer × layer × position) cell, fitted and scored."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from featurizers import Featurizer

from .cells import Split, build_splits, evaluate, fit_activations
from .counterfactuals import CounterfactualDataset
from .engine import Engine
from .metrics import score_row
from .models import as_adapter
from .results import Results, featurizer_dir
from .runstore import RunStore
from .sites import Site
from .train import train


def _as_list(x) -> list:
    if x is None:
        return [None]
    return list(x) if isinstance(x, (list, tuple, range)) else [x]


def localize(model, task, variable: str | Sequence[str], featurizer: Featurizer | Sequence[Featurizer],
             layers: Sequence[int | str], positions=None, n_train: int = 1000, n_test: int = 200,
             seed: int = 0, data: CounterfactualDataset | dict | None = None, batch_size: int = 64,
             epochs: int = 3, lr: float = 1e-2, val_fraction: float = 0.2, patience: int = 3,
             filter_correct: bool = True,
             changes_output: bool = False, component: str = "output", out: str | Path | None = None,
             progress: bool = True, max_memory_gb: float | None = 4.0) -> Results:
    """Localize ``variable`` (one or several) with ``featurizer`` (one or several) at every
    ``layers`` × ``positions`` cell, and score each on held-out pairs by the task's metric (IIA;
    tasks with real-valued outputs name theirs, e.g. the squared error of IOI's logit difference).

    Args:
        model: a torch module, a ``cv.HFModel``/``cv.load_model(...)`` adapter, or a model name.
        task: a ``cv.Task`` / ``cv.PromptTask`` whose causal model has ``variable``.
        layers: ints index blocks, strings name modules. positions: ints, "last", task roles, or
            ``None`` for networks without a sequence axis.
        n_train: training pairs per variable (0 for featurizers that learn nothing, e.g. Neurons or a
            fitted PCA); a ``val_fraction`` of them is held out for early stopping of trainable ones.
        n_test: evaluation pairs. data: a dataset, a list of datasets (MIB's counterfactual sets: the
            featurizer is trained on all their training pairs and scored on each one's test pairs; the
            table's ``dataset`` column names the set), or {variable: dataset(s)}. By default the task's
            ``counterfactual_sets`` (random pairs unless the task names others). ``n_train`` and
            ``n_test`` count pairs per set.
        epochs, lr, patience: training of DAS/DBM (AdamW on the featurizer only), stopping after
            ``patience`` epochs without a better validation IIA.
        filter_correct: score only pairs the network gets right on base and source (MIB).
        changes_output: generate only pairs whose interchange changes the high-level output.
        out: a folder; every finished cell is appended to ``out/cells.jsonl`` and a rerun with the
            same settings resumes where it stopped; the final results are saved there.
        max_memory_gb: captured activations kept in memory; the rest goes to memory-mapped files
            (``None``: no bound).
    Returns: ``Results`` (``.table``, ``.heatmap(path)``, ``.save(dir)``).
    """
    adapter = as_adapter(model)
    variables = _as_list(variable)
    feats = _as_list(featurizer)
    cm = task.causal_model
    for v in variables:
        if v not in cm.variables:
            raise ValueError(f"unknown variable '{v}'; the causal model's variables are {list(cm.variables)}")
    names = [f.name for f in feats]
    if len(set(names)) != len(names):
        raise ValueError(f"featurizers must have distinct names, got {names}")
    for f in feats:
        if f.learns_from_interventions and n_train <= 0:
            raise ValueError(f"{f.name} learns from interventions; n_train must be > 0")
        if f.learns_from_activations and not f.fitted and n_train <= 0:
            raise ValueError(f"{f.name} must be fitted on activations; pass n_train > 0 or a fitted featurizer")
    sites = [Site(layer, pos, component) for layer in layers for pos in _as_list(positions)]
    for s in sites:
        adapter.module_path(s)  # unknown layers fail before any work
    meta = {"model": type(adapter.module).__name__, "task": task.name, "variables": variables,
            "featurizers": [{"name": f.name, "class": type(f).__name__, "config": f.config()} for f in feats],
            "layers": [str(x) for x in layers], "positions": [str(p) for p in _as_list(positions)],
            "n_train": n_train, "n_test": n_test, "seed": seed, "epochs": epochs, "lr": lr,
            "filter_correct": filter_correct, "component": component,
            "metric": task.metric, "lower_is_better": task.lower_is_better, "data": {}}
    store = RunStore(out, {k: v for k, v in meta.items() if k != "data"}) if out is not None else None
    done = store.done() if store else {}
    engine = Engine(adapter, task, batch_size=batch_size, max_memory_gb=max_memory_gb)
    results = Results(meta=meta)
    total = len(variables) * len(feats) * len(sites)
    bar = tqdm(total=total, desc="localize", disable=not progress)
    for v in variables:
        given = data.get(v) if isinstance(data, dict) else data
        if given is None:  # the task's counterfactual sets, with headroom for the pairs the filter drops
            n = n_train + n_test
            given = task.counterfactual_sets(v, n + (n // 4 + 8 if filter_correct else 0), seed=seed,
                                             changes_output=changes_output)
        datasets = list(given) if isinstance(given, (list, tuple)) else [given]
        for ds in datasets:
            if ds.variable != v:
                raise ValueError(f"the dataset '{ds.name}' given for variable '{v}' interchanges '{ds.variable}'")
        if len({ds.name for ds in datasets}) != len(datasets):
            raise ValueError(f"the counterfactual sets of variable '{v}' need distinct names, got "
                             f"{[ds.name for ds in datasets]}")
        n_val = int(round(n_train * val_fraction)) if any(f.learns_from_interventions for f in feats) else 0
        parts = []
        for ds in datasets:
            split, kept = build_splits(engine, ds, sites, [n_train - n_val, n_val, n_test], seed=seed,
                                       filter_correct=filter_correct)
            parts.append(split)
            meta["data"][f"{v}/{ds.name}"] = kept.report
        tr, val = Split.concat([p[0] for p in parts], engine.store), Split.concat([p[1] for p in parts], engine.store)
        tests = {ds.name: p[2] for ds, p in zip(datasets, parts)}
        for f in feats:
            for s in sites:
                key = (v, f.name, str(s.layer), str(s.position))
                bar.set_postfix_str(f"{v} {f.name} {s}")
                if all(key + (name,) in done for name in tests):
                    results.rows += [done[key + (name,)] for name in tests]
                    path = Path(out) / featurizer_dir(*key)
                    if (path / "featurizer.json").exists():
                        results.featurizers[key] = Featurizer.load(path)
                    bar.update(1)
                    continue
                torch.manual_seed(seed)
                cell = f if f.fitted else f.clone()
                cell.build(tr.sources[s].shape[-1] if len(tr) else next(iter(tests.values())).sources[s].shape[-1])
                info = {}
                if cell.learns_from_activations and not cell.fitted:
                    fit_activations(cell, tr, s)
                if cell.learns_from_interventions:
                    hist = train(engine, cell, s, tr, val if len(val) else None, epochs=epochs, lr=lr,
                                 seed=seed, patience=patience, progress=progress, desc=f"train {f.name} {v} {s}")
                    info.update(epochs_run=hist["epochs"], final_loss=round(hist["loss"][-1], 5))
                results.featurizers[key] = cell
                rows = []
                for name, te in tests.items():
                    _, scores = evaluate(engine, te, s, cell)
                    rows.append({"variable": v, "featurizer": f.name, "layer": s.layer, "position": s.position,
                                 "dataset": name, **score_row(scores, task.metric), **info, **cell.summary()})
                if store:
                    store.write_cell(rows, cell, key)
                results.rows += rows
                bar.update(1)
    bar.close()
    if out is not None:
        results.save(out)
    return results
