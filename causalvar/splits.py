"""A counterfactual dataset made ready for a sweep: encoded once, filtered, split, captured.

Everything here is done once per (variable, dataset) and shared by every cell (featurizer × layer ×
position) and every training epoch.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch.nn import functional as F

from featurizers import Featurizer

from .counterfactuals import CounterfactualDataset, NoEffectWarning
from .engine import ActivationStore, Engine, Prepared
from .metrics import Metric, Outcome
from .models import ModelError, as_adapter
from .sites import Site
from .errors import TaskError


class TooFewPairsError(ValueError):
    """Fewer pairs than the splits need survive the filter; ``kept`` of ``drawn`` survived."""

    def __init__(self, message: str, kept: int, drawn: int):
        super().__init__(message)
        self.kept, self.drawn = kept, drawn


@dataclass
class Split:
    """One split (train, validation or test) at the requested sites, for one task.

    task: the task the rows are encoded for (its metric and loss read ``labels``).
    prepared: the base rows ready for interventions.
    sources: each site's source activation ``[n, d]``. bases: each site's base activation ``[n, d]``.
    labels: high-level counterfactual outputs (n); the task's metric scores and trains on them.
    base_labels: the high-level outputs of the bases themselves (n), what a logit difference counts against.
    base_values, source_values: the variable's value under base and source (for supervised fits).
    rows: each row's index in the (filtered) dataset ``build_splits`` returns.
    base_out: the unintervened network's output on each base, from the capture pass: logits ``[n, C]``,
        or greedily decoded token ids ``[n, L]`` for tasks that generate (``-1`` pads shorter answers
        of joined splits). The no-effect ``baseline`` and the NaN checks read it.
    source_out: the same for each source (its logits, or its decoded answer when the filter judged it).
    """

    task: object
    prepared: Prepared
    sources: dict[Site, torch.Tensor]
    bases: dict[Site, torch.Tensor]
    labels: list
    base_labels: list
    base_values: list
    source_values: list
    rows: list[int]
    base_out: torch.Tensor
    source_out: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def concat(parts: Sequence["Split"], store: ActivationStore) -> "Split":
        """One split made of ``parts`` (e.g. the training splits of several counterfactual sets), its
        activations in ``store``; ``rows`` then index the parts' datasets one after the other."""
        offsets = [0]
        for p in parts[:-1]:
            offsets.append(offsets[-1] + max(p.rows, default=-1) + 1)
        cat = lambda name: {s: store.cat([getattr(p, name)[s] for p in parts]) for s in getattr(parts[0], name)}
        join = lambda name: [x for p in parts for x in getattr(p, name)]
        return Split(parts[0].task, Prepared.concat([p.prepared for p in parts]), cat("sources"), cat("bases"),
                     join("labels"), join("base_labels"), join("base_values"), join("source_values"),
                     [r + o for p, o in zip(parts, offsets) for r in p.rows],
                     _cat_outputs([p.base_out for p in parts]), _cat_outputs([p.source_out for p in parts]))


