"""Activation patching: whole activations written from one run into another, no training (Zhang & Nanda,
ICLR 2024; ``REFERENCE.md`` §4). A thin layer over the sweep: each (component, layer, position or head) is a
``Cell`` of the full-vector interchange (``Neurons()``) whose base is the run being patched and whose source
is the run patched from, so it gets the source cache, suffix execution and key/value reuse of the engine.

- corruption ``"str"`` (symmetric token replacement): the corrupted prompt is a counterfactual source of a
  variable (in distribution, same token length, its own answer r'); ``"gn"``: Gaussian noise of standard
  deviation ν = 3 × std(embedding matrix) on the token embeddings at the task's ``noise_positions``.
- direction ``"denoise"``: the corrupted run with the clean activation written in (base = corrupted, source =
  clean); ``"noise"``: the clean run with the corrupted activation written in.
- metric ``"logit_diff"`` (normalised: 1 = the patched run behaves like the clean one, 0 = like the corrupted
  one, in both directions), ``"prob"`` (P_pt(r) − P_*(r)), ``"kl"`` (KL(P_cl‖P_*) − KL(P_cl‖P_pt)), ``"iia"``
  (STR only: the causal model labels the counterfactual).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from featurizers import Neurons

from .counterfactuals import CounterfactualDataset
from .engine import Engine
from .figures import grid_panel, pyplot, saved
from .metrics import IIA, KLDiff, Metric, MetricError, NormalizedLogitDiff, Outcome, ProbDiff, position_labels
from .models import as_adapter
from .models.base import EMBED_NOISE, Batch
from .results import Results
from .sites import Site
from .splits import Split, baseline, check_finite, outcome
from .executors import as_executor
from .sweep import Cell, SweepData
from .task import PromptTask
from .train import check_count

CORRUPTIONS = ("str", "gn")
DIRECTIONS = ("denoise", "noise")
#: ``component=`` -> the site component it patches
COMPONENTS = {"resid": "resid_post", "attn": "attn_out", "mlp": "mlp_out", "heads": "head"}
METRICS = ("logit_diff", "prob", "kl", "iia")
METHODS = ("exact", "attribution")
#: ν = NOISE_SCALE × the standard deviation of the embedding matrix (Meng et al.'s choice, kept by Zhang & Nanda)
NOISE_SCALE = 3.0
#: below this mean probability of r on the corrupted run, "prob" cannot show negative components
LOW_PROB = 0.01


class PatchingWarning(UserWarning):
    """A patching setting known to mislead (probability of a near-impossible answer, windows over layers)."""


@dataclass
class _Pairs:
    """One set of (clean, corrupted) runs before any forward: the encoded clean and corrupted prompts, the
    clean answers r, the contrast answers r' and, for IIA, the causal model's label of the patched run."""

    name: str
    clean: Batch
    corrupt: Batch
    r: list
    r2: list
    cf: list | None


def _metric(metric: str, direction: str, corruption: str, variable) -> Metric:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {METRICS}")
    if metric == "iia":
        if corruption != "str" or variable is None:
            raise ValueError("metric 'iia' needs the causal model to label the patched run: corruption='str' with "
                             "a variable (or data); Gaussian noise has no high-level counterfactual")
        return IIA()
    clean = "source" if direction == "denoise" else "base"
    return {"logit_diff": NormalizedLogitDiff, "prob": ProbDiff, "kl": KLDiff}[metric](clean=clean)


def _lengths(batch: Batch) -> torch.Tensor:
    return batch.positions["last"] - batch.positions["first"] + 1


def _str_sets(task, variable: str, n: int, seed: int) -> list[CounterfactualDataset]:
    """STR's clean/corrupted pairs: the task's ``corruptions`` of ``variable`` where it names some, else its
    counterfactual sets (only pairs whose answer changes)."""
    gens = getattr(task, "corruptions", {}).get(variable)
    if not gens:
        return task.counterfactual_sets(variable, n, seed=seed, changes_output=True)
    return [CounterfactualDataset.generate(task.causal_model, variable, n, seed=seed, source=gen, name=name,
                                           changes_output=True) for name, gen in gens.items()]


def _str_pairs(task, datasets: Sequence[CounterfactualDataset], direction: str) -> list[_Pairs]:
    """STR pairs: each dataset's bases are the clean prompts, its sources the corrupted ones; a pair whose
    prompts differ in token length is refused, naming it."""
    cm = task.causal_model
    out = []
    for ds in datasets:
        clean, corrupt = task.encode(ds.bases), task.encode(ds.sources)
        differ = (_lengths(clean) != _lengths(corrupt)).nonzero().flatten().tolist()
        if differ:
            i = differ[0]
            raise ValueError(f"pair {i} of set '{ds.name}' has prompts of different token lengths: clean "
                             f"{task.prompt(ds.bases[i])!r} ({int(_lengths(clean)[i])} tokens) and corrupted "
                             f"{task.prompt(ds.sources[i])!r} ({int(_lengths(corrupt)[i])} tokens); symmetric token "
                             f"replacement needs equal lengths ({len(differ)} of {len(ds)} pairs differ); draw "
                             "counterfactuals that replace tokens one for one")
        if direction == "denoise":  # the corrupted run takes the variable from the clean one
            cf = [cm.interchange(s, {ds.variable: b})[cm.output] for b, s in zip(ds.bases, ds.sources)]
        else:
            cf = list(ds.labels)
        out.append(_Pairs(ds.name, clean, corrupt, list(ds.base_labels), list(ds.source_labels), cf))
    return out


def _gn_pairs(adapter, task, settings: list, noise_positions: Sequence[str], contrast, seed: int) -> _Pairs:
    """GN pairs: the clean prompts and the same prompts with N(0, ν²) noise (ν = 3·std of the embedding
    matrix) on the token embeddings at ``noise_positions``, drawn from ``seed``."""
    cm = task.causal_model
    clean = task.encode(settings)
    ids = clean.inputs["input_ids"]
    rows = torch.arange(len(ids))
    where = torch.zeros(ids.shape, dtype=torch.bool)  # [n, seq]
    for role in noise_positions:
        where[rows, clean.position(role)] = True
    nu = NOISE_SCALE * adapter.embedding_std
    noise = torch.randn(*ids.shape, adapter.d_model, generator=torch.Generator().manual_seed(seed)) * nu
    corrupt = Batch({**clean.inputs, EMBED_NOISE: noise * where[..., None]}, clean.positions, clean.read)
    runs = [cm.run(s) for s in settings]
    r2 = [contrast(v) if callable(contrast) else v[contrast] for v in runs]
    return _Pairs("gn", clean, corrupt, [v[cm.output] for v in runs], r2, None)


def _split(engine: Engine, task, pairs: _Pairs, sites: Sequence[Site], direction: str, iia: bool,
           filter_correct: bool, corruption: str, n: int, attribution: Metric | None = None,
           ) -> tuple[Split, str, dict | None]:
    """The split a cell patches, of the first ``n`` pairs (kept by the filter): base = the run being patched
    (corrupted when denoising), source = the run patched from; ``labels`` = r (or, for IIA, the causal
    model's label), ``base_labels`` = r' (what the metrics' ``contrast`` reads); what the filter did; and,
    with ``attribution`` (a metric), the gradient ``[n, d]`` of its per-pair score at every site of the
    base run (one forward and one backward for all sites; the split then holds no prepared rows)."""
    task.targets(pairs.r), task.targets(pairs.r2)  # every answer is a token before any forward
    if pairs.clean.inputs.keys() == pairs.corrupt.inputs.keys() and all(
            torch.equal(v, pairs.corrupt.inputs[k]) for k, v in pairs.clean.inputs.items()):
        raise MetricError(f"the corruption changes nothing: the corrupted prompts of set '{pairs.name}' are the clean "
                          "ones, so there is nothing to restore; corrupt other tokens or choose another set")
    if all(a == b for a, b in zip(pairs.r, pairs.r2)):
        raise ValueError(f"in every pair of set '{pairs.name}' the contrast answer r' is the clean answer r, so the "
                         "logit difference logit(r) - logit(r') is 0 in every run; patch a set whose corrupted "
                         "prompts change the answer (data=task.counterfactual_sets(variable, n)[k]) or, for GN, "
                         "another contrast")
    denoise = direction == "denoise"  # the base is the run being patched: the corrupted one when denoising
    base, source = (pairs.corrupt, pairs.clean) if denoise else (pairs.clean, pairs.corrupt)
    src_out, src_acts = engine.capture(source, sites)
    grads = None
    if attribution is None:
        base_out, base_acts, whole = engine.capture_prepared(base, sites)  # one forward per base row
    else:
        def score(logits: torch.Tensor, rows: slice) -> torch.Tensor:  # [b, C] -> the metric's score [b]
            return attribution.score(Outcome(task, logits, pairs.r[rows], pairs.r2[rows], logits.detach(),
                                             src_out[rows]))
        base_out, base_acts, grads = engine.attribute(base, sites, score)
    clean_out, corrupt_out = (src_out, base_out) if denoise else (base_out, src_out)
    check_finite(clean_out, None, "clean")
    check_finite(corrupt_out, None, "corrupted")
    drawn = len(clean_out)
    keep = torch.ones(drawn, dtype=torch.bool)
    report = f"every pair is used ({drawn} pairs; filter_correct=False)"
    if filter_correct:
        keep = task.correct(clean_out, pairs.r)
        which = "clean prompt"
        if corruption == "str":
            keep &= task.correct(corrupt_out, pairs.r2)
            which = "clean and the corrupted prompt"
        report = (f"filter_correct: {int(keep.sum())} of {drawn} pairs kept, those the network answers on the "
                  f"{which}; the first {min(n, int(keep.sum()))} are patched")
        if not keep.any():
            raise ValueError(f"no pair of set '{pairs.name}' is left: {report}; patch with filter_correct=False, "
                             "or check cv.task_accuracy(model, task)")
    idx = keep.nonzero().flatten()[:n]
    pick = lambda xs: [xs[i] for i in idx.tolist()]
    take = lambda acts: {s: engine.store.take(a, idx) for s, a in acts.items()}
    split = Split(task, None if grads is not None else engine.take(whole, idx), take(src_acts), take(base_acts),
                  pick(pairs.cf if iia else pairs.r), pick(pairs.r2), [None] * len(idx), [None] * len(idx),
                  idx.tolist(), base_out[idx], src_out[idx])
    return split, report, None if grads is None else take(grads)


def _check_gap(split: Split, name: str, metric: Metric, direction: str) -> None:
    """Refuse a corruption that leaves the network's outputs as they were (nothing to restore), and warn
    when ``"prob"`` reads an answer the corrupted run almost never gives."""
    clean, corrupt = (split.source_out, split.base_out) if direction == "denoise" else (split.base_out, split.source_out)
    if torch.allclose(clean, corrupt, rtol=0, atol=1e-6 * max(1.0, float(clean.abs().max()))):
        raise MetricError(f"the corruption changes nothing: the clean and the corrupted runs of set '{name}' give the "
                          "same logits, so there is nothing to restore; corrupt other tokens or choose another "
                          "counterfactual set")
    if isinstance(metric, ProbDiff):
        p = corrupt.softmax(-1)[torch.arange(len(split)), split.task.targets(split.labels)].mean()
        if p < LOW_PROB:
            warnings.warn(PatchingWarning(
                f"the corrupted runs of set '{name}' put a mean probability of {float(p):.2g} on the clean answer: "
                "the probability difference cannot go below 0 there, so components that lower the answer's "
                "probability cannot show; read the logit difference too (metric='logit_diff')"), stacklevel=3)
    baseline(split, metric)  # the normalised logit difference refuses a zero mean gap itself


def _layers(layers, adapter) -> list[int]:
    if layers is None:
        return list(range(adapter.n_layers))
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not layers or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        raise ValueError(f"layers must be block indices (ints), e.g. layers=range({adapter.n_layers}); got {layers!r}")
    for x in layers:
        adapter.module_path(Site(x))  # out of range: an error naming the model's blocks
    return [x % adapter.n_layers for x in layers]


def _positions(positions, component: str, batches: Sequence[Batch]) -> list:
    """The positions to patch: task roles or ints as given, or (``None``) every token index when all prompts
    have one token length; heads take exactly one, or ``None`` (every token index, patched together)."""
    every = positions is None
    if every:
        lengths = torch.cat([_lengths(b) for b in batches])
        if len(set(lengths.tolist())) > 1:
            i = int((lengths != lengths[0]).nonzero()[0])
            raise ValueError(f"positions=None patches every token index, which needs prompts of one template (one "
                             f"token length); prompt {i} has {int(lengths[i])} tokens, prompt 0 has {int(lengths[0])}; "
                             "name the positions (task roles such as 'last')")
        positions = list(range(int(lengths[0])))
    positions = [positions] if isinstance(positions, (str, int)) else list(positions)
    if component == "heads" and not every and len(positions) != 1:
        raise ValueError(f"component='heads' patches every head of a layer at one position, or at every token "
                         f"index together (positions=None); got positions={positions!r}: pass one, e.g. "
                         "positions='last'")
    for b in batches:
        for p in positions:
            b.position(p)  # unknown roles fail before any forward
    return positions


def patch(model, task, variable: str | None = None, corruption: str = "str", metric: str = "logit_diff",
          direction: str = "denoise", component: str = "resid", layers: int | Sequence[int] | None = None,
          positions="last", n: int = 64, seed: int = 0, data: CounterfactualDataset | None = None,
          filter_correct: bool = False, noise_positions: Sequence[str] | None = None,
          contrast: str | Callable | None = None, window: int = 1, method: str = "exact", batch_size: int = 64,
          progress: bool = True, executor=None) -> PatchingResults:
    """Activation patching of whole activations at every (layer, position) — or (layer, head) — cell.

    Args:
        model: an HF causal LM adapter (``cv.load_model(...)``, ``cv.HFModel``), a HookedTransformer, a name.
        task: a ``cv.PromptTask`` judging single-token answers.
        variable: STR: the causal-model variable whose corrupted prompts are drawn: the task's
            ``corruptions`` of it (IOI: other names for ``output_token``, the other name repeated for
            ``output_position``), else its counterfactual sets; only pairs whose answer changes, one
            set per name.
        corruption: ``"str"`` or ``"gn"`` (Gaussian noise N(0, ν²), ν = 3 × std of the embedding matrix, on
            the token embeddings at ``noise_positions``, drawn from ``seed``; the clean prompts are ``n``
            samples of the causal model, or ``data.bases``).
        metric: ``"logit_diff"`` (normalised logit difference ``(LD_pt − LD_*) / (LD_cl − LD_*)``, means over
            pairs first, LD = logit(r) − logit(r'); column ``logit_diff_norm``), ``"prob"`` (``prob_diff``),
            ``"kl"`` (``kl_diff``) or ``"iia"`` (STR). r is the clean answer; r' the corrupted prompt's answer
            (STR) or ``contrast``'s (GN). A clean–corrupt gap of zero is an error, never a NaN.
        direction: ``"denoise"`` (the clean activation written into the corrupted run) or ``"noise"``.
        component: ``"resid"`` (the residual stream after each block), ``"attn"``, ``"mlp"`` (what each
            sublayer adds to the residual stream), by layer × position; ``"heads"``: every query head of each
            layer (its output before the output projection; with grouped-query attention, writing one query
            head changes only its own contribution ``z_h W_O[h]``, not the key/value head it shares) at one
            position, or with ``positions=None`` at every token index together (column ``position`` "all").
        layers: block indices (default: all). positions: task roles or ints, or ``None``: every token index
            (prompts of one template, equal lengths).
        n: pairs per counterfactual set (with ``filter_correct``, 2n are drawn and the first n kept are used).
        data: a ``CounterfactualDataset`` whose bases are the clean prompts and sources the corrupted ones
            (STR), or whose bases are the clean prompts (GN).
        filter_correct: use only pairs the network answers correctly (MIB's filter: the clean and, for STR,
            the corrupted prompt); by default every pair is used, as in Zhang & Nanda. The meta says which.
        noise_positions: GN: the task roles whose embeddings are noised (default: the task's
            ``noise_positions``; IOI: ``["io", "s1", "s2"]``).
        contrast: GN: r', a causal-model variable or ``values -> output value`` (default: the task's
            ``contrast``; IOI: ``"subject"``).
        window: patch ``window`` consecutive layers at once (from each of ``layers``, cut at the last block);
            the table's ``layer`` then reads e.g. ``"3-5"``. Off (1) by default: windows exaggerate
            localization (Zhang & Nanda), so a ``PatchingWarning`` says so.
        method: ``"exact"`` (each cell patched and run) or ``"attribution"`` (the fast screen: the metric
            linearised in the activations, ``score_pt ≈ score_* + (a_src − a_base) · ∂score/∂a``, from one
            source forward and one base forward and backward for every site at once; exact wherever the
            network after the site is linear in it, e.g. the last layer's residual under the logit
            difference; ``"logit_diff"``, ``"prob"`` or ``"kl"``). The table's ``method`` column says which.
    Returns: ``PatchingResults``: ``table`` (component, layer, position, head, the metric, n, ci_low, ci_high
    (a bootstrap over pairs), baseline = the metric with nothing patched, corruption, metric, direction, method,
    window, filter_correct), ``heatmap(path)`` titled with the settings, ``save(dir)``.
    """
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {corruption!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {sorted(COMPONENTS)}, got {component!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_count("n", n, 1, "pairs per counterfactual set")
    check_count("seed", seed, 0, "the same seed gives the same table")
    if not isinstance(task, PromptTask) or task.generates:
        raise ValueError("activation patching scores the logits of single-token answers: pass a cv.PromptTask "
                         "with checker='token'")
    if data is not None and variable is not None and data.variable != variable:
        raise ValueError(f"data interchanges '{data.variable}', not variable '{variable}'")
    variable = variable or (data.variable if data is not None and corruption == "str" else None)
    cm = task.causal_model
    if corruption == "str":
        if variable is None:
            raise ValueError("corruption='str' needs variable= (its counterfactual sources are the corrupted "
                             "prompts) or data=")
        if variable not in cm.variables:
            raise ValueError(f"unknown variable '{variable}'; the causal model's variables are {list(cm.variables)}")
        if noise_positions is not None or contrast is not None:
            raise ValueError("noise_positions and contrast belong to corruption='gn'; STR's r' is the corrupted "
                             "prompt's own answer")
    else:
        noise_positions = noise_positions or list(task.noise_positions)
        contrast = task.contrast if contrast is None else contrast
        if not noise_positions:
            raise ValueError("corruption='gn' needs noise_positions: the task roles whose embeddings are noised, "
                             f"from {sorted(k for k in task.positions if k != 'last')} (a task may name them "
                             "in task.noise_positions)")
        if contrast is None or (isinstance(contrast, str) and contrast not in cm.variables):
            raise ValueError("corruption='gn' needs contrast=: the answer r' the logit difference counts against, "
                             f"a causal-model variable (one of {list(cm.variables)}; IOI: 'subject') or a function "
                             f"of every variable's value; got {contrast!r}")
    measure = _metric(metric, direction, corruption, variable)
    check_count("window", window, 1, "consecutive layers patched at once")
    if window > 1 and component == "heads":
        raise ValueError("windows over layers patch whole components; component='heads' takes window=1")
    if method == "attribution" and (metric == "iia" or window > 1):
        raise ValueError("method='attribution' linearises a differentiable metric of the logits at single "
                         "layers: use metric='logit_diff', 'prob' or 'kl' with window=1, or method='exact'"
                         + (" (IIA counts argmax agreements, which have no gradient)" if metric == "iia" else ""))
    adapter = as_adapter(model)
    layers = _layers(layers, adapter)
    if component == "heads" and getattr(adapter, "n_heads", None) is None:
        raise ValueError(f"component='heads' needs a transformer adapter with attention heads, got {type(adapter).__name__}")
    ask = 2 * n if filter_correct else n
    if corruption == "str":
        datasets = [data] if data is not None else _str_sets(task, variable, ask, seed)
        pairs = _str_pairs(task, datasets, direction)
    else:
        settings = list(data.bases) if data is not None else cm.sample(ask, seed=seed)
        pairs = [_gn_pairs(adapter, task, settings, noise_positions, contrast, seed)]
    summed = component == "heads" and positions is None
    positions = _positions(positions, component, [b for p in pairs for b in (p.clean, p.corrupt)])
    groups = _groups(adapter, COMPONENTS[component], layers, positions, window, summed)
    sites = list(dict.fromkeys(s for _, group in groups for s in group))
    engine = Engine(adapter, batch_size=batch_size)
    tests, grads, reports = {}, {}, {}
    for p in pairs:
        split, report, grads[p.name] = _split(engine, task, p, sites, direction, metric == "iia", filter_correct,
                                              corruption, n, measure if method == "attribution" else None)
        _check_gap(split, p.name, measure, direction)
        tests[p.name], reports[p.name] = split, [report, f"pairs patched: {len(split)}"]
    meta = {"model": type(adapter.module).__name__, "task": task.name, "variable": variable,
            "corruption": corruption, "metric": measure.name, "metric_choice": metric, "direction": direction,
            "component": component, "method": method, "layers": layers,
            "positions": ["all"] if summed else [str(p) for p in positions], "n": n,
            "seed": seed, "filter_correct": filter_correct, "lower_is_better": False, "data": reports,
            **({"noise_positions": list(noise_positions), "noise_std": NOISE_SCALE * adapter.embedding_std,
                "contrast": getattr(contrast, "__name__", str(contrast))} if corruption == "gn" else {})}
    results = PatchingResults(meta=meta)
    settings_cols = {"component": component, "corruption": corruption, "metric": metric, "direction": direction,
                     "method": method, "window": window, "filter_correct": filter_correct}
    name = variable or corruption
    if window > 1:
        warnings.warn(PatchingWarning(
            f"window={window} patches {window} consecutive layers at once: windows exaggerate localization (a "
            "window scores high when any of its layers matters, and neighbouring windows share layers); read "
            "window=1 beside it"), stacklevel=2)
    if method == "attribution":
        results.rows = [{**row, **settings_cols} for row in _attribution_rows(tests, grads, groups, measure, name)]
        return results
    if all(len(group) == 1 for _, group in groups):
        first = next(iter(tests.values()))
        prepared = SweepData(engine, first, None, tests, [measure], n_train=0)
        cells = [Cell(name, Neurons(), group[0]) for _, group in groups]
        for result in as_executor(executor).run(cells, prepared, None, progress,
                                                            desc=f"patch {corruption} {direction} {component}"):
            results.rows += [{**row, "head": result.cell.site.head, **settings_cols} for row in result.rows]
        return results
    for label, group in tqdm(groups, desc=f"patch {corruption} {direction} {component}", disable=not progress):
        results.rows += [{**row, **settings_cols} for row in _joint_rows(adapter, tests, group, label, measure, name)]
    return results


def _groups(adapter, kind: str, layers: list[int], positions: list, window: int, summed: bool,
            ) -> list[tuple[dict, list[Site]]]:
    """What each cell writes: (its labels — layer, position, head — and its sites, patched together): one
    site; ``window`` consecutive layers at one position (layer "3-5"); or, ``summed``, one head at every
    token index (position "all")."""
    heads = range(adapter.n_heads) if kind == "head" else [None]
    groups = []
    for layer in layers:
        span = list(range(layer, min(layer + window, adapter.n_layers)))
        label = layer if window == 1 else f"{span[0]}-{span[-1]}"
        for h in heads:
            if summed:
                groups.append(({"layer": label, "position": "all", "head": h}, [Site(layer, p, kind, h) for p in positions]))
                continue
            groups += [({"layer": label, "position": p, "head": h}, [Site(x, p, kind, h) for x in span])
                       for p in positions]
    return groups


def _attribution_rows(tests: dict[str, Split], grads: dict[str, dict], groups, metric: Metric,
                      variable: str) -> list[dict]:
    """Attribution patching's rows: per set and cell, the metric of the linearised patched scores
    ``score_* + Σ_sites (a_src − a_base) · ∂score/∂a`` (the unpatched base's scores, plus each of the
    cell's sites' first-order change), with its bootstrap interval, beside the no-effect baseline."""
    rows = []
    for name, split in tests.items():
        out = outcome(split, logits=split.base_out)
        unpatched = metric.score(out).double()
        for label, group in groups:
            change = sum(((split.sources[s] - split.bases[s]).double() * grads[name][s].double()).sum(-1)
                         for s in group)
            rows.append({"variable": variable, "featurizer": "full_vector", **label, "dataset": name,
                         **metric.columns(out, scores=unpatched + change), "baseline": baseline(split, metric)})
    return rows


@torch.no_grad()
def _joint_rows(adapter, tests: dict[str, Split], sites: Sequence[Site], label: dict, metric: Metric,
                variable: str) -> list[dict]:
    """One row per set for a cell that writes several sites at once (a window of layers, a head at every
    token index): each site written with the source's activation, by hooks over one whole forward per
    chunk (a ``Cell`` of the executor holds one site)."""
    rows = []
    for name, split in tests.items():
        logits = []
        for batch, chunk in zip(split.prepared.batches, split.prepared.slices):
            idx = torch.arange(len(batch), device=adapter.device)

            def writer(site):  # h: [b, seq, d] -> the source's activation [b, d] at the site's position
                src, pos = split.sources[site][chunk].to(adapter.device), batch.position(site.position).to(adapter.device)
                return lambda h: h.index_put((idx, pos), src.to(h.dtype))
            handles = [adapter.hook(s, writer(s)) for s in sites]
            try:
                logits.append(adapter.forward(batch).float().cpu())
            finally:
                for h in handles:
                    h.remove()
        out = outcome(split, logits=torch.cat(logits))
        rows.append({"variable": variable, "featurizer": "full_vector", **label, "dataset": name,
                     **metric.columns(out), "baseline": baseline(split, metric)})
    return rows


class PatchingResults(Results):
    """``Results`` of ``patch``: one row per (set, component, layer, position or head), the settings in every
    row and in ``meta``, and figures whose titles say the corruption, the metric and the direction."""

    @property
    def columns(self) -> list[str]:
        return (["component", "layer", "position", "head", self.metric, "n", "ci_low", "ci_high"]
                + (["baseline"] if any("baseline" in row for row in self.rows) else []))

    @property
    def title(self) -> str:
        """The settings, for figure titles: e.g. "STR · logit_diff_norm · denoise · resid"."""
        m = self.meta
        title = f"{m['corruption'].upper()} · {m['metric']} · {m['direction']} · {m['component']}"
        title += " · attribution" if m.get("method") == "attribution" else ""
        return title + (" · filter_correct" if m.get("filter_correct") else " · every pair")

    def grid(self, value: str | None = None):
        """``value`` (default: the metric) as a DataFrame: layers × positions, or layers × heads for heads
        (the mean over counterfactual sets)."""
        t = self.table
        across = "head" if self.meta["component"] == "heads" else "position"
        t = t.assign(position=position_labels(t["position"]))
        return t.pivot_table(index="layer", columns=across, values=value or self.metric, aggfunc="mean", sort=False)

    def heatmap(self, path=None, value: str | None = None, title: str | None = None):
        """The grid (``grid``) as one heatmap, each cell's value written in it, titled with the settings;
        saved to ``path`` when given. Returns the matplotlib figure."""
        grid = self.grid(value)
        fig, ax = pyplot().subplots(figsize=_size(grid), constrained_layout=True)
        _panel(fig, ax, grid, title or self.title, value or self.metric)
        return saved(fig, path)


def difference(a: PatchingResults, b: PatchingResults):
    """``a``'s grid minus ``b``'s (layers × positions or heads): the same metric and the same cells, else an
    error saying what differs."""
    if a.metric != b.metric:
        raise ValueError(f"cannot compare {a.metric} with {b.metric}: patch both with the same metric")
    ga, gb = a.grid(), b.grid()
    if list(ga.index) != list(gb.index) or list(ga.columns) != list(gb.columns):
        raise ValueError(f"the two results patch different cells: layers {list(ga.index)} × {list(ga.columns)} "
                         f"against {list(gb.index)} × {list(gb.columns)}")
    return ga - gb


def compare(a: PatchingResults, b: PatchingResults, path=None):
    """Two patching settings side by side with their difference ``a − b`` (e.g. GN against STR, which single
    out different layers): three heatmaps titled with each one's settings. Saved to ``path`` when given;
    returns the matplotlib figure."""
    diff = difference(a, b)
    w, h = _size(diff)
    fig, axes = pyplot().subplots(1, 3, figsize=(3 * w, h), constrained_layout=True)
    _panel(fig, axes[0], a.grid(), a.title, a.metric)
    _panel(fig, axes[1], b.grid(), b.title, b.metric)
    _panel(fig, axes[2], diff, "difference (left − middle)", f"Δ {a.metric}", centred=True)
    return saved(fig, path)


def _size(grid) -> tuple[float, float]:
    return 1.6 + 0.55 * grid.shape[1], 1.2 + 0.3 * max(4, grid.shape[0])


def _panel(fig, ax, grid, title: str, label: str, centred: bool = False) -> None:
    """``grid`` (a layers × columns DataFrame) as a heatmap on ``ax`` with its values written in; diverging
    colours around 0 when ``centred``, else from min(0, ·) to max(1, ·)."""
    values = grid.to_numpy(dtype=float)
    if centred:
        top = max(abs(float(values.min())), abs(float(values.max())), 1e-9)
        limits = dict(cmap="RdBu_r", vmin=-top, vmax=top)
    else:
        limits = dict(cmap="viridis", vmin=min(0.0, float(values.min())), vmax=max(1.0, float(values.max())))
    im = grid_panel(ax, values, list(grid.index), list(grid.columns), xlabel=str(grid.columns.name), **limits)
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label=label)
