"""Fitting trainable featurizers (DAS, DBM, Boundless DAS) with the interchange objective.

The network is frozen; AdamW updates the featurizer's parameters only, to make the network's output
under the intervention match the high-level counterfactual answer (the task's ``loss``:
cross-entropy on the answer token, or e.g. the squared error of a logit difference). Steps run through
the engine's suffix execution, so each costs only the blocks after the site.
"""
from __future__ import annotations

import copy
import math
import numbers

import torch
from tqdm.auto import tqdm

from featurizers import Featurizer

from .splits import Split, build_splits, evaluate, fit_activations, network_nonfinite, outcome, warn_no_effect
from .counterfactuals import CounterfactualDataset
from .engine import Engine
from .models import as_adapter
from .sites import Site


#: the default upper bound on epochs and the early-stopping patience: training runs to convergence (the
#: validation metric no longer improving for PATIENCE epochs, the learning rate halved after every epoch
#: without improvement), the bound only catching what does not converge. Chosen on the equality MLP (DAS
#: k=8, 2000 pairs, blocks 0 and 1, seeds 0-2): patience 3 without the schedule ended up to 0.044 below a
#: 50-epoch run, patience 5 up to 0.022, patience 5 with the halving within 0.008 (after 8-19 epochs);
#: ``benchmarks/results/training.json`` (``bench_training.py``) has these defaults beside the old fixed 3
#: epochs and a long run, there and on an IOI cell of SmolLM2.
EPOCHS, PATIENCE = 50, 5


class ConvergenceWarning(UserWarning):
    """Training stopped at its upper bound on epochs while the validation score was still improving."""


class TrainingError(RuntimeError):
    """Training could not go on (e.g. the loss became NaN)."""


