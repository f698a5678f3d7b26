"""Validating an interpretation: Palumbo et al.'s four axioms, each with a Clopper–Pearson bound ε.

An interpretation cuts the network into components ``t = t_n ∘ … ∘ t_1`` at the sites of its steps and
pairs each component with an abstract one, ``h = h_n ∘ … ∘ h_1``; ``α_k`` reads the abstract state out
of the concrete activation at step k's site and ``γ_k`` writes one back. For every step k (``α_0`` maps a
network input to the abstract input state) ``validate`` counts the inputs x where

    prefix equivalence        α_k(t_{≤k}(x))  ≠  h_{≤k}(α_0(x))
    component equivalence     α_k(t_{≤k}(x))  ≠  h_k(α_{k-1}(t_{<k}(x)))
    prefix replaceability     t(x)  ≠  t_{>k}(γ_k(h_{≤k}(α_0(x))))
    component replaceability  t(x)  ≠  t_{>k}(γ_k(h_k(α_{k-1}(t_{<k}(x)))))

(states compared by the step's ``equal``, outputs by the task's decoding) and bounds each disagreement
rate by ε, the one-sided Clopper–Pearson upper bound (``cv.metrics.epsilon_bound``).

The network runs through the engine: one capture pass reads every step's site; the replaceability runs are
planned as cells for the sweep's executor, one per step, each the full-vector interchange at the step's
site whose "sources" are γ's writes (two test sets: the prefix and the component chain), so only the
blocks after the site run, in batches. A step at a set of token positions (``Step([cv.Site(0, "c0"),
cv.Site(0, "c1"), ...])``) is read as ``[n, k, d]`` and written through the whole sequence of its layer,
its positions replaced and the others kept. Only the abstract model (``alpha_in``, each step's ``h`` and
``equal``) is evaluated example by example.
"""
from __future__ import annotations

import json
import numbers
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from einops import repeat

from featurizers import Featurizer, Neurons

from .engine import Engine, Prepared
from .metrics import Metric, Outcome, epsilon_bound
from .models import as_adapter
from .models.base import Adapter, Batch
from .results import Results
from .sites import Site
from .splits import Split
from .sweep import Cell, InProcessExecutor, SweepData
from .train import check_count

AXIOMS = ("prefix_equivalence", "component_equivalence", "prefix_replaceability", "component_replaceability")


class InterpretationError(ValueError):
    """An interpretation that cannot be validated: a map that fails or returns the wrong count, shape or
    type, named by its step."""


@dataclass(frozen=True)
class Step:
    """One component of an interpretation: the network up to ``site``, read and written there.

    Args:
        site: where the component ends: a ``cv.Site``, a block index or a module path; or a set of token
            positions at one layer, as a list of ``cv.Site`` that differ only in their position (e.g. the
            residual at every clause of a formula: ``[cv.Site(0, f"c{i}") for i in range(10)]``).
        h: the abstract component: the previous step's abstract state (``alpha_in``'s for the first
            step) -> this step's abstract state.
        alpha: activations at the site -> n abstract states (a list or tuple, or a tensor or array whose
            rows are the states). It gets ``h: [n, d]``, or ``h: [n, k, d]`` at k positions (in the
            order the sites were given).
        gamma: ``(states, h)`` -> ``h'`` of the shape of ``h`` (``[n, d]`` or ``[n, k, d]``): the n
            abstract states (a list) written into the activations ``h``, which it may use for the parts
            it leaves alone. At k positions the network's other positions keep their own activations.
        equal: ``equal(a, b) -> bool``, an equivalence of abstract states (e.g. clause order ignored);
            default ``==``, lists and tuples alike. With ``delta`` it compares components.
        delta: a tolerance for vector states: two states (sequences of the same length) are equal
            when at most ``delta`` of their components differ.

    States that are tensors or arrays are compared as (nested) lists.
    """

    site: Site | int | str | Sequence[Site]
    h: Callable
    alpha: Callable
    gamma: Callable
    equal: Callable | None = None
    delta: int = 0

    def __post_init__(self):
        if isinstance(self.site, (list, tuple)):
            object.__setattr__(self, "site", _position_set(self.site))
        elif not isinstance(self.site, Site):
            object.__setattr__(self, "site", Site(self.site))
        for name in ("h", "alpha", "gamma") + (("equal",) if self.equal is not None else ()):
            if not callable(getattr(self, name)):
                raise InterpretationError(f"the step at {self.where}: {name} must be callable, got "
                                          f"{getattr(self, name)!r}")
        check_count("delta", self.delta, 0, "components of a vector state allowed to differ")

    @property
    def sites(self) -> tuple[Site, ...]:
        """The sites the step reads and writes: one, or one per position of a position set."""
        return self.site if isinstance(self.site, tuple) else (self.site,)

    @property
    def where(self) -> str:
        """The site as tables and messages name it: ``L1@last``, or ``L0@[c0, c1]`` for a position set."""
        if isinstance(self.site, Site):
            return str(self.site)
        return f"{_layer_site(self.site[0])}@[{', '.join(str(s.position) for s in self.site)}]"