def _cat_outputs(outs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Outputs ``[n_i, C]`` (logits) or ``[n_i, L_i]`` (decoded ids, ``-1``-padded to the longest) joined."""
    width = max(o.shape[-1] for o in outs)
    return torch.cat([o if o.shape[-1] == width else F.pad(o, (0, width - o.shape[-1]), value=-1) for o in outs])


def build_splits(engine: Engine, task, data: CounterfactualDataset, sites: Sequence[Site],
                 n_parts: Sequence[int | None], seed: int = 0, filter_correct: bool = True,
                 batch_sizes: Sequence[int] | None = None) -> tuple[list[Split], CounterfactualDataset]:
    """Encode, capture, filter and split ``data``.

    Args:
        n_parts: sizes of consecutive splits after filtering (e.g. ``[n_train, n_test]``): ints, floats
            (fractions of the kept rows), or ``None`` as the last size for the rest. Rows are shuffled
            with ``seed`` first.
        filter_correct: keep only rows the network answers correctly on the base and the source (MIB).
        batch_sizes: rows per chunk of each split's prepared bases (a training split's chunks are its
            optimiser steps); default: the engine's ``batch_size`` for every split.
    Returns: the splits and the filtered dataset (its ``report`` says what was dropped and why).
    Raises: ``TooFewPairsError`` when fewer pairs survive the filter than the splits need; ``TaskError``
        for output values the network's classes cannot express; ``ModelError`` when the network's own
        outputs, which the filter judges, are NaN.
    """
    cm = task.causal_model
    task.targets(data.labels)  # every counterfactual answer must map to a class/token before any forward
    bases, sources = task.encode(data.bases), task.encode(data.sources)
    for s in sites:  # unknown positions fail here, before any forward
        bases.position(s.position), sources.position(s.position)
    # one pass per side: the sites, and what the filter and the baseline judge (logits, or the greedily
    # decoded answer: on the base as long as the longest base or counterfactual answer)
    n_base = max(task.n_answer_tokens(data.base_labels), task.n_answer_tokens(data.labels)) if task.generates else None
    n_src = task.n_answer_tokens(data.source_labels) if task.generates and filter_correct else None
    if task.generates:  # decoding: the prompt pass is the capture; the splits prepare their rows apart
        (base_out, base_acts), whole = engine.capture(bases, sites, n_base), None
    else:  # one forward per base row: the capture, the filter's logits and every row's prefix state
        base_out, base_acts, whole = engine.capture_prepared(bases, sites)
    src_out, src_acts = engine.capture(sources, sites, n_src)
    _check_classes(task, base_out if base_out.is_floating_point() else src_out, data)
    if filter_correct:
        check_finite(base_out, data.bases, "base")
        check_finite(src_out, data.sources, "source")
        judged = base_out[:, :task.n_answer_tokens(data.base_labels)] if task.generates else base_out
        base_ok = _correct(task, judged, data.base_labels)
        if not base_ok.any():
            raise ValueError(_none_correct(task, judged, data))
        keep = base_ok & _correct(task, src_out, data.source_labels)
        data = data.filter(keep.tolist(), "network answers base and source correctly")
    else:
        keep = torch.ones(len(base_out), dtype=torch.bool)
    kept = keep.nonzero().flatten()
    order = kept[torch.randperm(len(kept), generator=torch.Generator().manual_seed(seed))]
    sizes = [int(round(p * len(order))) if isinstance(p, float) else p for p in n_parts]
    if sizes and sizes[-1] is None:
        sizes[-1] = len(order) - sum(sizes[:-1])
    if sum(sizes) > len(order) or min(sizes) < 0:
        raise TooFewPairsError(f"asked for splits of {list(n_parts)} pairs but only {len(order)} pairs of "
                               f"variable '{data.variable}' are left after filtering; see the report:\n"
                               + "\n".join(data.report), len(order), len(keep))
    if sum(sizes) < len(order):
        data = replace(data, report=data.report + [
            f"used {sum(sizes)} of the {len(order)} kept pairs as splits {sizes}; the rest is spare"])
    kept_pos = {int(i): j for j, i in enumerate(kept)}
    chunk_rows = list(batch_sizes) if batch_sizes is not None else [engine.batch_size] * len(sizes)
    splits, start = [], 0
    for size, rows_per_chunk in zip(sizes, chunk_rows):
        idx = order[start:start + size]
        start += size
        rows = [kept_pos[int(i)] for i in idx]  # positions in the filtered dataset
        labels = [data.labels[r] for r in rows]
        splits.append(Split(
            task=task,
            prepared=(engine.take(whole, idx, rows_per_chunk) if whole is not None
                      else engine.prepare(bases.select(idx), sites, batch_size=rows_per_chunk)),
            sources={s: engine.store.take(a, idx) for s, a in src_acts.items()},
            bases={s: engine.store.take(a, idx) for s, a in base_acts.items()},
            labels=labels,
            base_labels=[data.base_labels[r] for r in rows],
            base_values=[cm.run(data.bases[r])[data.variable] for r in rows],
            source_values=[cm.run(data.sources[r])[data.variable] for r in rows],
            rows=rows,
            base_out=base_out[idx],
            source_out=src_out[idx],
        ))
    return splits, data


def drawn_splits(engine: Engine, task, variable: str, sites: Sequence[Site], n_parts: Sequence[int], seed: int = 0,
                 filter_correct: bool = True, changes_output: bool = False, batch_sizes: Sequence[int] | None = None,
                 max_factor: int = 10) -> list[tuple[list[Split], CounterfactualDataset]]:
    """The task's counterfactual sets of ``variable``, each drawn until ``sum(n_parts)`` pairs survive the
    filter, then built into splits (``build_splits``), in the task's order of sets.

    The first round asks ``task.counterfactual_sets`` for the request plus a quarter and 8 more (none
    without the filter); a set that falls short is drawn again, larger, with the same ``seed`` (so the
    draw is deterministic), sized by the share that survived, up to ``max_factor`` times the request;
    past that the ``TooFewPairsError`` of the last round is raised, saying how far drawing went.
    """
    n = sum(n_parts)
    ask, bound = n + (n // 4 + 8 if filter_correct else 0), max_factor * n
    built: dict[str, tuple] = {}
    notes: dict[str, list[str]] = {}
    while True:
        sets = task.counterfactual_sets(variable, ask, seed=seed, changes_output=changes_output)
        short = {}
        for ds in sets:
            if ds.name in built:
                continue
            try:
                splits, kept = build_splits(engine, task, ds, sites, n_parts, seed=seed, filter_correct=filter_correct,
                                            batch_sizes=batch_sizes)
                built[ds.name] = (splits, replace(kept, report=kept.report + notes.get(ds.name, [])))
            except TooFewPairsError as e:
                short[ds.name] = e
        if not short:
            return [built[ds.name] for ds in sets]
        if ask >= bound:
            name, e = next(iter(short.items()))
            rounds = "\n".join([str(e), *notes.get(name, [])])
            raise TooFewPairsError(f"{rounds}\nset '{name}' was drawn in rounds up to {max_factor}x the {n} pairs "
                                   f"requested ({e.drawn} candidates) and still too few survive the filter; "
                                   "cv.task_accuracy(model, task) says how often the network is right",
                                   e.kept, e.drawn)
        fewest = min(e.kept for e in short.values())  # the candidates needed scale with 1 / survival
        nxt = bound if fewest == 0 else min(bound, max(ask + 1, math.ceil(1.1 * ask * n / fewest) + 8))
        for name, e in short.items():
            notes.setdefault(name, []).append(
                f"round {len(notes.get(name, [])) + 1}: {e.kept} of {e.drawn} candidates survived the filter, "
                f"{n} are needed; round {len(notes.get(name, [])) + 2} draws n={nxt} (seed {seed})")
        ask = nxt


def _correct(task, out: torch.Tensor, values: list) -> torch.Tensor:
    """Bool ``[n]``: does the network, unintervened, give each expected value by the task's checker?
    ``out``: the logits ``[n, C]`` of a plain forward, or greedily decoded ids ``[n, L]`` for tasks that
    generate (``Engine.capture(..., n_tokens)``)."""
    return task.correct_tokens(out, values) if task.generates else task.correct(out, values)


def _shown(values) -> str:
    """Distinct values for a message: the first eight by their repr, and their types."""
    distinct = sorted({repr(v): v for v in values}.items())
    types = sorted({type(v).__name__ for _, v in distinct})
    more = f" and {len(distinct) - 8} more" if len(distinct) > 8 else ""
    return f"[{', '.join(r for r, _ in distinct[:8])}{more}] ({', '.join(types)})"


def _none_correct(task, out: torch.Tensor, data: CounterfactualDataset) -> str:
    """Why the filter leaves nothing when the network answers no base: what its outputs decode to
    against the values the causal model's output takes."""
    msg = (f"no pair is left for variable '{data.variable}': the network answers none of the {len(data)} bases "
           "correctly, so no pair survives the filter (filter_correct=True)")
    if out.is_floating_point():
        msg += (f". Its decoded outputs (task.predict of the logits) took the values {_shown(task.predict(out))}, "
                f"while the causal model's output '{task.causal_model.output}' takes {_shown(data.base_labels)}")
    return msg + ("; check how the task maps the network's outputs to output values (decode and target, or a "
                  "prompt task's prompts and answers), and cv.task_accuracy(model, task)")


