"""Dictionaries against supervised ones: Makelov, Lange & Nanda's three tests at one site (``REFERENCE.md`` §3).

For every dictionary (a featurizer: neurons, PCA, an SAE, DAS, a supervised dictionary, ...) at a site:

- **approximation**: *sufficiency* — the task's logit difference LD = logit(r) − logit(r′) with the
  reconstruction ``â`` written in, ``mean LD_â / mean LD_clean``; *necessity* — with ``E[a] + (a − â)``
  written in, ``1 − |mean LD_ablated − mean LD| / |mean LD_ablated − mean LD_clean|`` (``E[a]``: the mean
  activation of the fit prompts, written in alone for LD_ablated);
- **control**: edit attribute i from v to v′ on each test prompt and score the agreement of the
  prediction with the real counterfactual patch (the activation of the prompt with the attribute changed,
  written at the site), and the share of the patch's change of LD the edit reproduces. A supervised
  dictionary removes feature (i, v) and adds (i, v′); other dictionaries change at most k features, chosen
  greedily to bring the base's features closest to the target's; those trained by interventions (DAS,
  DBM) are trained for each attribute and edit by their own interchange. Each edit's magnitude is the
  share of the base reconstruction's weight it removes (weights ``f_i u_iᵀ(â − b) / ‖â − b‖²``, ``b`` = the
  reconstruction of zero features, summing to 1);
- **interpretability**: the F1 score of each feature's active set (f > 0) against each attribute value;
  the best-matching feature per value; *occlusion* (an attribute whose real patch moves LD, that no
  feature covers) and *over-splitting* (an attribute whose values are each split over several precise
  features, none covering) flagged.

A thin layer over the sweep: every scored intervention is a ``Cell`` of the full-vector write
(``Neurons()``) whose source is the activation the test writes (as in ``patching``), handed to the executor,
so it runs batched with the engine's suffix execution and key/value reuse.
"""
from __future__ import annotations

import numbers
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from featurizers import Featurizer, FeaturizerError, Neurons, SupervisedDictionary

from .counterfactuals import CounterfactualDataset
from .engine import Engine
from .metrics import Metric, MetricError, logit_diff, percentile_interval, resample_rows
from .models import as_adapter
from .models.base import Batch
from .results import Results
from .sites import Site
from .splits import Split, warn_no_effect
from .executors import as_executor
from .sweep import Cell, SweepData, cell_featurizer, trained
from .train import check_count, check_training, train

#: an attribute value is covered by a feature whose F1 against it reaches this (the paper's usual threshold)
F1_COVER = 0.8
#: below this best F1 no feature covers an attribute: occluded, where the attribute matters
F1_CAUSAL = 0.6
#: a feature is about a value when at least this share of the prompts it fires on show the value
PRECISE = 0.8
#: an attribute matters when its real patch moves LD by at least this share of mean |LD_clean|
MATTERS = 0.1
#: over-split: at least this many precise features per value, none of them covering it
SPLIT = 2.0


class DictionaryError(ValueError):
    """An evaluation of dictionaries that cannot run as asked, said in the user's terms."""


# ------------------------------------------------------------------------------------------ metrics
def _bootstrap(value: Callable, arrays: Sequence[torch.Tensor], confidence: float, resamples: int = 1000):
    """The ``confidence`` percentile interval of ``value(*arrays resampled by row)``."""
    boot = torch.stack([value(*(a.double()[i] for a in arrays)) for i in resample_rows(len(arrays[0]), resamples)])
    return percentile_interval(boot, confidence)


class _LD(Metric):
    """Per-row ``LD = logit[r] − logit[r′]`` ``[n]`` of the written-in run, with fixed answer ids ``r, r2: [n]``."""

    def __init__(self, r: torch.Tensor, r2: torch.Tensor, clean: torch.Tensor, ablated: torch.Tensor):
        self.r, self.r2, self.clean, self.ablated = r, r2, clean.double(), ablated.double()

    def score(self, out) -> torch.Tensor:
        return logit_diff(out.need("logits", self).float(), self.r, self.r2).cpu()

    def value(self, scores, out) -> float:
        return float(self._ratio(scores.double(), self.clean, self.ablated))

    def interval(self, scores, out, confidence=0.95):
        return _bootstrap(self._ratio, [scores, self.clean, self.ablated], confidence)


class Sufficiency(_LD):
    """``mean LD / mean LD_clean``: 1 when the written-in reconstruction keeps the clean logit difference."""

    name = "sufficiency"

    @staticmethod
    def _ratio(ld, clean, ablated):
        if abs(float(clean.mean())) < 1e-9:
            raise MetricError("the clean runs' mean logit difference is 0: sufficiency is undefined; choose "
                              "another contrast answer")
        return ld.mean() / clean.mean()


class Necessity(_LD):
    """``1 − |mean LD_ablated − mean LD| / |mean LD_ablated − mean LD_clean|``: 1 when writing
    ``E[a] + (a − â)`` behaves like the mean ablation (the error carries nothing), 0 when it behaves like the clean run."""

    name = "necessity"

    @staticmethod
    def _ratio(ld, clean, ablated):
        gap = ablated.mean() - clean.mean()
        if abs(float(gap)) < 1e-9:
            raise MetricError("the mean ablation leaves the mean logit difference as it is: necessity is "
                              "undefined at this site")
        return 1 - (ablated.mean() - ld.mean()).abs() / gap.abs()


