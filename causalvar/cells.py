"""A counterfactual dataset made ready for a sweep: encoded once, filtered, split, captured.

Everything here is done once per (variable, dataset) and shared by every cell (featurizer × layer ×
position) and every training epoch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from featurizers import Featurizer

from .counterfactuals import CounterfactualDataset
from .engine import ActivationStore, Engine, Prepared
from .metrics import mean_score
from .sites import Site


@dataclass
class Split:
    """One split (train, validation or test) at the requested sites.

    prepared: the base rows ready for interventions.
    sources: each site's source activation ``[n, d]``. bases: each site's base activation ``[n, d]``.
    labels: high-level counterfactual outputs (n); ``task.loss`` and ``task.score`` read them.
    base_values, source_values: the variable's value under base and source (for supervised fits).
    rows: each row's index in the (filtered) dataset ``build_splits`` returns.
    """

    prepared: Prepared
    sources: dict[Site, torch.Tensor]
    bases: dict[Site, torch.Tensor]
    labels: list
    base_values: list
    source_values: list
    rows: list[int]

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
        return Split(Prepared.concat([p.prepared for p in parts]), cat("sources"), cat("bases"), join("labels"),
                     join("base_values"), join("source_values"),
                     [r + o for p, o in zip(parts, offsets) for r in p.rows])


def build_splits(engine: Engine, data: CounterfactualDataset, sites: Sequence[Site],
                 n_parts: Sequence[int | None], seed: int = 0, filter_correct: bool = True,
                 ) -> tuple[list[Split], CounterfactualDataset]:
    """Encode, capture, filter and split ``data``.

    Args:
        n_parts: sizes of consecutive splits after filtering (e.g. ``[n_train, n_test]``): ints, floats
            (fractions of the kept rows), or ``None`` as the last size for the rest. Rows are shuffled
            with ``seed`` first.
        filter_correct: keep only rows the network answers correctly on the base and the source (MIB).
    Returns: the splits and the filtered dataset (its ``report`` says what was dropped and why).
    """
    task = engine.task
    cm = task.causal_model
    task.targets(data.labels)  # every counterfactual answer must map to a class/token before any forward
    bases, sources = task.encode(data.bases), task.encode(data.sources)
    for s in sites:  # unknown positions fail here, before any forward
        engine.positions(bases, s), engine.positions(sources, s)
    # one pass per side: the sites, and what the filter judges (logits, or the greedily decoded answer)
    decode = task.generates and filter_correct
    base_out, base_acts = engine.capture(bases, sites, task.n_answer_tokens(data.base_labels) if decode else None)
    src_out, src_acts = engine.capture(sources, sites, task.n_answer_tokens(data.source_labels) if decode else None)
    if filter_correct:
        keep = _correct(task, base_out, data.base_labels) & _correct(task, src_out, data.source_labels)
        data = data.filter(keep.tolist(), "network answers base and source correctly")
        if len(data) == 0:
            raise ValueError(f"no pair is left for variable '{data.variable}': the network answers no "
                             "pair correctly on both base and source; check the task's prompts and answers")
    else:
        keep = torch.ones(len(base_out), dtype=torch.bool)
    kept = keep.nonzero().flatten()
    order = kept[torch.randperm(len(kept), generator=torch.Generator().manual_seed(seed))]
    sizes = [int(round(p * len(order))) if isinstance(p, float) else p for p in n_parts]
    if sizes and sizes[-1] is None:
        sizes[-1] = len(order) - sum(sizes[:-1])
    if sum(sizes) > len(order) or min(sizes) < 0:
        raise ValueError(f"asked for splits of {list(n_parts)} pairs but only {len(order)} pairs of "
                         f"variable '{data.variable}' are left after filtering; see the report:\n"
                         + "\n".join(data.report))
    if sum(sizes) < len(order):
        data = replace(data, report=data.report + [
            f"used {sum(sizes)} of the {len(order)} kept pairs as splits {sizes}; the rest is spare"])
    kept_pos = {int(i): j for j, i in enumerate(kept)}
    splits, start = [], 0
    for size in sizes:
        idx = order[start:start + size]
        start += size
        rows = [kept_pos[int(i)] for i in idx]  # positions in the filtered dataset
        labels = [data.labels[r] for r in rows]
        splits.append(Split(
            prepared=engine.prepare(bases.select(idx), sites),
            sources={s: engine.store.take(a, idx) for s, a in src_acts.items()},
            bases={s: engine.store.take(a, idx) for s, a in base_acts.items()},
            labels=labels,
            base_values=[cm.run(data.bases[r])[data.variable] for r in rows],
            source_values=[cm.run(data.sources[r])[data.variable] for r in rows],
            rows=rows,
        ))
    return splits, data


def _correct(task, out: torch.Tensor, values: list) -> torch.Tensor:
    """Bool ``[n]``: does the network, unintervened, give each expected value by the task's checker?
    ``out``: the logits ``[n, C]`` of a plain forward, or greedily decoded ids ``[n, L]`` for tasks that
    generate (``Engine.capture(..., n_tokens)``)."""
    return task.correct_tokens(out, values) if task.generates else task.correct(out, values)


def fit_activations(featurizer: Featurizer, split: Split, site: Site) -> None:
    """Fit an activation-learned featurizer on the split's base and source activations at ``site``."""
    h = torch.cat([split.bases[site], split.sources[site]])
    featurizer.fit_activations(h, split.base_values + split.source_values)


def evaluate(engine: Engine, split: Split, site: Site, featurizer: Featurizer) -> tuple[float, torch.Tensor]:
    """The task's metric (IIA unless the task names another) of ``featurizer`` at ``site`` on
    ``split``, and the per-row scores ``[n]``: correctness (bool) by the task's checker — the argmax
    token, or greedy generation of the whole answer — or the task's real-valued score."""
    task = engine.task
    if task.generates:
        tokens = engine.generate(split.prepared, task.n_answer_tokens(split.labels), site, featurizer,
                                 split.sources[site])
        scores = task.correct_tokens(tokens, split.labels)
    else:
        scores = task.score(engine.run(split.prepared, site, featurizer, split.sources[site]), split.labels)
    return mean_score(scores), scores