def check_count(name: str, value, minimum: int, what: str) -> None:
    """Refuse ``value`` unless it is an int >= ``minimum`` (``what`` says what it counts)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum} ({what}), got {value!r}")


def check_training(epochs, lr, val_fraction, patience=2, train_batch_size=64) -> None:
    """Refuse training settings that cannot work, before any data is drawn or any forward runs."""
    check_count("epochs", epochs, 1, "passes over the training pairs")
    check_count("patience", patience, 1, "epochs without a better validation score before stopping")
    check_count("train_batch_size", train_batch_size, 1, "training pairs per optimiser step")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number (AdamW's learning rate, e.g. 1e-2), got {lr!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be a number in [0, 1) (the share of training pairs held out for "
                         f"early stopping), got {val_fraction!r}")


def train(engine: Engine, featurizer: Featurizer, site: Site, data: Split, val: Split | None = None,
          epochs: int = EPOCHS, lr: float = 1e-2, seed: int = 0, patience: int = PATIENCE,
          progress: bool = True, desc: str = "") -> dict:
    """Train ``featurizer`` (already built/fitted) at ``site`` on the split ``data``, to convergence.

    Each epoch visits the split's prepared chunks in a seeded random order, one AdamW step per chunk
    (``build_splits(..., task, batch_sizes=[train_batch_size, ...])`` sizes them). With ``val``, the task's metric
    (IIA, or e.g. a squared error where lower is better; it is also the loss) is measured after every epoch, the best state
    is kept, the learning rate halves after every epoch without improvement and training stops after
    ``patience`` such epochs; ``epochs`` is the upper bound.
    A featurizer with an annealed schedule (``anneal_epochs``: DBM, Boundless DAS) anneals over that many
    epochs (at most ``epochs``) and stops early only after it. Returns the history: loss per epoch,
    validation score per epoch (``val_score``), epochs run, and ``converged``: whether the validation
    metric stopped improving before the bound (``None`` without ``val``).
    """
    params = [p for p in featurizer.parameters() if p.requires_grad]
    if not params:
        raise TrainingError(f"{featurizer.name} has no trainable parameters")
    featurizer.to(engine.adapter.site_device(site))
    opt = torch.optim.AdamW(params, lr=lr)
    # the learning rate halves after each epoch without a better validation score (none without ``val``)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=0)
    gen = torch.Generator().manual_seed(seed)
    n_chunks = len(data.prepared.batches)
    total = max(1, epochs * n_chunks)
    anneal = min(featurizer.anneal_epochs or 0, epochs)  # epochs of the schedule; no early stop before
    schedule = max(1, (anneal or epochs) * n_chunks)
    history = {"loss": [], "val_score": [], "epochs": 0, "converged": None}
    metric = data.task.metric
    sign = -1.0 if metric.lower_is_better else 1.0  # compare sign * score: larger is better
    best, best_state, stale, step = None, None, 0, 0
    bar = tqdm(total=total, desc=desc or f"train {featurizer.name} {site}", disable=not progress, leave=False)
    for epoch in range(epochs):
        featurizer.train()
        losses = []
        for k in torch.randperm(n_chunks, generator=gen).tolist():
            featurizer.set_progress(min(1.0, step / schedule))
            chunk = data.prepared.slices[k]
            logits = engine.run_chunk(data.prepared, k, site, featurizer, data.sources[site][chunk])
            loss = metric.loss(outcome(data, logits, rows=chunk)) + featurizer.regularizer()
            if not torch.isfinite(loss):
                where = (f"the loss became {loss.item()} at epoch {epoch}, step {step} while training "
                         f"{featurizer.name} at {site}")
                cause = network_nonfinite(data, site, chunk)
                if cause:
                    raise TrainingError(f"{where}: {cause}; the network produced them, not the training (the "
                                        "learning rate is not the cause): check its weights and the task's encode")
                raise TrainingError(f"{where}, while the network's own outputs on these pairs are finite: training "
                                    f"diverged; lower the learning rate (lr={lr})")
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", **({"val": f"{best:.3f}"} if best is not None else {}))
        featurizer.set_progress(min(1.0, step / schedule))
        history["loss"].append(sum(losses) / len(losses))
        history["epochs"] = epoch + 1
        if val is not None:
            score, _ = evaluate(engine, val, site, featurizer)
            history["val_score"].append(score)
            plateau.step(sign * score)
            if best is None or sign * score > sign * best:
                best, best_state, stale = score, copy.deepcopy(featurizer.state_dict()), 0
            elif epoch + 1 > anneal:  # past the schedule: count epochs without improvement
                stale += 1
            history["converged"] = stale >= patience
            if history["converged"]:
                break
    bar.close()
    if best_state is not None:
        featurizer.load_state_dict(best_state)
    featurizer.eval()
    return history


def fit(featurizer: Featurizer, model, task, variable: str, site: Site,
        data: CounterfactualDataset, epochs: int = EPOCHS, lr: float = 1e-2, batch_size: int = 64,
        val_fraction: float = 0.2, seed: int = 0, filter_correct: bool = True, progress: bool = True,
        train_batch_size: int = 64) -> Featurizer:
    """Fit ``featurizer`` at one ``site`` for ``variable`` on the counterfactual dataset ``data``:
    on activations where it needs them, then with the interchange objective where it is trainable
    (a ``val_fraction`` of the pairs held out for early stopping). Returns the fitted featurizer.

    ``batch_size``: rows per forward when capturing activations and evaluating (no number depends on
    it). ``train_batch_size``: training pairs per AdamW step of DAS/DBM (the results depend on it).
    E.g. ``cv.fit(DAS(dim=8), model, task, "left", cv.Site(1), data)``.
    """
    if data.variable != variable:
        raise ValueError(f"the dataset interchanges '{data.variable}', not '{variable}'")
    check_training(epochs, lr, val_fraction, train_batch_size=train_batch_size)
    if not isinstance(site, Site):
        site = Site(site)
    engine = Engine(as_adapter(model), batch_size=batch_size)
    trainable = featurizer.learns_from_interventions
    parts = [1.0 - val_fraction, None] if trainable and val_fraction > 0 else [None]
    splits, kept = build_splits(engine, task, data, [site], parts, seed=seed, filter_correct=filter_correct,
                                batch_sizes=[train_batch_size] + [batch_size] * (len(parts) - 1))
    warn_no_effect(variable, [kept], task.causal_model.output)
    train_split, val_split = splits[0], (splits[1] if len(splits) > 1 and len(splits[1]) else None)
    featurizer.build(train_split.sources[site].shape[-1])
    if featurizer.learns_from_activations:
        fit_activations(featurizer, train_split, site)
    if trainable:
        train(engine, featurizer, site, train_split, val_split, epochs=epochs, lr=lr, seed=seed, progress=progress)
    return featurizer