class EditLD(_LD):
    """``1 − mean |LD − LD_patch| / mean |LD_clean − LD_patch|``: the share of the real patch's change of the
    logit difference that the edit reproduces, row by row (1: all of it, 0: no more than no edit). Reads
    where an attribute moves the logit difference without flipping the answer, which the agreement of
    predictions cannot see. ``ablated`` holds LD_patch here."""

    name = "edit_ld"

    @staticmethod
    def _ratio(ld, clean, patch):
        moved = (clean - patch).abs().mean()
        if float(moved) < 1e-9:
            raise MetricError("the real counterfactual patch leaves every logit difference as it is: there is no "
                              "change for an edit to reproduce")
        return 1 - (ld - patch).abs().mean() / moved


class EditAgreement(Metric):
    """Bool ``[n]``: the edited run predicts what the real counterfactual patch predicts (``reference: [n]``)."""

    name = "edit_accuracy"

    def __init__(self, reference: torch.Tensor):
        self.reference = reference

    def score(self, out) -> torch.Tensor:
        return out.need("logits", self).argmax(-1).cpu() == self.reference


# ------------------------------------------------------------------------------------------ checks
def _check_attributes(cm, attributes) -> list[str]:
    attributes = [attributes] if isinstance(attributes, str) else list(attributes or [])
    if not attributes:
        raise DictionaryError(f"attributes must name the causal model's variables to evaluate, e.g. "
                              f"{list(cm.variables)[:3]}")
    for a in attributes:
        if a not in cm.variables:
            raise DictionaryError(f"unknown attribute {a!r}; the causal model's variables are {list(cm.variables)}")
        if a == cm.output:
            raise DictionaryError(f"{a!r} is the causal model's output; attributes are the variables it is "
                                  "computed from")
    if len(set(attributes)) != len(attributes):
        raise DictionaryError(f"attributes repeat: {attributes}")
    return attributes


def _check_dictionaries(dictionaries) -> dict[str, Featurizer]:
    items = (list(dictionaries.items()) if isinstance(dictionaries, Mapping)
             else [(getattr(f, "name", None), f) for f in ([dictionaries] if isinstance(dictionaries, Featurizer)
                                                          else list(dictionaries or []))])
    if not items:
        raise DictionaryError("dictionaries is empty; pass featurizers, e.g. [SupervisedDictionary(), SAE(k=16), "
                              "Neurons()]")
    for label, f in items:
        if isinstance(f, type):
            raise DictionaryError(f"dictionary {f.__name__} is a class; pass an instance, e.g. {f.__name__}()")
        if not isinstance(f, Featurizer):
            raise DictionaryError(f"dictionaries must be featurizers (e.g. SAE(k=16), Neurons()), got {f!r}")
        if trained(f):
            raise DictionaryError(f"{label} is already trained; dictionaries that learn from interventions are "
                                  "trained here for each attribute: pass an untrained one (featurizer.clone())")
    labels = [label for label, _ in items]
    if len(set(labels)) != len(labels):
        raise DictionaryError(f"dictionaries need distinct names, got {labels}; pass {{name: featurizer}} to name "
                              "them (e.g. a task-trained and a generic SAE)")
    return dict(items)


def _check_site(site, adapter) -> Site:
    if isinstance(site, tuple):
        site = Site(*site)
    if not isinstance(site, Site):
        raise DictionaryError(f"site must be a cv.Site (e.g. cv.Site(18, 's2')) or a (layer, position) pair, "
                              f"got {site!r}")
    adapter.module_path(site)  # a layer outside the model: an error naming its blocks
    return site