def _layer_site(site: Site) -> Site:
    """``site`` without its position: the whole sequence of the activation at its layer and component."""
    return Site(site.layer, None, site.component, site.head)


def _position_set(sites: Sequence) -> tuple[Site, ...]:
    """A step's list of sites as a position set: at least one, all ``cv.Site`` at one layer, component and
    head, with distinct token positions."""
    sites = tuple(sites)
    if not sites or not all(isinstance(s, Site) for s in sites):
        raise InterpretationError(f"a step's site set must be a non-empty list of cv.Site (one per token "
                                  f"position), got {list(sites)!r:.200}")
    whole = {_layer_site(s) for s in sites}
    if len(whole) > 1:
        raise InterpretationError(f"a step's sites must differ only in their token position (one layer, component "
                                  f"and head), got {[str(s) for s in sites]}")
    positions = [s.position for s in sites]
    if None in positions:
        raise InterpretationError(f"every site of a step's position set needs a token position, got "
                                  f"{[str(s) for s in sites]}")
    twice = next((p for i, p in enumerate(positions) if p in positions[:i]), None)
    if twice is not None:
        raise InterpretationError(f"position {twice!r} appears twice in the step's sites {[str(s) for s in sites]}")
    return sites


class Interpretation:
    """An abstract model of the network, step by step (Palumbo et al.), for ``cv.validate``.

    Args:
        alpha_in: a network input setting (a causal-model input setting) -> the abstract input state α_0.
        steps: the components in the order the network computes them (``Step``).
        info: what to report beside the ε table (``validate`` copies it into the results' ``meta``).
    """

    def __init__(self, alpha_in: Callable[[Mapping], object], steps: Sequence[Step], info: dict | None = None):
        if not callable(alpha_in):
            raise InterpretationError(f"alpha_in must be callable (input setting -> abstract input state), "
                                      f"got {alpha_in!r}")
        steps = list(steps) if isinstance(steps, (list, tuple)) else steps
        if not isinstance(steps, list) or not steps or not all(isinstance(s, Step) for s in steps):
            raise InterpretationError(f"steps must be a non-empty list of cv.Step, got {steps!r}")
        self.alpha_in = alpha_in
        self.steps = steps
        self.info = dict(info or {})

    def __repr__(self) -> str:
        return f"Interpretation({len(self.steps)} steps at {', '.join(s.where for s in self.steps)})"

    @classmethod
    def from_localization(cls, results: Results, variable: str, layer: int | str, model, task,
                          position=None, featurizer: str | None = None, n_fit: int = 2000, seed: int = 0,
                          batch_size: int = 256) -> "Interpretation":
        """A one-step interpretation from a localized cell: the network up to the cell's site computes
        ``variable`` from the input, as the task's causal model does.

        α reads the variable's value from the features the cell's featurizer interchanges (``F(h): [n, k]``,
        its ``mask()`` where it has one) with a logistic regression fitted on ``n_fit`` inputs drawn from
        the causal model (80% to fit, its accuracy on the other 20% in ``info["alpha_accuracy"]``); γ
        writes a value as the mean of those features over that value's fitting rows, decoded with the
        base's other features and error term; ``h`` is the causal model's run.
        The inputs are drawn from a stream of their own, apart from ``validate``'s under any seed.

        Args:
            results: what ``cv.localize`` returned (or ``Results.load``), holding the cell's featurizer.
            layer, position: the cell's site (as given to ``localize``). featurizer: the cell's
                featurizer name (e.g. ``"das(k=8)"``) when the results hold several there.
            model, task: the network and the task the cell was localized on.
        """
        check_count("n_fit", n_fit, 10, "inputs the classifier reading the variable is fitted and scored on")
        cm = task.causal_model
        if variable not in cm.variables:
            raise InterpretationError(f"unknown variable '{variable}'; the causal model's variables are "
                                      f"{list(cm.variables)}")
        feat, name = _cell_featurizer(results, variable, layer, position, featurizer)
        site = Site(layer, position, results.meta.get("component", "resid_post"))
        rng = random.Random(f"causalvar.from_localization:{seed}")
        settings = [cm.draw(rng) for _ in range(n_fit)]
        values = [cm.run(s)[variable] for s in settings]
        classes = list(dict.fromkeys(values))  # the values in the order the drawn inputs first take them
        if len(classes) < 2:
            raise InterpretationError(f"variable '{variable}' takes the one value {classes[0]!r} on {n_fit} drawn "
                                      "inputs; a classifier reading it needs two values or more")
        _, acts = Engine(as_adapter(model), batch_size).capture(task.encode(settings), [site])
        features = _features(feat, acts[site])  # [n_fit, k]
        y = np.array([classes.index(v) for v in values])
        cut = int(0.8 * n_fit)
        missing = [v for i, v in enumerate(classes) if not (y[:cut] == i).any()]
        if missing:
            raise InterpretationError(f"value {missing[0]!r} of '{variable}' is missing from the {cut} inputs the "
                                      "classifier is fitted on; raise n_fit")
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(max_iter=2000).fit(features[:cut].numpy(), y[:cut])
        accuracy = float(clf.score(features[cut:].numpy(), y[cut:]))
        means = torch.stack([features[:cut][torch.from_numpy(y[:cut] == c)].mean(0) for c in range(len(classes))])

        def alpha(h: torch.Tensor) -> list:
            """``h: [n, d]`` -> the variable's n values read from the features."""
            return [classes[i] for i in clf.predict(_features(feat, h).numpy())]

        def gamma(states: list, h: torch.Tensor) -> torch.Tensor:
            """The values ``states`` (n) written into ``h: [n, d]``: their mean features, the base's error."""
            unknown = [v for v in states if v not in classes]
            if unknown:
                raise InterpretationError(f"gamma got the value {unknown[0]!r} of '{variable}', which none of "
                                          f"the {n_fit} fitting inputs took ({classes})")
            return _write_features(feat, h, means[[classes.index(v) for v in states]])

        info = {"variable": variable, "featurizer": name, "site": str(site), "n_fit": n_fit,
                "alpha": "logistic regression on the featurizer's features", "alpha_accuracy": accuracy}
        return cls(lambda setting: setting,
                   [Step(site, h=lambda setting: cm.run(setting)[variable], alpha=alpha, gamma=gamma)], info)