def _check_classes(task, logits: torch.Tensor, data: CounterfactualDataset) -> None:
    """Refuse output values whose class index (``task.targets``) is outside the network's logits ``[n, C]``."""
    if not logits.is_floating_point():
        return  # token ids of generated answers: targets are token ids, checked by the tokenizer
    n_classes = logits.shape[-1]
    for values in (data.labels, data.base_labels, data.source_labels):
        targets = task.targets(values)
        bad = ((targets < 0) | (targets >= n_classes)).nonzero().flatten()
        if len(bad):
            i = int(bad[0])
            raise TaskError(f"output value {values[i]!r} of '{task.causal_model.output}' maps to class "
                            f"{int(targets[i])} (the task's target), but the network gives {n_classes} logits "
                            f"(classes 0..{n_classes - 1}); make target map every output value to one of them")


def check_finite(out: torch.Tensor, settings: Sequence | None, side: str) -> None:
    """Refuse NaN or infinite logits ``out: [n, C]`` of the unintervened network (token ids pass), naming
    how many rows and the first example (``settings[i]``, or the row index without settings)."""
    if not out.is_floating_point():
        return
    bad = (~torch.isfinite(out)).flatten(1).any(-1).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        first = f"example {i}" + (f" {dict(settings[i])}" if settings is not None else "")
        raise ModelError(f"the network outputs NaN or infinite logits on {len(bad)} of its {len(out)} {side} "
                         f"inputs without any intervention (first: {first}); the network produced them, not "
                         "causalvar: check its weights and the task's encode")