def _contrast(task, contrast, values: list[dict], clean: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """r′ ``[n]``: the answer ids the logit difference counts against."""
    if contrast is None:  # the clean run's best class other than the answer
        return clean.float().scatter(1, r[:, None], float("-inf")).argmax(-1)
    if isinstance(contrast, str):
        return task.targets([v[contrast] for v in values])
    return task.targets([contrast(v) for v in values])


# ------------------------------------------------------------------------------------------ edits
def _single_input_edit(cm, attribute: str, others: Sequence[str]) -> Callable:
    """A generator ``(base, rng) -> source``: the base with one input changed so that ``attribute`` changes
    and ``others`` keep their values (inputs in random order, values in random order, those no other input
    holds first, so two names stay distinct); ``None`` when no single-input change does it."""
    def edit(base, rng):
        run = cm.run(base)
        for name in rng.sample(list(cm.inputs), len(cm.inputs)):
            taken = [v for k, v in base.items() if k != name]
            free = [v for v in cm.inputs[name] if v not in taken]
            held = [v for v in cm.inputs[name] if v in taken]
            for value in rng.sample(free, len(free)) + rng.sample(held, len(held)):
                if value == base[name]:
                    continue
                new = cm.run({**base, name: value})
                if new[attribute] != run[attribute] and all(new[o] == run[o] for o in others):
                    return {**base, name: value}
        return None
    return edit


def _targets(cm, attribute: str, attributes: Sequence[str], bases: list[dict], gen, rng) -> list[dict]:
    """The edited prompt of each base: ``attribute`` changed, the other attributes kept (refused otherwise)."""
    others = [a for a in attributes if a != attribute]
    given = gen is not None
    gen = gen or _single_input_edit(cm, attribute, others)
    out = []
    for i, b in enumerate(bases):
        t = gen(dict(b), rng)
        if t is None and given:
            raise DictionaryError(f"the edit generator of attribute {attribute!r} returned None on example {i} "
                                  f"{dict(b)}; it must return the base's inputs with that attribute changed")
        if t is None:
            raise DictionaryError(f"no change of a single input edits attribute {attribute!r} alone in example {i} "
                                  f"{dict(b)}; pass edits={{{attribute!r}: generator}}, a function (base, rng) -> "
                                  "the base with that attribute changed")
        t = {k: t[k] for k in cm.inputs}
        vb, vt = cm.run(b), cm.run(t)
        changed = [o for o in others if vb[o] != vt[o]]
        if vb[attribute] == vt[attribute] or changed:
            what = (f"leaves {attribute!r} at {vb[attribute]!r}" if vb[attribute] == vt[attribute]
                    else f"also changes {changed}")
            raise DictionaryError(f"the edit of attribute {attribute!r} {what} on example {i} {dict(b)} -> {t}; an "
                                  "edit changes that attribute alone")
        out.append(t)
    return out


def _values(cm, settings: list[dict], attributes: Sequence[str]) -> dict[str, list]:
    runs = [cm.run(s) for s in settings]
    return {a: [v[a] for v in runs] for a in attributes}


def _check_supervised(dicts: dict[str, Featurizer], fit: dict[str, list], others: list[dict[str, list]],
                      n_fit: int) -> None:
    """Every value of the test and edited prompts must have an atom in every supervised dictionary: occur
    among the fit prompts (one to be fitted here), or among its atoms (one fitted before)."""
    for label, f in dicts.items():
        if not isinstance(f, SupervisedDictionary):
            continue
        for a, seen in fit.items():
            if f.fitted:
                try:
                    known = {f.values_[i] for i in f.atoms_of(a)}
                except FeaturizerError as e:
                    raise DictionaryError(f"dictionary {label}: {e}") from e
                where = f"{label}'s atoms"
            else:
                known, where = set(seen), f"the n_fit={n_fit} fit prompts"
            missing = sorted({repr(v) for vals in others for v in vals[a] if v not in known})
            if missing:
                raise DictionaryError(f"attribute {a!r} takes the values {missing[:5]} on test or edited prompts, but "
                                      f"never on {where}, so {label} has no atom for them; raise n_fit")


# ------------------------------------------------------------------------------------------ features
def _atoms(feat: Featurizer, f: torch.Tensor) -> torch.Tensor:
    """``W: [K, d]`` with ``decode(f, 0) = decode(0, 0) + f W`` (checked on the rows ``f: [n, K]``)."""
    K, d = f.shape[-1], feat.d
    zero = torch.zeros(1, d)
    b = feat.decode(torch.zeros(1, K), zero)
    W = torch.cat([feat.decode(rows, zero.expand(len(rows), d)) - b for rows in torch.eye(K).split(1024)])
    recon = feat.decode(f, torch.zeros(len(f), d))
    if not torch.allclose(b + f @ W, recon, atol=1e-3 * max(1.0, float(recon.abs().max())), rtol=0):
        raise DictionaryError(f"{feat.name}'s decode is not affine in its features; the greedy edit needs atoms")
    return W


def _coding(feat: Featurizer, h: torch.Tensor, values: dict[str, list]) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``[n, K]`` and error ``[n, d]`` of ``h: [n, d]``: a supervised dictionary's code of the
    known values, every other dictionary's ``encode``."""
    if isinstance(feat, SupervisedDictionary):
        f = feat.code(values)
        return f, h - feat.decode(f, torch.zeros_like(h))
    return feat.encode(h)


def _greedy(delta: torch.Tensor, W: torch.Tensor, target: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Masks ``[n, K]`` after 1..k greedy steps: at each step the feature whose change ``delta_i W_i`` (from
    the base's value to the target's) best reduces ``‖Σ_chosen delta_i W_i − target‖`` (``target = h_t −
    h_b``); a row stops when no change helps."""
    res, norms = target.clone(), (W * W).sum(-1)
    mask = torch.zeros_like(delta, dtype=torch.bool)
    rows, masks = torch.arange(len(delta)), []
    for _ in range(k):
        gain = 2 * delta * (res @ W.T) - delta ** 2 * norms
        gain[mask] = float("-inf")
        best, i = gain.max(-1)
        go = best > 1e-9 * (target * target).sum(-1).clamp(min=1e-12)
        mask = mask.clone()
        mask[rows[go], i[go]] = True
        res = res - torch.where(go[:, None], delta[rows, i][:, None] * W[i], torch.zeros_like(res))
        masks.append(mask)
    return masks


def _magnitude(f_b: torch.Tensor, W: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row ``[n]``: the share of the base reconstruction's weight on the masked features."""
    s = f_b @ W  # â − b: [n, d]
    weight = f_b * (s @ W.T) / (s * s).sum(-1, keepdim=True).clamp(min=1e-12)
    return (weight * mask).sum(-1)


def _f1_tables(f: torch.Tensor, values: dict[str, list]) -> dict[str, dict]:
    """Per attribute: F1, precision and recall ``[K, V]`` of each feature's active set (f > 0) against each
    value's prompts, and the values."""
    active = (f > 1e-6 * float(f.abs().max().clamp(min=1e-12))).double()  # [n, K]: f > 0 up to rounding
    out = {}
    for a, vals in values.items():
        distinct = sorted(set(vals), key=lambda v: (str(type(v)), v))
        P = torch.tensor([[v == u for u in distinct] for v in vals], dtype=torch.float64)  # [n, V]
        hit = active.T @ P  # [K, V]
        n_act, n_val = active.sum(0)[:, None], P.sum(0)[None, :]
        out[a] = {"values": distinct, "f1": 2 * hit / (n_act + n_val).clamp(min=1),
                  "precision": hit / n_act.clamp(min=1), "recall": hit / n_val.clamp(min=1)}
    return out


# ------------------------------------------------------------------------------------------ runs
@dataclass
class _Site:
    """What every test at the site reads: the engine; the test split (bases prepared once, their activations
    ``h: [n, d]``); each attribute's edited activations ``h_t[a]: [n, d]`` and the real patch's logits
    ``patched[a]``; the fit prompts' mean activation ``mean: [d]`` and the logits with it written in
    (``ablated``); the answer ids ``r, r2: [n]``; from them the clean and mean-ablated logit differences
    ``ld_clean, ld_ablated: [n]``."""

    engine: Engine
    split: Split
    site: Site
    h: torch.Tensor
    h_t: dict
    patched: dict
    mean: torch.Tensor
    ablated: torch.Tensor
    r: torch.Tensor
    r2: torch.Tensor
    executor: object
    progress: bool
    ld_clean: torch.Tensor = field(init=False)
    ld_ablated: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.ld_clean, self.ld_ablated = self.ld(self.split.base_out), self.ld(self.ablated)

    def ld(self, logits: torch.Tensor) -> torch.Tensor:
        """``logit[r] − logit[r2]`` ``[n]``."""
        return logit_diff(logits.float(), self.r, self.r2).cpu()

    def scored(self, kind: str, metrics: Sequence[Metric], writes: dict) -> dict:
        """Each activation of ``writes`` ({key: [n, d]}) written at the site into the bases: one cell of the
        full-vector write, with one test split per key, run by the executor; ``{key: its row}`` (the first
        metric's value, n, interval and no-effect baseline, the others' values and intervals)."""
        tests = {key: replace(self.split, sources={self.site: h}) for key, h in writes.items()}
        data = SweepData(self.engine, self.split, None, tests, list(metrics), n_train=0)
        (result,) = list(self.executor.run([Cell(kind, Neurons(), self.site)], data, None, self.progress, desc=kind))
        return {row["dataset"]: row for row in result.rows}


def _row(dictionary, attribute, test, value, n, lo=None, hi=None, baseline=None, **extra) -> dict:
    return {"dictionary": dictionary, "attribute": attribute, "test": test, "value": value, "n": n,
            "ci_low": lo, "ci_high": hi, "baseline": baseline, **extra}


def _from(row: dict, name: str, dictionary: str, attribute, test: str, **extra) -> dict:
    return _row(dictionary, attribute, test, row[name], row["n"], row["ci_low"], row["ci_high"], row["baseline"],
                **extra)


def _check_k(edit_k) -> list[int]:
    ks = [edit_k] if isinstance(edit_k, numbers.Integral) else list(edit_k or [])
    if not ks or not all(isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 1 for k in ks):
        raise DictionaryError(f"edit_k must be positive ints (the most features an edit changes), got {edit_k!r}")
    return sorted(set(int(k) for k in ks))


def _ready(dicts: dict[str, Featurizer], d: int, site: Site) -> dict[str, Featurizer]:
    """Each dictionary as it will be scored (a fitted one as is, else a fresh clone), built for size ``d``;
    one that cannot act on the site is refused."""
    out = {}
    for label, f in dicts.items():
        g = cell_featurizer(f)
        try:
            g.build(d)
        except ValueError as e:
            raise DictionaryError(f"dictionary {label} cannot act on site {site}, whose activations have size {d}: "
                                  f"{e}") from e
        out[label] = g
    return out


def _trained(engine: Engine, task, feat: Featurizer, site: Site, attribute: str, fit: tuple, sources: list[dict],
             seed: int, epochs: int, lr: float, train_batch_size: int, progress: bool) -> Featurizer:
    """A clone of ``feat`` trained with the interchange objective on the pairs (fit prompt, the prompt with
    ``attribute`` edited), labelled by the causal model. ``fit``: the fit prompts, their logits, activations
    ``[n, d]`` at the site and prepared rows (captured once for every attribute)."""
    cm, out = task.causal_model, task.causal_model.output
    bases, base_out, h_fit, whole = fit
    ds = CounterfactualDataset(attribute, list(bases), list(sources),
                               [cm.interchange(b, {attribute: s})[out] for b, s in zip(bases, sources)],
                               [cm.run(b)[out] for b in bases], [cm.run(s)[out] for s in sources], name="edits")
    warn_no_effect(attribute, [ds], out)
    src_out, src_acts = engine.capture(task.encode(sources), [site])
    n = len(bases)
    split = Split(task, engine.take(whole, torch.arange(n), train_batch_size), {site: src_acts[site]}, {site: h_fit},
                  ds.labels, ds.base_labels, [None] * n, [None] * n, list(range(n)), base_out, src_out)
    torch.manual_seed(seed)
    g = feat.clone().build(h_fit.shape[-1])
    if g.learns_from_activations:
        g.fit_activations(torch.cat([h_fit, src_acts[site]]))
    train(engine, g, site, split, None, epochs=epochs, lr=lr, seed=seed, progress=progress,
          desc=f"train {g.name} for {attribute}")
    return g


def _approximation(at: _Site, codes: dict) -> list[dict]:
    """Sufficiency (the reconstruction ``h − err`` written in) and necessity (``E[a] + err``) of each dictionary."""
    if not codes:
        return []
    args = (at.r, at.r2, at.ld_clean, at.ld_ablated)
    suff = at.scored("sufficiency", [Sufficiency(*args)], {label: at.h - e for label, (_, e) in codes.items()})
    nec = at.scored("necessity", [Necessity(*args)], {label: at.mean + e for label, (_, e) in codes.items()})
    return [r for label in codes for r in (_from(suff[label], "sufficiency", label, None, "sufficiency"),
                                           _from(nec[label], "necessity", label, None, "necessity"))]


def _control(at: _Site, a: str, feats: dict, codes: dict, per_attribute: dict, target_vals: dict, ks) -> list[dict]:
    """Every dictionary's edit of attribute ``a`` (supervised: one feature out, one in; greedy: at most k
    features; trained by interventions: its interchange), scored against the real patch; and its magnitude."""
    h, h_t = at.h, at.h_t[a]
    writes, magnitudes, kinds = {}, {}, {}
    for label, f in feats.items():
        if label not in codes:  # trained for this attribute: its own interchange
            g = per_attribute[label, a].eval()
            fb = g.encode(h)[0]
            m = g.mask()
            m = torch.ones(fb.shape[-1], dtype=torch.bool) if m is None else m.cpu()
            key = (label, int(m.sum()))
            writes[key], kinds[key] = g.interchange(h, h_t), "interchange"
            magnitudes[key] = _magnitude(fb, _atoms(g, fb), m.expand_as(fb))
            continue
        fb, eb = codes[label]
        W = _atoms(f, fb)
        if isinstance(f, SupervisedDictionary):
            ft = f.code(target_vals)
            steps, kind = {2: fb != ft}, "supervised"
        else:
            ft = f.encode(h_t)[0]
            masks = _greedy(ft - fb, W, h_t - h, max(ks))
            steps, kind = {k: masks[k - 1] for k in ks}, "greedy"
        for k, m in steps.items():
            writes[label, k] = f.decode(torch.where(m, ft, fb), eb)
            magnitudes[label, k], kinds[label, k] = _magnitude(fb, W, m), kind
    agree = [EditAgreement(at.patched[a].argmax(-1)), EditLD(at.r, at.r2, at.ld_clean, at.ld(at.patched[a]))]
    rows, n = [], len(h)
    for (label, k), row in at.scored(f"edit {a}", agree, writes).items():
        mag = magnitudes[label, k].double()
        half = 1.96 * float(mag.std()) / n ** 0.5 if n > 1 else float("inf")
        rows += [_from(row, "edit_accuracy", label, a, f"edit_accuracy@{k}", k=k, edit=kinds[label, k]),
                 _row(label, a, f"edit_ld@{k}", row["edit_ld"], n, row["edit_ld_ci_low"], row["edit_ld_ci_high"],
                      0.0, k=k, edit=kinds[label, k]),
                 _row(label, a, f"edit_magnitude@{k}", float(mag.mean()), n, float(mag.mean()) - half,
                      float(mag.mean()) + half, k=k, edit=kinds[label, k])]
    return rows


def _interpretability(codes: dict, values: dict[str, list], effect: dict, n: int) -> tuple[list[dict], list[dict]]:
    """Per (dictionary, attribute): the mean best F1 over the attribute's values, the precise features per
    value, the occlusion and over-splitting flags; and the best-matching feature of every value."""
    rows, matches = [], []
    for label, (fb, _) in codes.items():
        for a, t in _f1_tables(fb, values).items():
            best, feature = t["f1"].max(0)  # per value [V]
            f1 = float(best.mean())
            precise = float(((t["precision"] >= PRECISE) & (t["recall"] >= 0.05)).sum(0).double().mean())
            rows += [_row(label, a, "f1", f1, n), _row(label, a, "features", precise, n),
                     _row(label, a, "occluded", float(effect[a] >= MATTERS and f1 < F1_CAUSAL), n),
                     _row(label, a, "over_split", float(f1 < F1_COVER and precise >= SPLIT), n)]
            matches += [{"dictionary": label, "attribute": a, "value": v, "feature": int(j), "f1": float(best[i]),
                         "precision": float(t["precision"][j, i]), "recall": float(t["recall"][j, i])}
                        for i, (v, j) in enumerate(zip(t["values"], feature.tolist()))]
    return rows, matches


@torch.no_grad()
def evaluate_dictionaries(model, task, site, attributes: str | Sequence[str],
                          dictionaries: Featurizer | Sequence[Featurizer] | Mapping[str, Featurizer],
                          n_fit: int, n_test: int, edit_k: int | Sequence[int] = (2, 4, 6), seed: int = 0,
                          edits: Mapping[str, Callable] | None = None, contrast: str | Callable | None = None,
                          batch_size: int = 64, epochs: int = 2, lr: float = 1e-2, train_batch_size: int = 32,
                          progress: bool = True, executor=None) -> "DictionaryResults":
    """Makelov et al.'s three tests of each dictionary at ``site``, against supervised ones (module doc).

    Args:
        model: a torch module, an adapter (``cv.load_model(...)``) or a model name. task: a ``cv.Task`` or
            ``cv.PromptTask`` whose network answers with its logits.
        site: a ``cv.Site`` (e.g. ``cv.Site(18, "s2")``) or a (layer, position) pair.
        attributes: the causal model's variables to test (IOI: ``output_token`` — the IO's name,
            ``subject`` — the S name, ``output_position`` — the order).
        dictionaries: featurizers (``[SupervisedDictionary(), SAE(k=16), Neurons(), PCA(), DAS(dim=32)]``), or
            ``{name: featurizer}`` to name them. Unfitted ones are fitted on the fit prompts' activations at the
            site (supervised ones with the attributes' values; an SAE is trained by sae-lens); fitted ones
            (an SAE trained on ``generic_activations``, one loaded from disk) are scored as they are; those
            that learn from interventions (DAS, DBM) are trained for each attribute on the fit prompts' edits
            (``epochs``, ``lr``, ``train_batch_size``: AdamW on the featurizer, the task's objective).
        n_fit, n_test: prompts drawn from the causal model (``seed``) to fit on and to test on.
        edit_k: the most features a greedy edit changes (one row per k).
        edits: ``{attribute: generator}``, a function ``(base, rng) -> the base's inputs with that attribute
            changed`` and the other attributes kept; default: the task's ``edits`` where it has them, else the
            first change of a single input that does it (to a value no other input holds where there is one).
        contrast: r′ of the logit difference: a causal-model variable (IOI: ``"subject"``), a function of a
            prompt's variable values giving an output value; default: the task's ``contrast`` where it names
            one, else the clean run's best class other than the answer.
        batch_size: rows per forward. executor: runs the cells (``None``: in this process; ``"ray"``, ...).
    Returns: ``DictionaryResults``: ``table`` (dictionary, attribute, test, value, n, ci_low, ci_high, baseline,
    k, edit) with the tests ``sufficiency``, ``necessity`` (bootstrap intervals), ``edit_accuracy@k``
    (Clopper–Pearson; baseline = the agreement with no edit), ``edit_ld@k`` (the share of the patch's change of
    LD the edit reproduces, row by row: ``1 − mean |LD − LD_patch| / mean |LD_clean − LD_patch|``; 0 with no
    edit), ``edit_magnitude@k``, ``f1``, ``features`` (precise
    features per value), ``occluded``, ``over_split`` and, for dictionary ``patch``, the real patch's
    ``effect`` (mean |ΔLD| / mean |LD_clean|); ``best_features`` (the best-matching feature of each value);
    ``figure(path)``; ``save(dir)``.
    """
    for name, value, low, what in (("n_fit", n_fit, 1, "prompts to fit on"),
                                   ("n_test", n_test, 1, "prompts to test on"),
                                   ("seed", seed, 0, "the same seed gives the same table"),
                                   ("batch_size", batch_size, 1, "rows per forward")):
        check_count(name, value, low, what)
    check_training(epochs, lr, 0.0, train_batch_size=train_batch_size)
    ks = _check_k(edit_k)
    adapter = as_adapter(model)
    site = _check_site(site, adapter)
    cm = task.causal_model
    attributes = _check_attributes(cm, attributes)
    dicts = _check_dictionaries(dictionaries)
    edits = dict(edits or {})
    if set(edits) - set(attributes):
        raise DictionaryError(f"edits names {sorted(set(edits) - set(attributes))}, which are not among the "
                              f"attributes {attributes}")
    gens = {a: edits.get(a) or dict(task.edits).get(a) for a in attributes}
    contrast = task.contrast if contrast is None else contrast
    if isinstance(contrast, str) and contrast not in cm.variables:
        raise DictionaryError(f"contrast {contrast!r} is not a variable of the causal model {list(cm.variables)}")
    executor = as_executor(executor)

    settings = cm.sample(n_fit + n_test, seed=seed)
    fit_s, test_s = settings[:n_fit], settings[n_fit:]
    rng = random.Random(seed)
    targets = {a: _targets(cm, a, attributes, test_s, gens[a], rng) for a in attributes}
    interventional = [label for label, f in dicts.items() if f.learns_from_interventions]
    fit_targets = {a: _targets(cm, a, attributes, fit_s, gens[a], rng) for a in attributes} if interventional else {}
    fit_vals, test_vals = _values(cm, fit_s, attributes), _values(cm, test_s, attributes)
    target_vals = {a: _values(cm, t, attributes) for a, t in targets.items()}
    _check_supervised(dicts, fit_vals, [test_vals, *target_vals.values()], n_fit)
    test_batch = task.encode(test_s)
    test_batch.position(site.position)  # an unknown position fails before any forward

    engine = Engine(adapter, batch_size=batch_size)
    if interventional:  # their training runs from the fit prompts' prefix states: capture them once
        fit_out, fit_acts, fit_whole = engine.capture_prepared(task.encode(fit_s), [site])
    else:
        (fit_out, fit_acts), fit_whole = engine.capture(task.encode(fit_s), [site]), None
    h_fit = fit_acts[site]
    d = h_fit.shape[-1]
    feats = _ready(dicts, d, site)
    clean, test_acts, whole = engine.capture_prepared(test_batch, [site])
    h = test_acts[site]
    h_t = {a: engine.capture(task.encode(t), [site])[1][site] for a, t in targets.items()}
    for a in attributes:
        if torch.equal(h_t[a], h):
            raise DictionaryError(f"editing attribute {a!r} leaves the activation at {site} as it is on every test "
                                  "prompt (the site does not see it): there is nothing to edit there")
    runs = [cm.run(s) for s in test_s]
    labels = [v[cm.output] for v in runs]
    r = task.targets(labels)
    r2 = _contrast(task, contrast, runs, clean, r)
    n = n_test
    split = Split(task, engine.take(whole, torch.arange(n)), {site: h}, {site: h}, labels, labels, [None] * n,
                  [None] * n, list(range(n)), clean, clean)
    full, mean = Neurons().build(d), h_fit.mean(0)
    ablated = engine.run(split.prepared, site, full, mean.expand(n, d).contiguous())
    patched = {a: engine.run(split.prepared, site, full, h_t[a]) for a in attributes}
    at = _Site(engine, split, site, h, h_t, patched, mean, ablated, r, r2, executor, progress)

    torch.manual_seed(seed)
    for f in feats.values():
        if isinstance(f, SupervisedDictionary) and not f.fitted:
            f.fit_activations(h_fit, fit_vals)
        elif f.learns_from_activations and not f.learns_from_interventions and not f.fitted:
            with torch.enable_grad():
                f.fit_activations(h_fit)
    per_attribute, fit = {}, (fit_s, fit_out, h_fit, fit_whole)
    for label in interventional:
        for a in attributes:
            with torch.enable_grad():
                per_attribute[label, a] = _trained(engine, task, feats[label], site, a, fit, fit_targets[a], seed,
                                                   epochs, lr, train_batch_size, progress)

    approx = {label: f.eval() for label, f in feats.items() if label not in interventional}
    codes = {label: _coding(f, h, test_vals) for label, f in approx.items()}
    effect = {a: float((at.ld(patched[a]) - at.ld_clean).abs().mean() / at.ld_clean.abs().mean().clamp(min=1e-12))
              for a in attributes}
    rows = _approximation(at, codes) + [_row("patch", a, "effect", effect[a], n) for a in attributes]
    for a in attributes:
        rows += _control(at, a, feats, codes, per_attribute, target_vals[a], ks)
    interpretation, matches = _interpretability(codes, test_vals, effect, n)
    rows += interpretation

    meta = {"model": type(adapter.module).__name__, "task": task.name, "site": str(site), "layer": site.layer,
            "position": site.position, "component": site.component, "attributes": attributes,
            "dictionaries": {label: {"class": type(f).__name__, "config": f.config()} for label, f in dicts.items()},
            "n_fit": n_fit, "n_test": n_test, "edit_k": ks, "seed": seed, "batch_size": batch_size,
            "contrast": (contrast if contrast is None or isinstance(contrast, str)
                         else getattr(contrast, "__name__", "a function")),
            "accuracy": float(task.correct(clean, labels).float().mean()), "ld_clean": float(at.ld_clean.mean()),
            "ld_ablated": float(at.ld_ablated.mean()), "effect": effect,
            "thresholds": {"f1_cover": F1_COVER, "f1_causal": F1_CAUSAL, "precise": PRECISE, "matters": MATTERS,
                           "split": SPLIT}, "lower_is_better": False, "metric": "value"}
    fitted = {("all", label, site.layer, site.position): f for label, f in approx.items()}
    fitted.update({(a, label, site.layer, site.position): g for (label, a), g in per_attribute.items()})
    return DictionaryResults(rows, meta, fitted, matches)


@torch.no_grad()
def generic_activations(model, layer: int | Sequence[int], n_prompts: int = 64, n_tokens: int = 32, seed: int = 0,
                        component: str = "resid_post", batch_size: int = 32) -> torch.Tensor | dict[int, torch.Tensor]:
    """Activations ``[n_prompts · (n_tokens − 1), d]`` of generic text at ``layer`` (``component``), every token
    but the first: text the language model writes itself, built offline — greedy continuations of three
    random words of its own vocabulary (``seed``) to ``n_tokens`` tokens. What an SAE trained "on the full
    distribution" sees, beside one trained on a task's activations: ``SAE(k=16).fit_activations(
    generic_activations(lm, 18))``. A list of layers gives ``{layer: activations}`` from the same text and
    forwards."""
    check_count("n_prompts", n_prompts, 1, "generated texts")
    check_count("n_tokens", n_tokens, 4, "tokens per text, three of them the seed words")
    adapter = as_adapter(model)
    tok = getattr(adapter, "tokenizer", None)
    if tok is None or not hasattr(adapter, "generate"):
        raise DictionaryError("generic_activations needs a language model with a tokenizer (cv.load_model(...), "
                              f"cv.HFModel), got {type(adapter).__name__}")
    layers = [layer] if isinstance(layer, int) else list(layer)
    for x in layers:
        adapter.module_path(Site(x))  # a layer outside the model fails before any forward
    texts = {i: tok.decode([i]) for i in tok.get_vocab().values()}
    words = sorted(i for i, t in texts.items() if t.startswith(" ") and _is_word(t[1:]))  # whole words of a BPE
    words = words if len(words) >= 3 else sorted(i for i, t in texts.items() if _is_word(t))
    if len(words) < 3:
        raise DictionaryError("the tokenizer's vocabulary holds fewer than three whole lower-case words")
    rng = random.Random(seed)
    ids = torch.tensor([rng.sample(words, 3) for _ in range(n_prompts)])
    engine = Engine(adapter, batch_size=batch_size)
    more = engine.generate(engine.prepare(_plain_batch(ids), []), n_tokens - 3)
    sites = {x: [Site(x, i, component) for i in range(1, n_tokens)] for x in layers}
    _, acts = engine.capture(_plain_batch(torch.cat([ids, more], 1)), [s for x in layers for s in sites[x]])
    out = {x: torch.cat([acts[s] for s in sites[x]]) for x in layers}
    return out[layer] if isinstance(layer, int) else out


def _is_word(text: str) -> bool:
    return len(text) >= 3 and text.isalpha() and text.islower()


def _plain_batch(ids: torch.Tensor) -> Batch:
    """Unpadded token ids ``[n, T]`` as a ``Batch`` read at the last token."""
    n, T = ids.shape
    last = torch.full((n,), T - 1)
    return Batch({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                  "position_ids": torch.arange(T).expand(n, T).contiguous()},
                 {"first": torch.zeros(n, dtype=torch.long), "last": last}, last)


class DictionaryResults(Results):
    """``Results`` of ``evaluate_dictionaries``: one row per (dictionary, attribute, test); ``matches`` the
    best-matching feature of every attribute value; ``featurizers`` each fitted dictionary (those trained by
    interventions once per attribute)."""

    def __init__(self, rows=None, meta=None, featurizers=None, matches=None):
        super().__init__(rows, meta, featurizers)
        self.matches = list(matches or [])

    @property
    def columns(self) -> list[str]:
        return ["dictionary", "attribute", "test", "value", "n", "ci_low", "ci_high", "baseline"]

    @property
    def best_features(self):
        """A DataFrame: dictionary, attribute, value, feature (its index), f1, precision, recall."""
        import pandas as pd

        return pd.DataFrame(self.matches, columns=["dictionary", "attribute", "value", "feature", "f1", "precision",
                                                   "recall"])

    def summary(self):
        """``value`` as a DataFrame: dictionaries × (attribute, test)."""
        t = self.table.assign(attribute=lambda x: x["attribute"].fillna("all"))
        return t.pivot_table(index="dictionary", columns=["attribute", "test"], values="value", sort=False)

    def figure(self, path=None):
        """Top: approximation (sufficiency, necessity per dictionary), the edit accuracy against k for each
        attribute (the no-edit baseline dashed), interpretability (best F1 per attribute; O: occluded, S:
        over-split). Bottom: the edit magnitude at each dictionary's largest k, and each attribute's LD share
        against k. Saved to ``path`` when given; returns the matplotlib figure."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t = self.table
        attributes = self.meta["attributes"]
        names = list(dict.fromkeys(t.loc[t["dictionary"] != "patch", "dictionary"]))
        fig, axes = plt.subplots(2, len(attributes) + 2, figsize=(4.2 * (len(attributes) + 2), 7.2),
                                 constrained_layout=True, squeeze=False)
        self._bars(axes[0][0], t[t["test"].isin(["sufficiency", "necessity"])], "test", names, "approximation")
        widest = t[t["test"].str.startswith("edit_magnitude@")].copy()
        widest = widest[widest["k"] == widest.groupby(["dictionary", "attribute"])["k"].transform("max")]
        self._bars(axes[1][0], widest, "attribute", names, "edit magnitude (largest k)")
        for j, a in enumerate(attributes):
            for ax, test, title in ((axes[0][j + 1], "edit_accuracy@", f"control: edit {a}"),
                                    (axes[1][j + 1], "edit_ld@", f"share of the patch's ΔLD: edit {a}")):
                edit = t[(t["attribute"] == a) & t["test"].str.startswith(test)]
                for label, g in edit.groupby("dictionary", sort=False):
                    ax.plot(g["k"], g["value"], "o-" if len(g) > 1 else "s", label=label)
                if test == "edit_accuracy@" and len(edit):
                    effect = t[(t["dictionary"] == "patch") & (t["attribute"] == a)]["value"]
                    ax.axhline(edit["baseline"].iloc[0], color="grey", ls="--", lw=0.8, label="no edit")
                    title += f" (patch effect {float(effect.iloc[0]):.2f})" if len(effect) else ""
                    ax.set_ylim(-0.02, 1.02)
                ax.axhline(0 if test == "edit_ld@" else 1, color="grey", lw=0.4)
                ax.set_xlabel("features changed (k)")
                ax.set_title(title, fontsize=9)
                ax.legend(fontsize=6)
        ax = axes[0][-1]
        f1 = t[t["test"] == "f1"].pivot_table(index="dictionary", columns="attribute", values="value", sort=False)
        f1 = f1.reindex(index=[x for x in names if x in f1.index], columns=attributes)
        im = ax.imshow(f1.values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        flags = t.set_index(["dictionary", "attribute", "test"])["value"]
        for i, label in enumerate(f1.index):
            for j, a in enumerate(f1.columns):
                mark = "".join(c for c, test in (("O", "occluded"), ("S", "over_split"))
                               if flags.get((label, a, test), 0) == 1)
                v = f1.values[i, j]
                ax.text(j, i, f"{v:.2f}{' ' + mark if mark else ''}", ha="center", va="center", fontsize=7,
                        color="white" if v < 0.5 else "black")
        ax.set_xticks(range(len(f1.columns)), f1.columns, rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(len(f1.index)), f1.index, fontsize=7)
        ax.set_title("interpretability: best F1", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
        axes[1][-1].axis("off")
        fig.suptitle(f"{self.meta['task']} at {self.meta['site']}", fontsize=10)
        if path is not None:
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=130, bbox_inches="tight")
            plt.close(fig)
        return fig

    @staticmethod
    def _bars(ax, rows, group: str, names: list[str], title: str) -> None:
        """``rows``' values as bars per dictionary (in ``names``' order), one bar per ``group`` value, with
        their intervals."""
        shown = [x for x in names if x in set(rows["dictionary"])]
        groups = list(dict.fromkeys(rows[group]))
        width = 0.8 / max(len(groups), 1)
        for j, key in enumerate(groups):
            sub = rows[rows[group] == key].set_index("dictionary").reindex(shown)
            err = [(sub["value"] - sub["ci_low"]).clip(lower=0).fillna(0),
                   (sub["ci_high"] - sub["value"]).clip(lower=0).fillna(0)]
            ax.bar([i + width * j for i in range(len(shown))], sub["value"], width, yerr=err, label=str(key))
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shown))], shown, rotation=30, ha="right", fontsize=7)
        ax.axhline(1, color="grey", lw=0.5)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)

    def save(self, directory):
        """``Results.save`` (results.json, results.csv, the fitted dictionaries) and ``best_features.json``."""
        import json

        from .runstore import write_text

        d = super().save(directory)
        write_text(d / "best_features.json", json.dumps(self.matches, indent=1, default=str))
        return d

    @classmethod
    def load(cls, directory) -> "DictionaryResults":
        """Read what ``save`` wrote: rows, meta, best features and the fitted dictionaries."""
        import json
        from pathlib import Path

        from .runstore import featurizer_dir

        d = Path(directory)
        blob = json.loads((d / "results.json").read_text())
        meta = blob["meta"]
        feats = {}
        for label in meta["dictionaries"]:
            for scope in ["all", *meta["attributes"]]:
                key = (scope, label, meta["layer"], meta["position"])
                if (d / featurizer_dir(*key) / "featurizer.json").exists():
                    feats[key] = Featurizer.load(d / featurizer_dir(*key))
        return cls(blob["rows"], meta, feats, json.loads((d / "best_features.json").read_text()))