def _cell_featurizer(results: Results, variable: str, layer, position, featurizer: str | None):
    """The fitted featurizer of the results' cell and its name; a clear error naming the cells there are."""
    keys = [k for k in results.featurizers if k[0] == variable and k[2] == str(layer) and k[3] == str(position)
            and (featurizer is None or k[1] == featurizer)]
    if len(keys) == 1:
        return results.featurizers[keys[0]], keys[0][1]
    cells = sorted(f"variable={k[0]!r}, featurizer={k[1]!r}, layer={k[2]}, position={k[3]}" for k in results.featurizers)
    if not keys:
        raise InterpretationError(f"the results hold no fitted featurizer for variable '{variable}', featurizer "
                                  f"{featurizer!r}, layer {layer!r}, position {position!r}; their cells are: "
                                  + ("; ".join(cells) or "none"))
    raise InterpretationError(f"the results hold several featurizers at variable '{variable}', layer {layer!r}, "
                              f"position {position!r}: {[k[1] for k in keys]}; pass featurizer=<one of them>")


def _features(feat, h: torch.Tensor) -> torch.Tensor:
    """The features ``[n, k]`` (float32, CPU) an interchange through ``feat`` hands over (its ``mask()``;
    all where it has none) of ``h: [n, d]``."""
    with torch.no_grad():
        return _on_featurizer(feat, h, lambda x: _masked(feat, feat.encode(x)[0]))


