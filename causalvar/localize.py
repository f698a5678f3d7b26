"""The sweep: every (variable × featurizer × layer × position) cell, fitted and scored."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from featurizers import Featurizer

from .cells import build_splits, evaluate, fit_activations
from .counterfactuals import CounterfactualDataset
from .engine import Engine
from .metrics import clopper_pearson
from .models import as_adapter
from .results import Results, cell_key, featurizer_dir
from .sites import Site
from .train import train


def _as_list(x) -> list:
    if x is None:
        return [None]
    return list(x) if isinstance(x, (list, tuple, range)) else [x]


def localize(model, task, variable: str | Sequence[str], featurizer: Featurizer | Sequence[Featurizer],
             layers: Sequence[int | str], positions=None, n_train: int = 1000, n_test: int = 200,
             seed: int = 0, data: CounterfactualDataset | dict | None = None, batch_size: int = 64,
             epochs: int = 3, lr: float = 1e-2, val_fraction: float = 0.2, filter_correct: bool = True,
             changes_output: bool = False, component: str = "output", out: str | Path | None = None,
             progress: bool = True) -> Results:
    """Localize ``variable`` (one or several) with ``featurizer`` (one or several) at every
    ``layers`` × ``positions`` cell, and score each by IIA on held-out pairs.

    Args:
        model: a torch module, a ``cv.HFModel``/``cv.load_model(...)`` adapter, or a model name.
        task: a ``cv.Task`` / ``cv.PromptTask`` whose causal model has ``variable``.
        layers: ints index blocks, strings name modules. positions: ints, "last", task roles, or
            ``None`` for networks without a sequence axis.
        n_train: training pairs per variable (0 for featurizers that learn nothing, e.g. Neurons or a
            fitted PCA); a ``val_fraction`` of them is held out for early stopping of trainable ones.
        n_test: evaluation pairs. data: a dataset (or {variable: dataset}) instead of random pairs.
        epochs, lr: training of DAS/DBM (AdamW on the featurizer only).
        filter_correct: score only pairs the network gets right on base and source (MIB).
        changes_output: generate only pairs whose interchange changes the high-level output.
        out: a folder; every finished cell is appended to ``out/cells.jsonl`` and a rerun with the
            same settings resumes where it stopped; the final results are saved there.
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
            "filter_correct": filter_correct, "component": component, "data": {}}
    done = _resume(out, meta)
    engine = Engine(adapter, task, batch_size=batch_size)
    results = Results(meta=meta)
    total = len(variables) * len(feats) * len(sites)
    bar = tqdm(total=total, desc="localize", disable=not progress)
    for v in variables:
        ds = data.get(v) if isinstance(data, dict) else data
        if ds is None:  # headroom for the pairs the filter drops; the spare ones stay unused
            n = n_train + n_test
            ds = CounterfactualDataset.generate(cm, v, n + (n // 4 + 8 if filter_correct else 0), seed=seed,
                                                changes_output=changes_output)
        elif ds.variable != v:
            raise ValueError(f"the dataset given for variable '{v}' interchanges '{ds.variable}'")
        n_val = int(round(n_train * val_fraction)) if any(f.learns_from_interventions for f in feats) else 0
        (tr, val, te), kept = build_splits(engine, ds, sites, [n_train - n_val, n_val, n_test], seed=seed,
                                           filter_correct=filter_correct)
        meta["data"][v] = kept.report
        for f in feats:
            for s in sites:
                key = cell_key({"variable": v, "featurizer": f.name, "layer": s.layer, "position": s.position})
                bar.set_postfix_str(f"{v} {f.name} {s}")
                if key in done:
                    row = done[key]
                    path = Path(out) / featurizer_dir(*key)
                    if (path / "featurizer.json").exists():
                        results.featurizers[key] = Featurizer.load(path)
                else:
                    torch.manual_seed(seed)
                    cell = f if f.fitted else f.clone()
                    cell.build(te.sources[s].shape[-1])
                    row = {}
                    if cell.learns_from_activations and not cell.fitted:
                        fit_activations(cell, tr, s)
                    if cell.learns_from_interventions:
                        hist = train(engine, cell, s, tr, val if len(val) else None, epochs=epochs, lr=lr,
                                     seed=seed, progress=progress, desc=f"train {f.name} {v} {s}")
                        row.update(epochs_run=hist["epochs"], final_loss=round(hist["loss"][-1], 5))
                    score, correct = evaluate(engine, te, s, cell)
                    k, n = int(correct.sum()), len(correct)
                    lo, hi = clopper_pearson(k, n)
                    row = {"variable": v, "featurizer": f.name, "layer": s.layer, "position": s.position,
                           "iia": score, "n": n, "ci_low": lo, "ci_high": hi, **row, **cell.summary()}
                    results.featurizers[key] = cell
                    _checkpoint(out, row, cell, key)
                results.rows.append(row)
                bar.update(1)
    bar.close()
    if out is not None:
        results.save(out)
    return results


def _resume(out, meta: dict) -> dict:
    """Rows of cells already finished in ``out`` by a run with the same settings."""
    if out is None:
        return {}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in meta.items() if k != "data"}
    meta_file = out / "settings.json"
    if meta_file.exists():
        previous = json.loads(meta_file.read_text())
        if previous != json.loads(json.dumps(settings, default=str)):
            raise ValueError(f"{out} holds a sweep with other settings; use another folder or delete it.\n"
                             f"there: {previous}\nnow: {settings}")
    else:
        meta_file.write_text(json.dumps(settings, indent=1, default=str))
    done = {}
    cells = out / "cells.jsonl"
    if cells.exists():
        for line in cells.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[cell_key(row)] = row
    return done


def _checkpoint(out, row: dict, featurizer: Featurizer, key: tuple) -> None:
    if out is None:
        return
    if featurizer.d is not None and (featurizer.fitted or any(True for _ in featurizer.parameters())):
        featurizer.save(Path(out) / featurizer_dir(*key))
    with open(Path(out) / "cells.jsonl", "a") as fh:
        fh.write(json.dumps(row, default=str) + "\n")