def network_nonfinite(split: Split, site: Site, rows=slice(None)) -> str | None:
    """Where the network itself, unintervened, gives non-finite numbers on ``rows`` of ``split``: its
    logits on the bases, or its activations at ``site`` on the sources; ``None`` when both are finite."""
    out = split.base_out[rows]
    if out.is_floating_point() and not torch.isfinite(out).all():
        bad = (~torch.isfinite(out)).flatten(1).any(-1)
        return (f"the network itself outputs NaN or infinite logits on {int(bad.sum())} of these {len(out)} bases "
                f"without any intervention (first: example {split.rows[rows][int(bad.nonzero()[0])]})")
    acts = split.sources[site][rows]
    if not torch.isfinite(acts).all():
        bad = (~torch.isfinite(acts)).any(-1)
        return (f"the network's own activations at {site} are NaN or infinite on {int(bad.sum())} of these "
                f"{len(acts)} sources (first: example {split.rows[rows][int(bad.nonzero()[0])]})")
    return None


def outcome(split: Split, logits: torch.Tensor | None = None, tokens: torch.Tensor | None = None,
            rows: slice = slice(None)) -> Outcome:
    """What a metric reads for the split's ``rows``: the intervened ``logits: [n, C]`` (or decoded
    ``tokens: [n, L]``), the counterfactual labels, the bases' own outputs as the contrast, and the
    unintervened base and source logits of the capture pass."""
    keep = lambda out: out[rows] if out.is_floating_point() else None  # decoded ids are no logits
    return Outcome(split.task, logits, split.labels[rows], split.base_labels[rows], keep(split.base_out),
                   keep(split.source_out), tokens)


def baseline(split: Split, metric: Metric | None = None) -> float:
    """The no-effect baseline of a cell: its metric (default: the task's) when nothing is interchanged,
    i.e. the network's own outputs on the split's bases (``base_out``, from the capture pass) scored
    against the counterfactual labels. For IIA: the share of pairs whose counterfactual label is what the
    network says on the base."""
    metric = metric or split.task.metric
    if split.task.generates:
        out = outcome(split, tokens=split.base_out[:, :split.task.n_answer_tokens(split.labels)])
    else:
        out = outcome(split, logits=split.base_out)
    return metric.value(metric.score(out), out)