def _write_features(feat, h: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``h: [n, d]`` with the features an interchange hands over replaced by ``f: [n, k]``, the others and
    the error term kept: ``[n, d]``."""
    def write(x):
        features, err = feat.encode(x)
        m = feat.mask()
        new = f.to(features) if m is None else features.masked_scatter(m.to(features.device).expand_as(features),
                                                                       f.to(features))
        return feat.decode(new, err)
    with torch.no_grad():
        return _on_featurizer(feat, h, write)


def _masked(feat, features: torch.Tensor) -> torch.Tensor:
    m = feat.mask()
    return features if m is None else features[..., m.to(features.device)]


def _on_featurizer(feat, h: torch.Tensor, fn) -> torch.Tensor:
    """``fn(h)`` with ``h`` on the featurizer's device and in its dtype; the result float32 on the CPU."""
    p = next((t for t in feat.state_dict().values() if t.is_floating_point()), torch.empty(0))
    return fn(h.to(p.device, p.dtype)).float().cpu()


class _Agreement(Metric):
    """Whether the intervened run's output is the unintervened one's (``Outcome.base``), by the task's decoding."""

    name = "agreement"

    def score(self, out: Outcome) -> torch.Tensor:
        clean = out.task.predict(out.base)
        return torch.tensor([a == b for a, b in zip(out.task.predict(out.logits), clean)], dtype=torch.bool)


def _written(task, prepared: Prepared, acts: dict, logits: torch.Tensor, writes: dict) -> Split:
    """The bases with γ's writes ``{site: [n, d]}`` as their sources, the unintervened outputs as labels."""
    clean, n = task.predict(logits), len(logits)
    return Split(task, prepared, writes, acts, clean, clean, [None] * n, [None] * n, list(range(n)), logits, logits)


class ValidationResults(Results):
    """What ``validate`` returns: one row per step × axiom (``table``: step, site, axiom, errors, n,
    epsilon); ``meta`` holds the settings and the interpretation's ``info``."""

    @property
    def columns(self) -> list[str]:
        return ["step", "site", "axiom", "errors", "n", "epsilon"]

    @classmethod
    def load(cls, directory: str | Path) -> "ValidationResults":
        """Read what ``save`` wrote (``results.json``: rows and meta)."""
        blob = json.loads((Path(directory) / "results.json").read_text())
        return cls(blob["rows"], blob["meta"])

    def __repr__(self) -> str:
        return f"ValidationResults({len(self.rows)} rows)\n" + self.table[self.columns].to_string(index=False)

    def figure(self, path: str | Path | None = None, title: str | None = None):
        """ε of every step × axiom as bars (log scale; each labelled with its errors / n), one group per step;
        saved to ``path`` when given. Returns the matplotlib figure."""
        from .figures import pyplot, saved

        t = self.table
        steps = list(dict.fromkeys(zip(t["step"], t["site"])))
        fig, ax = pyplot().subplots(figsize=(2.2 + 1.9 * len(steps), 3.6))
        width = 0.8 / len(AXIOMS)
        for j, axiom in enumerate(AXIOMS):
            rows = [t[(t["step"] == k) & (t["axiom"] == axiom)].iloc[0] for k, _ in steps]
            xs = [i + (j - (len(AXIOMS) - 1) / 2) * width for i in range(len(steps))]
            bars = ax.bar(xs, [r["epsilon"] for r in rows], width, label=axiom.replace("_", " "))
            ax.bar_label(bars, [f"{r['errors']}/{r['n']}" for r in rows], fontsize=6, rotation=90, padding=2)
        ax.set_yscale("log")
        ax.set_ylim(top=3)
        ax.set_ylabel(f"ε (one-sided {self.meta.get('confidence', 0.95):.0%} Clopper–Pearson)")
        ax.set_xticks(range(len(steps)), [f"step {k}\n{site}" for k, site in steps], fontsize=7)
        ax.set_title(title or f"{self.meta.get('task', 'task')}: the axioms per step (n = {self.meta.get('n')})", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        return saved(fig, path)


def validate(model, task, interpretation: Interpretation, n: int = 2000, seed: int = 0, confidence: float = 0.95,
             data: Sequence[Mapping] | None = None, batch_size: int = 256, progress: bool = True,
             executor=None) -> ValidationResults:
    """Count, for every step of ``interpretation``, the inputs where each of Palumbo et al.'s four axioms
    fails (see the module's docstring), with ε, the one-sided Clopper–Pearson upper bound on the failure
    rate at ``confidence`` (zero errors in n give ``1 − (1 − confidence)^(1/n)``).

    Args:
        model: the network (a torch module, an adapter, a model name).
        task: the task whose causal model draws the inputs and whose decoding judges the outputs.
        interpretation: a ``cv.Interpretation``.
        n: inputs drawn from the task's causal model with ``seed``. data: input settings to use instead.
        batch_size: rows per forward. executor: runs the replaceability cells (one per step: the network
            after the step's site, γ's writes there; default ``cv.sweep.InProcessExecutor()``).
    Returns: ``ValidationResults``; ``.table`` has step, site, axiom, errors, n, epsilon.
    """
    if not isinstance(interpretation, Interpretation):
        raise InterpretationError(f"interpretation must be a cv.Interpretation, got {type(interpretation).__name__}")
    check_count("seed", seed, 0, "the same seed gives the same table")
    check_count("batch_size", batch_size, 1, "rows per forward")
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a number in (0, 1) (e.g. 0.95), got {confidence!r}")
    if task.generates:
        raise ValueError(f"the task '{task.name}' judges generated answers; validate compares the network's "
                         "outputs by the task's decoding of its logits (use checker='token')")
    if data is None:
        check_count("n", n, 1, "inputs drawn from the task's causal model")
        settings = task.causal_model.sample(n, seed)
    else:
        settings = list(data)
        if not settings or not all(isinstance(s, Mapping) for s in settings):
            raise ValueError("data must be a non-empty list of input settings (dicts of the causal model's inputs)")
    adapter = as_adapter(model)
    steps = interpretation.steps
    _check_order(adapter, steps)
    batch = task.encode(settings)
    for k, step in enumerate(steps, 1):
        if step.sites[0].position is None and batch.read is not None:
            raise InterpretationError(f"{_name(k, step)}: the network has a sequence axis; give the step's site a "
                                      "token position, e.g. cv.Site(layer, 'last')")
    # unknown or colliding positions fail before any forward
    positions = [_check_positions(batch, step, _name(k, step)) for k, step in enumerate(steps, 1)]
    start = _apply(interpretation.alpha_in, settings, "alpha_in", "input setting")
    engine = Engine(adapter, batch_size)
    sites = list(dict.fromkeys(s for step in steps for s in step.sites))
    logits, acts, whole = engine.capture_prepared(batch, sites)  # one forward: the reads and every row's prefix
    # every abstract state and every write first (cheap, and where a map's mistakes show), then the runs
    counts, writes = [], []
    prefix = observed = start  # the abstract states entering step k: composed from the input, read at k-1
    for k, step in enumerate(steps, 1):
        name = _name(k, step)
        h = _read(step, acts)
        read = _states(_call(step.alpha, name, "alpha", h), len(settings), name, "alpha", tuple(h.shape))
        via_prefix = _apply(step.h, prefix, f"{name}: h", "abstract state (composed from the input)")
        via_component = _apply(step.h, observed, f"{name}: h", "abstract state (read at the step before)")
        counts.append([_disagreements(step, read, via_prefix, name), _disagreements(step, read, via_component, name)])
        writes.append([_gamma(step, states, h, name) for states in (via_prefix, via_component)])
        prefix, observed = via_prefix, read
    # the replaceability runs: per step a cell of the full-vector interchange whose "sources" are γ's writes;
    # a position set is written through the whole sequence of its layer, the other positions kept
    prepared = engine.take(whole, torch.arange(len(batch)))
    cells = []
    for k, step in enumerate(steps, 1):
        if isinstance(step.site, Site):
            cells.append(Cell(f"step {k}", Neurons(), step.site))
        else:
            cells.append(Cell(f"step {k}", _PositionWrite(), _layer_site(step.sites[0])))
            prepared.starts[cells[-1].site] = prepared.starts[step.sites[0]]  # the same block: position aside
    length = None if batch.read is None else int(batch.positions["last"].max()) + 1  # the padded sequence
    tests = {axiom: _written(task, prepared, acts, logits, {
        cell.site: w[i] if isinstance(step.site, Site) else _flagged(w[i], pos, length)
        for step, cell, w, pos in zip(steps, cells, writes, positions)}) for i, axiom in enumerate(AXIOMS[2:])}
    sweep = SweepData(engine, tests[AXIOMS[2]], None, tests, [_Agreement()], n_train=0)
    results = (executor or InProcessExecutor()).run(cells, sweep, None, progress, desc="validate")
    rows = []
    for k, (step, equivalence, result) in enumerate(zip(steps, counts, results), 1):
        errors = dict(zip(AXIOMS[:2], equivalence))
        errors.update({r["dataset"]: r["n"] - round(r["agreement"] * r["n"]) for r in result.rows})
        rows += [{"step": k, "site": step.where, "axiom": axiom, "errors": int(errors[axiom]),
                  "n": len(settings), "epsilon": epsilon_bound(int(errors[axiom]), len(settings), confidence)}
                 for axiom in AXIOMS]
    meta = {"model": type(adapter.module).__name__, "task": getattr(task, "name", "task"), "n": len(settings),
            "seed": seed if data is None else None, "confidence": confidence,
            "steps": [s.where for s in steps], "interpretation": interpretation.info}
    return ValidationResults(rows, meta)


def _name(k: int, step: Step) -> str:
    return f"step {k} (site {step.where})"


def _check_positions(batch: Batch, step: Step, name: str) -> torch.Tensor | None:
    """The token index of each of the step's positions in every row, ``[n, k]`` (``None`` without a sequence
    axis); positions of a set that name one token in some row are refused (the write would be ambiguous)."""
    if step.sites[0].position is None:
        return None
    pos = torch.stack([batch.position(s.position) for s in step.sites], 1)  # [n, k]
    if pos.shape[1] > 1:
        same = (pos[:, :, None] == pos[:, None, :]).sum((1, 2)) > pos.shape[1]  # [n]
        if same.any():
            i = int(same.nonzero()[0])
            raise InterpretationError(f"{name}: two of its positions are the same token ({pos[i].tolist()}) in "
                                      f"example {i}; every position of a step's set must name a token of its own")
    return pos


def _read(step: Step, acts: dict) -> torch.Tensor:
    """The step's activations: ``[n, d]`` at one site, ``[n, k, d]`` at a position set."""
    if isinstance(step.site, Site):
        return acts[step.site]
    return torch.stack([acts[s] for s in step.sites], 1)


class _PositionWrite(Featurizer):
    """The write of a position set through the whole sequence of its layer: the source ``[n, seq, d + 1]``
    holds γ's writes and, last, a flag (1: write this position, 0: keep the base's)."""

    def interchange(self, h_base: torch.Tensor, h_source: torch.Tensor) -> torch.Tensor:
        """``h_base: [n, seq, d]``, ``h_source: [n, seq, d + 1]`` -> ``[n, seq, d]``."""
        return torch.where(h_source[..., -1:] > 0, h_source[..., :-1], h_base)


def _flagged(written: torch.Tensor, pos: torch.Tensor, length: int) -> torch.Tensor:
    """γ's writes ``[n, k, d]`` at token indices ``pos: [n, k]`` as a ``_PositionWrite`` source
    ``[n, length, d + 1]``."""
    n, k, d = written.shape
    out = torch.zeros(n, length, d + 1)
    rows = repeat(torch.arange(n), "n -> n k", k=k)
    out[rows, pos] = torch.cat([written, torch.ones(n, k, 1)], -1)
    return out


def _check_order(adapter: Adapter, steps: Sequence[Step]) -> None:
    """Every site must exist, once; steps at blocks must come in the network's order."""
    for k, step in enumerate(steps, 1):
        earlier = next((i for i, other in enumerate(steps[:k - 1], 1) if set(other.sites) & set(step.sites)), None)
        if earlier is not None:
            raise InterpretationError(f"{_name(k, step)} cuts the network where step {earlier} does; every step "
                                      "needs a site of its own")
    at_blocks = []  # (block index, step number, step) of the steps on the residual stream between blocks
    for k, step in enumerate(steps, 1):
        adapter.module_path(step.sites[0])  # an unknown layer or module fails here, before any forward
        j = adapter.block_index(step.sites[0])
        if j is None:
            continue
        if at_blocks and j <= at_blocks[-1][0]:
            raise InterpretationError(f"{_name(k, step)} does not come after {_name(*at_blocks[-1][1:])} in the "
                                      "network's order of blocks; give the steps in the order the network computes them")
        at_blocks.append((j, k, step))


def _plain(state):
    """A state with tensors and arrays as (nested) lists, so that states compare with ``==``."""
    return state.tolist() if isinstance(state, (torch.Tensor, np.ndarray)) else state


def _states(out, n: int, name: str, what: str, shape: tuple) -> list:
    """``out`` (a map's n states) as a list, refused in the step's terms when it is not n states."""
    if isinstance(out, (torch.Tensor, np.ndarray)) and out.ndim > 0:
        out = out.tolist()
    if not isinstance(out, (list, tuple)):
        raise InterpretationError(f"{name}: {what} returned {type(out).__name__} ({out!r:.80}) for activations "
                                  f"{list(shape)}; it must return {n} abstract states, one per row (a list, "
                                  "a tuple, or a tensor or array whose rows are the states)")
    if len(out) != n:
        raise InterpretationError(f"{name}: {what} returned {len(out)} states for {n} rows (activations "
                                  f"{list(shape)}); it must return one abstract state per row")
    return [_plain(s) for s in out]


def _call(fn: Callable, name: str, what: str, h: torch.Tensor):
    """``fn(h)`` for a map of activations ``h`` (``[n, d]`` or ``[n, k, d]``), a failure named by the step."""
    try:
        return fn(h)
    except Exception as e:
        raise InterpretationError(f"{name}: {what} failed on activations {list(h.shape)}: {e!r}") from e


def _apply(fn: Callable, states: Sequence, name: str, what: str) -> list:
    """``fn`` on each state, a failure named by the map, the example and its state."""
    out = []
    for i, s in enumerate(states):
        try:
            out.append(_plain(fn(s)))
        except Exception as e:
            raise InterpretationError(f"{name} failed on the {what} {s!r:.120} of example {i}: {e!r}") from e
    return out


def _default_equal(a, b) -> bool:
    """``a == b``, with lists and tuples alike (element by element)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_default_equal(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _disagreements(step: Step, read: list, expected: list, name: str) -> int:
    """How many examples' state read by α differs from the expected one (``equal``, within ``delta``)."""
    equal = step.equal or _default_equal
    errors = 0
    for i, (a, b) in enumerate(zip(read, expected)):
        try:
            if step.delta:
                if not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)):
                    raise InterpretationError(f"with delta={step.delta} the states must be sequences of one "
                                              "length, component by component")
                same = sum(not equal(x, y) for x, y in zip(a, b)) <= step.delta
            else:
                same = bool(equal(a, b))
        except Exception as e:
            raise InterpretationError(f"{name}: comparing the state read by alpha, {a!r:.80}, with the expected "
                                      f"{b!r:.80} (example {i}) failed: {e}") from e
        errors += not same
    return errors


