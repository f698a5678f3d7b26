"""Scores. Metric objects (IIA, logit difference and its normalised form, probability, KL) score the
outputs the engine hands them (``Outcome``), apart from any task; below them, the statistics they share:
Clopper–Pearson intervals, Palumbo et al.'s ε bound, MIB aggregation."""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F


class MetricError(ValueError):
    """A metric that cannot be computed on these outputs (said in the metric's terms)."""


@dataclass
class Outcome:
    """What the engine hands a metric for the rows of one split.

    task: the task (maps output values to class / token ids: ``task.targets``).
    logits: the intervened run's logits ``[n, C]`` (``None`` for tasks that generate: see ``tokens``).
    labels: the expected high-level outputs (n), e.g. the counterfactual labels.
    contrast: the outputs a logit difference counts against (n), e.g. the bases' own outputs.
    base, source: the unintervened logits ``[n, C]`` of the bases and of the sources, kept from the
        capture pass (the clean and corrupted runs of activation patching).
    tokens: greedily decoded ids ``[n, L]`` under the intervention (tasks that generate).
    """

    task: object
    logits: torch.Tensor | None
    labels: Sequence
    contrast: Sequence | None = None
    base: torch.Tensor | None = None
    source: torch.Tensor | None = None
    tokens: torch.Tensor | None = None

    def need(self, name: str, metric: "Metric") -> torch.Tensor | Sequence:
        value = getattr(self, name)
        if value is None:
            raise MetricError(f"the metric {metric.name} needs the {name} {'logits' if name != 'contrast' else 'answers'}, "
                              "which this run does not have" + (" (the task generates its answers)"
                                                                if name == "logits" else ""))
        return value


class Metric:
    """A score of intervened runs: ``score(out) -> [n]`` per row, ``value(scores, out)`` for the cell
    (the mean unless the metric normalises), a confidence ``interval`` and, where it can be trained on,
    a differentiable ``loss(out)``. ``name`` is its column in the results table; ``lower_is_better``
    flips "best" in aggregation, early stopping and plots."""

    name = "metric"
    lower_is_better = False

    def score(self, out: Outcome) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, out: Outcome) -> torch.Tensor:
        raise MetricError(f"the metric {self.name} cannot be trained on; train with the task's metric")

    def value(self, scores: torch.Tensor, out: Outcome) -> float:
        return mean_score(scores)

    def interval(self, scores: torch.Tensor, out: Outcome, confidence: float = 0.95) -> tuple[float, float]:
        """Clopper–Pearson for correctness, the normal approximation of the mean otherwise."""
        n = len(scores)
        if scores.dtype == torch.bool:
            return clopper_pearson(int(scores.sum()), n, confidence)
        from scipy.stats import norm

        value = mean_score(scores)
        z = 1.96 if confidence == 0.95 else float(norm.ppf(0.5 + confidence / 2))
        half = z * float(scores.double().std()) / n ** 0.5 if n > 1 else float("inf")
        return value - half, value + half

    def columns(self, out: Outcome, primary: bool = True, scores: torch.Tensor | None = None) -> dict:
        """A results row's columns: ``{name, n, ci_low, ci_high}`` for the run's primary metric, and
        ``{name, name_ci_low, name_ci_high}`` for the others; of ``scores: [n]`` when given (e.g. attribution
        patching's linear estimates) instead of ``score(out)``."""
        scores = self.score(out) if scores is None else scores
        if len(scores) == 0:
            raise MetricError(f"{self.name} of zero examples is undefined; the dataset is empty after filtering")
        value, (lo, hi) = self.value(scores, out), self.interval(scores, out)
        if primary:
            return {self.name: value, "n": len(scores), "ci_low": lo, "ci_high": hi}
        return {self.name: value, f"{self.name}_ci_low": lo, f"{self.name}_ci_high": hi}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class IIA(Metric):
    """Interchange-intervention accuracy: the share of rows whose output under the intervention is the
    expected high-level value by the task's checker (the argmax class or token, or greedy decoding of
    the whole answer). Trained with cross-entropy on the expected class / first answer token."""

    name = "iia"

    def score(self, out: Outcome) -> torch.Tensor:
        if out.tokens is not None:
            return out.task.correct_tokens(out.tokens, out.labels)
        return out.task.correct(out.need("logits", self), out.labels)

    def loss(self, out: Outcome) -> torch.Tensor:
        logits = out.need("logits", self)
        return F.cross_entropy(logits.float(), out.task.targets(out.labels).to(logits.device))


def _answer_diff(logits: torch.Tensor, out: Outcome, metric: Metric) -> torch.Tensor:
    """``logit(r) - logit(r')`` ``[n]`` with r the expected answers' tokens and r' the contrast's."""
    r = out.task.targets(out.labels).to(logits.device)
    r2 = out.task.targets(out.need("contrast", metric)).to(logits.device)
    return logit_diff(logits.float(), r, r2)