def warn_no_effect(variable: str, datasets: Sequence[CounterfactualDataset], output: str) -> None:
    """Warn (``NoEffectWarning``) when in every pair of ``datasets`` the counterfactual label equals the
    base's output: no interchange of ``variable`` changes the high-level output, so a score says nothing
    about where the variable lives."""
    n = sum(len(ds) for ds in datasets)
    if n and all(lab == base for ds in datasets for lab, base in zip(ds.labels, ds.base_labels)):
        sets = ", ".join(f"'{ds.name}'" for ds in datasets)
        warnings.warn(NoEffectWarning(
            f"no interchange of variable '{variable}' changes the high-level output '{output}': in all {n} pairs "
            f"(sets {sets}) the counterfactual label equals the base's output, so the score only says how often "
            f"the intervention leaves the network's output alone and cannot tell whether or where '{variable}' "
            "lives; check the causal model (does the output depend on it?) or draw with changes_output=True"),
            stacklevel=3)


def fit_activations(featurizer: Featurizer, split: Split, site: Site) -> None:
    """Fit an activation-learned featurizer on the split's base and source activations at ``site``."""
    h = torch.cat([split.bases[site], split.sources[site]])
    featurizer.fit_activations(h, split.base_values + split.source_values)


def evaluate(engine: Engine, split: Split, site: Site, featurizer: Featurizer,
             metric: Metric | None = None) -> tuple[float, torch.Tensor]:
    """``metric`` (default: the task's, e.g. IIA) of ``featurizer`` at ``site`` on ``split``, and its
    per-row scores ``[n]`` (for IIA: correctness by the task's checker — the argmax token, or greedy
    generation of the whole answer). See ``intervene`` for the run itself."""
    metric = metric or split.task.metric
    out = intervene(engine, split, site, featurizer)
    scores = metric.score(out)
    return metric.value(scores, out), scores


def intervene(engine: Engine, split: Split, site: Site, featurizer: Featurizer) -> Outcome:
    """The split's bases run with each source interchanged at ``site`` through ``featurizer``, as the
    ``Outcome`` every metric reads. NaN or infinite logits are refused (``ModelError``), saying whether
    the network or the intervention produced them."""
    task = split.task
    if task.generates:
        tokens = engine.generate(split.prepared, task.n_answer_tokens(split.labels), site, featurizer,
                                 split.sources[site])
        return outcome(split, tokens=tokens)
    else:
        logits = engine.run(split.prepared, site, featurizer, split.sources[site])
        bad = (~torch.isfinite(logits)).flatten(1).any(-1)
        if bad.any():
            cause = network_nonfinite(split, site) or (
                f"the network's outputs without intervention and its source activations at {site} are finite, "
                f"so {featurizer.name}'s interchange wrote non-finite activations")
            raise ModelError(f"under the interchange at {site} through {featurizer.name} the network outputs NaN "
                             f"or infinite logits on {int(bad.sum())} of {len(logits)} pairs (first: example "
                             f"{split.rows[int(bad.nonzero()[0])]}): {cause}")
        return outcome(split, logits=logits)


def task_accuracy(model, task, n: int = 256, seed: int = 0, batch_size: int = 64) -> float:
    """The network's accuracy on ``n`` inputs sampled from the task's causal model (``seed``), without any
    intervention, by the task's checker: the argmax class/token, or greedy decoding of the whole answer.
    ``model``: a torch module, an adapter or a model name. ``batch_size``: rows per forward."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (the number of sampled inputs), got {n!r}")
    cm = task.causal_model
    settings = cm.sample(n, seed=seed)
    labels = [cm.run(s)[cm.output] for s in settings]
    n_tokens = task.n_answer_tokens(labels) if task.generates else None
    out, _ = Engine(as_adapter(model), batch_size=batch_size).capture(task.encode(settings), [], n_tokens)
    check_finite(out, settings, "sampled")
    return float(_correct(task, out, labels).float().mean())
