"""Fitting trainable featurizers (DAS, DBM, Boundless DAS) with the interchange objective.

The network is frozen; AdamW updates the featurizer's parameters only, to make the network's output
under the intervention match the high-level counterfactual answer (the task's ``loss``:
cross-entropy on the answer token, or e.g. the squared error of a logit difference). Steps run through
the engine's suffix execution, so each costs only the blocks after the site.
"""
from __future__ import annotations

import copy

import torch
from tqdm.auto import tqdm

from featurizers import Featurizer

from .cells import Split, build_splits, evaluate, fit_activations
from .counterfactuals import CounterfactualDataset
from .engine import Engine
from .models import as_adapter
from .sites import Site


class TrainingError(RuntimeError):
    """Training could not go on (e.g. the loss became NaN)."""


def train(engine: Engine, featurizer: Featurizer, site: Site, data: Split, val: Split | None = None,
          epochs: int = 3, lr: float = 1e-2, seed: int = 0, patience: int = 2,
          progress: bool = True, desc: str = "") -> dict:
    """Train ``featurizer`` (already built/fitted) at ``site`` on the split ``data``.

    Each epoch visits the split's chunks in a seeded random order. With ``val``, the task's metric
    (IIA, or e.g. a squared error where lower is better) is measured after every epoch, the best state
    is kept and training stops after ``patience`` epochs without improvement. Returns the history:
    loss per epoch, validation score per epoch (``val_score``), epochs run.
    """
    params = [p for p in featurizer.parameters() if p.requires_grad]
    if not params:
        raise TrainingError(f"{featurizer.name} has no trainable parameters")
    featurizer.to(engine.adapter.device)
    opt = torch.optim.AdamW(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n_chunks = len(data.prepared.batches)
    total = max(1, epochs * n_chunks)
    history = {"loss": [], "val_score": [], "epochs": 0}
    sign = -1.0 if engine.task.lower_is_better else 1.0  # compare sign * score: larger is better
    best, best_state, stale, step = None, None, 0, 0
    bar = tqdm(total=total, desc=desc or f"train {featurizer.name} {site}", disable=not progress, leave=False)
    for epoch in range(epochs):
        featurizer.train()
        losses = []
        for k in torch.randperm(n_chunks, generator=gen).tolist():
            featurizer.set_progress(step / total)
            chunk = data.prepared.slices[k]
            logits = engine.run_chunk(data.prepared, k, site, featurizer, data.sources[site][chunk])
            loss = engine.task.loss(logits, data.labels[chunk]) + featurizer.regularizer()
            if not torch.isfinite(loss):
                raise TrainingError(f"the loss became {loss.item()} at epoch {epoch}, step {step} while training "
                                    f"{featurizer.name} at {site}; lower the learning rate (lr={lr})")
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", **({"val": f"{best:.3f}"} if best is not None else {}))
        featurizer.set_progress(min(1.0, step / total))
        history["loss"].append(sum(losses) / len(losses))
        history["epochs"] = epoch + 1
        if val is not None:
            score, _ = evaluate(engine, val, site, featurizer)
            history["val_score"].append(score)
            if best is None or sign * score > sign * best:
                best, best_state, stale = score, copy.deepcopy(featurizer.state_dict()), 0
            else:
                stale += 1
                if stale >= patience:
                    break
    bar.close()
    if best_state is not None:
        featurizer.load_state_dict(best_state)
    featurizer.eval()
    return history


def fit(featurizer: Featurizer, model, task, variable: str, site: Site,
        data: CounterfactualDataset, epochs: int = 3, lr: float = 1e-2, batch_size: int = 64,
        val_fraction: float = 0.2, seed: int = 0, filter_correct: bool = True, progress: bool = True) -> Featurizer:
    """Fit ``featurizer`` at one ``site`` for ``variable`` on the counterfactual dataset ``data``:
    on activations where it needs them, then with the interchange objective where it is trainable
    (a ``val_fraction`` of the pairs held out for early stopping). Returns the fitted featurizer.

    ``DAS(dim=8).fit(model, task, "left", cv.Site(1), data)`` is the short form of this call.
    """
    if data.variable != variable:
        raise ValueError(f"the dataset interchanges '{data.variable}', not '{variable}'")
    if not isinstance(site, Site):
        site = Site(site)
    engine = Engine(as_adapter(model), task, batch_size=batch_size)
    trainable = featurizer.learns_from_interventions
    parts = [1.0 - val_fraction, None] if trainable and val_fraction > 0 else [None]
    splits, _ = build_splits(engine, data, [site], parts, seed=seed, filter_correct=filter_correct)
    train_split, val_split = splits[0], (splits[1] if len(splits) > 1 and len(splits[1]) else None)
    featurizer.build(train_split.sources[site].shape[-1])
    if featurizer.learns_from_activations:
        fit_activations(featurizer, train_split, site)
    if trainable:
        train(engine, featurizer, site, train_split, val_split, epochs=epochs, lr=lr, seed=seed, progress=progress)
    return featurizer
