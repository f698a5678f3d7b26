"""The MIB causal-variable track's submission format: export causalvar's fitted featurizers to it, and
evaluate a submission folder with its feature indices honoured.

A submission holds, per unit (layer × token position), three files named by the unit's prefix:
``<unit>_featurizer`` and ``<unit>_inverse_featurizer`` (torch checkpoints ``{"model_info": {...},
"state_dict": {...}}``, where ``model_info`` has ``featurizer_class`` — ``IdentityFeaturizerModule`` or
``SubspaceFeaturizerModule`` with ``additional_config.rotation_matrix: [d, k]`` — and ``n_features``)
and ``<unit>_indices`` (a list of feature indices, or ``null`` for all). Units are named
``ResidualStream(Layer:<layer>,Token:<position>)``. Checkpoints are read with
``torch.load(weights_only=True)``: tensors and plain containers only, no code is unpickled.

Unlike MIB's own harness, a unit the evaluation asks for but the folder lacks is an error, never a
silent full-vector fallback, and the indices are always applied.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from featurizers import Featurizer, FeaturizerError, Neurons, Subspace

from .splits import build_splits, intervene
from .counterfactuals import CounterfactualDataset
from .engine import Engine
from .models import as_adapter
from .results import Results
from .sites import Site


def unit_name(layer, position) -> str:
    """The file prefix of a unit."""
    return f"ResidualStream(Layer:{layer},Token:{position})"


def export_submission(results: Results, folder: str | Path, variable: str, featurizer: str) -> Path:
    """Write the fitted featurizers of one (variable, featurizer) of ``results`` as a MIB submission."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cells = [(k, f) for k, f in results.featurizers.items() if k[0] == variable and k[1] == featurizer]
    if not cells:
        raise ValueError(f"no fitted featurizer '{featurizer}' for variable '{variable}' in the results; "
                         f"there are {sorted({k[:2] for k in results.featurizers})}")
    for (_, _, layer, position), feat in cells:
        R, indices = feat.subspace()
        prefix = str(folder / unit_name(layer, position))
        if R is None:
            info = {"featurizer_class": "IdentityFeaturizerModule",
                    "inverse_featurizer_class": "IdentityInverseFeaturizerModule",
                    "n_features": feat.d, "additional_config": {}}
        else:
            info = {"featurizer_class": "SubspaceFeaturizerModule",
                    "inverse_featurizer_class": "SubspaceInverseFeaturizerModule",
                    "n_features": R.shape[1],
                    "additional_config": {"rotation_matrix": R.contiguous(), "requires_grad": False}}
        state = {} if R is None else {"rotate.weight": R.contiguous()}
        torch.save({"model_info": info, "state_dict": state}, prefix + "_featurizer")
        torch.save({"model_info": info, "state_dict": state}, prefix + "_inverse_featurizer")
        Path(prefix + "_indices").write_text(json.dumps(indices))
    return folder


def _unit_files(folder: str | Path, layer, position) -> dict[str, Path]:
    """The three files of a unit; a clear error naming the unit if any is missing."""
    prefix = Path(folder) / unit_name(layer, position)
    paths = {s: Path(f"{prefix}_{s}") for s in ("featurizer", "inverse_featurizer", "indices")}
    missing = [p.name for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"the submission in {folder} has no unit for layer {layer}, position {position}: "
                                f"missing {missing}")
    return paths


def load_unit(folder: str | Path, layer, position, d: int) -> Featurizer:
    """The featurizer of one unit of a submission (hidden size ``d``), its indices applied."""
    paths = _unit_files(folder, layer, position)
    prefix = paths["featurizer"].parent / unit_name(layer, position)
    raw = paths["indices"].read_text().strip()
    indices = None if raw in ("", "null", "None") else [int(i) for i in json.loads(raw)]
    info = torch.load(paths["featurizer"], map_location="cpu", weights_only=True)["model_info"]
    kind = info.get("featurizer_class")
    if kind == "IdentityFeaturizerModule":
        return Neurons(dims=indices).build(d)
    if kind == "SubspaceFeaturizerModule":
        R = info["additional_config"]["rotation_matrix"]
        if R.shape[0] != d:
            raise FeaturizerError(f"unit {prefix.name}: rotation is {tuple(R.shape)}, the site has size {d}")
        return Subspace.from_matrix(R, indices)
    raise FeaturizerError(f"unit {prefix.name}: featurizer class {kind!r} is not supported "
                          "(IdentityFeaturizerModule, SubspaceFeaturizerModule)")


def evaluate_submission(model, task, folder: str | Path, variable: str, layers: Sequence, positions: Sequence,
                        data: CounterfactualDataset | Sequence[CounterfactualDataset], n_test: int | None = None,
                        seed: int = 0, batch_size: int = 64, filter_correct: bool = True) -> Results:
    """The task's metric (IIA) of a submission's units at every ``layers`` × ``positions`` cell on ``data`` (one or several
    counterfactual sets; every pair, or ``n_test`` per set). A missing unit fails before any forward."""
    adapter = as_adapter(model)
    engine = Engine(adapter, batch_size=batch_size)
    sites = [Site(layer, pos) for layer in layers for pos in positions]
    for s in sites:
        _unit_files(folder, s.layer, s.position)
    units: dict[Site, Featurizer] = {}
    datasets = list(data) if isinstance(data, (list, tuple)) else [data]
    results = Results(meta={"submission": str(folder), "variable": variable, "metric": task.metric.name,
                            "lower_is_better": task.metric.lower_is_better, "data": {}})
    for ds in datasets:
        (test,), kept = build_splits(engine, task, ds, sites, [n_test], seed=seed, filter_correct=filter_correct)
        results.meta["data"][f"{variable}/{ds.name}"] = kept.report
        for s in sites:
            if s not in units:
                units[s] = load_unit(folder, s.layer, s.position, test.sources[s].shape[-1])
            feat = units[s]
            results.rows.append({"variable": variable, "featurizer": "submission", "layer": s.layer,
                                 "position": s.position, "dataset": ds.name,
                                 **task.metric.columns(intervene(engine, test, s, feat))})
    return results