def _gamma(step: Step, states: list, h: torch.Tensor, name: str) -> torch.Tensor:
    """γ's output for ``states`` written into ``h`` (``[n, d]``, or ``[n, k, d]`` at a position set),
    checked: a tensor of the same shape."""
    try:
        out = step.gamma(states, h.clone())
    except Exception as e:
        raise InterpretationError(f"{name}: gamma failed on {len(states)} states (the first {states[0]!r:.80}) "
                                  f"and activations {list(h.shape)}: {e!r}") from e
    if not isinstance(out, torch.Tensor):
        raise InterpretationError(f"{name}: gamma returned {type(out).__name__}; it must return the activations "
                                  f"with the states written in, a tensor {list(h.shape)}")
    if tuple(out.shape) != tuple(h.shape):
        raise InterpretationError(f"{name}: gamma returned a tensor {list(out.shape)} for activations "
                                  f"{list(h.shape)}; it must return the same shape")
    if not out.is_floating_point():
        raise InterpretationError(f"{name}: gamma returned a {out.dtype} tensor; activations are floating point")
    bad = (~torch.isfinite(out)).flatten(1).any(-1)
    if bad.any():
        raise InterpretationError(f"{name}: gamma wrote NaN or infinite values on {int(bad.sum())} of {len(out)} rows "
                                  f"(first: example {int(bad.nonzero()[0])}, state {states[int(bad.nonzero()[0])]!r:.80})")
    return out.detach().float().cpu()