class LogitDiff(Metric):
    """The mean logit difference ``logit(r) − logit(r′)``: r the expected answer, r′ the contrast answer
    (by default the base's own). Trained by raising it."""

    name = "logit_diff"

    def score(self, out: Outcome) -> torch.Tensor:
        return _answer_diff(out.need("logits", self), out, self).cpu()

    def loss(self, out: Outcome) -> torch.Tensor:
        return -_answer_diff(out.need("logits", self), out, self).mean()


class _Restoration(Metric):
    """A score between the corrupted run (0) and the clean run (1) of activation patching. ``clean``
    names which unintervened run is the clean one: ``"source"`` when the clean activation is written
    into the corrupted run (denoising), ``"base"`` when the corrupted one is written into the clean run
    (noising). Intervals are percentile bootstraps over the pairs."""

    def __init__(self, clean: str = "source"):
        if clean not in ("source", "base"):
            raise MetricError(f"clean must be 'source' or 'base', got {clean!r}")
        self.clean = clean

    def runs(self, out: Outcome) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean, corrupted) unintervened logits ``[n, C]``."""
        base, source = out.need("base", self), out.need("source", self)
        return (source, base) if self.clean == "source" else (base, source)

    def interval(self, scores, out, confidence=0.95, resamples: int = 1000) -> tuple[float, float]:
        """A percentile bootstrap over rows (pairs) of ``value``'s estimator (seeded)."""
        return percentile_interval(self._resampled(scores.double(), out, resample_rows(len(scores), resamples)),
                                   confidence)

    def _resampled(self, scores: torch.Tensor, out: Outcome, idx: torch.Tensor) -> torch.Tensor:
        """The cell's value on each resample ``idx: [resamples, n]`` of the rows -> ``[resamples]``."""
        return scores[idx].mean(1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(clean={self.clean!r})"


def resample_rows(n: int, resamples: int = 1000) -> torch.Tensor:
    """Bootstrap resamples of n rows, ``[resamples, n]`` row indices, seeded (the same every time)."""
    return torch.randint(n, (resamples, n), generator=torch.Generator().manual_seed(0))


def percentile_interval(boot: torch.Tensor, confidence: float) -> tuple[float, float]:
    """The ``confidence`` percentile interval of bootstrap values ``boot: [resamples]``."""
    a = (1 - confidence) / 2
    return float(boot.quantile(a)), float(boot.quantile(1 - a))


class NormalizedLogitDiff(_Restoration):
    """Zhang & Nanda's ``(mean LD_pt − mean LD_*) / (mean LD_cl − mean LD_*)``, ``LD = logit(r) −
    logit(r′)``: r the clean answer (``labels``), r′ the corrupted run's (``contrast``); means over the
    rows first. 1: the patched run behaves like the clean one; 0: like the corrupted one. A clean–corrupt
    gap of (almost) zero is an error, never a NaN."""

    name = "logit_diff_norm"

    def score(self, out: Outcome) -> torch.Tensor:
        return _answer_diff(out.need("logits", self), out, self).cpu()

    def _gap(self, out: Outcome) -> tuple[torch.Tensor, torch.Tensor]:
        clean, corrupt = self.runs(out)
        return _answer_diff(clean, out, self).cpu().double(), _answer_diff(corrupt, out, self).cpu().double()

    def value(self, scores: torch.Tensor, out: Outcome) -> float:
        ld_cl, ld_co = self._gap(out)
        gap = float(ld_cl.mean() - ld_co.mean())
        if abs(gap) < 1e-6 * max(1.0, float(ld_cl.abs().mean())):
            raise MetricError(f"the clean and the corrupted runs have the same mean logit difference "
                              f"({float(ld_cl.mean()):.4g}): the corruption changes nothing, so there is nothing "
                              "to restore; corrupt other tokens or choose another counterfactual set")
        return float((scores.double().mean() - ld_co.mean()) / gap)

    def _resampled(self, scores: torch.Tensor, out: Outcome, idx: torch.Tensor) -> torch.Tensor:
        ld_cl, ld_co = self._gap(out)
        return (scores[idx].mean(1) - ld_co[idx].mean(1)) / (ld_cl[idx].mean(1) - ld_co[idx].mean(1))


class ProbDiff(_Restoration):
    """``P_pt(r) − P_*(r)``: the clean answer's probability under the patch minus under the corrupted run."""

    name = "prob_diff"

    def score(self, out: Outcome) -> torch.Tensor:
        r = out.task.targets(out.labels)
        rows = torch.arange(len(r))
        _, corrupt = self.runs(out)
        p = lambda logits: logits.float().cpu().softmax(-1)[rows, r]
        return p(out.need("logits", self)) - p(corrupt)


class KLDiff(_Restoration):
    """``KL(P_cl ‖ P_*) − KL(P_cl ‖ P_pt)`` per row: how much of the corrupted run's divergence from the
    clean distribution the patch removes (``KL(P_cl ‖ P_*)`` when fully restored, 0 when not at all)."""

    name = "kl_diff"

    def score(self, out: Outcome) -> torch.Tensor:
        clean, corrupt = self.runs(out)
        log = lambda logits: logits.float().cpu().log_softmax(-1)
        lp_cl = log(clean)
        kl = lambda other: (lp_cl.exp() * (lp_cl - log(other))).sum(-1)
        return kl(corrupt) - kl(out.need("logits", self))


class Prob(Metric):
    """The mean probability of the expected answer's (first) token under the intervention."""

    name = "prob"

    def score(self, out: Outcome) -> torch.Tensor:
        logits = out.need("logits", self).float().cpu()
        r = out.task.targets(out.labels)
        return logits.softmax(-1)[torch.arange(len(r)), r]


#: metrics by name, for ``metrics=["iia", "prob"]`` and the command line
METRICS = {"iia": IIA, "logit_diff": LogitDiff, "logit_diff_norm": NormalizedLogitDiff, "prob": Prob,
           "prob_diff": ProbDiff, "kl_diff": KLDiff}


def as_metric(metric) -> Metric:
    """A ``Metric`` from an instance or a name in ``METRICS``."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, type) and issubclass(metric, Metric):
        raise MetricError(f"pass a metric instance, {metric.__name__}(), not the class")
    if metric not in METRICS:
        raise MetricError(f"unknown metric {metric!r}; choose from {sorted(METRICS)} or pass a cv.metrics.Metric")
    return METRICS[metric]()


def iia(correct: torch.Tensor) -> float:
    """Interchange-intervention accuracy: the share of rows where the network's output under the
    intervention equals the high-level counterfactual output. ``correct: bool [n]``."""
    if len(correct) == 0:
        raise ValueError("IIA of zero examples is undefined; the dataset is empty after filtering")
    return int(correct.sum()) / len(correct)


def mean_score(scores: torch.Tensor) -> float:
    """A cell's score: the IIA of per-row correctness ``bool [n]``, or the mean of real-valued
    per-row scores ``[n]`` (e.g. squared errors)."""
    if scores.dtype == torch.bool:
        return iia(scores)
    if len(scores) == 0:
        raise ValueError("the mean score of zero examples is undefined; the dataset is empty after filtering")
    return float(scores.double().mean())


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial interval for ``k`` successes in ``n`` trials."""
    from scipy.stats import beta

    if n == 0:
        return 0.0, 1.0
    a = (1 - confidence) / 2
    low = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return low, high


def epsilon_bound(errors: int, n: int, confidence: float = 0.95) -> float:
    """One-sided upper bound on a disagreement rate (Palumbo et al.'s ε): with zero errors it is
    ``1 - (1 - confidence) ** (1 / n)``."""
    from scipy.stats import beta

    if errors >= n:
        return 1.0
    return float(beta.ppf(confidence, errors + 1, n - errors))


def logit_diff(logits: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``logit[a] - logit[b]`` per row: ``logits: [n, C]``, ``a, b: [n]`` -> ``[n]``."""
    rows = torch.arange(len(logits), device=logits.device)
    return logits[rows, a.to(logits.device)] - logits[rows, b.to(logits.device)]


def position_labels(positions):
    """A table's ``position`` column as text labels: ``None`` (no sequence axis) reads "None" under
    pandas 2 and 3 alike (pandas 3's ``astype(str)`` keeps ``None`` missing)."""
    import pandas as pd

    return positions.map(lambda p: "None" if p is None or (not isinstance(p, str) and pd.isna(p)) else str(p))


def layer_order(layers) -> list:
    """A table's distinct ``layer`` values in drawing order: block indices ascending, then module names
    in the order they first appear (sweeps of several variables may each have their own layers)."""
    seen = list(dict.fromkeys(layers))
    blocks = [x for x in seen if isinstance(x, numbers.Integral)]
    return sorted(blocks) + [x for x in seen if not isinstance(x, numbers.Integral)]


def mib_aggregate(table, score: str = "iia", lower_is_better: bool = False):
    """MIB's causal-variable score per (variable, featurizer): average ``score`` over the
    counterfactual sets of each cell (layer × position), take the best position of each layer, then
    report the mean and the best over layers. ``lower_is_better`` (e.g. IOI's squared error) makes
    "best" the minimum. ``table``: a DataFrame with variable, featurizer, layer, position, [dataset],
    ``score``. Returns a DataFrame: variable, featurizer, mean, best, best_layer, n_layers."""
    import pandas as pd

    if table.empty:
        raise ValueError("cannot aggregate an empty table")
    t = table.assign(position=position_labels(table["position"]))
    unit = t.groupby(["variable", "featurizer", "layer", "position"], sort=False)[score].mean().reset_index()
    pick = "min" if lower_is_better else "max"
    per_layer = unit.groupby(["variable", "featurizer", "layer"], sort=False)[score].agg(pick).reset_index()
    rows = []
    for (v, f), g in per_layer.groupby(["variable", "featurizer"], sort=False):
        best_idx = g[score].idxmin() if lower_is_better else g[score].idxmax()
        rows.append({"variable": v, "featurizer": f, "mean": g[score].mean(), "best": g[score].agg(pick),
                     "best_layer": g.loc[best_idx, "layer"], "n_layers": len(g)})
    return pd.DataFrame(rows)
