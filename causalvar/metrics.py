"""Scores: interchange-intervention accuracy, confidence bounds, logit differences, MIB aggregation."""
from __future__ import annotations

import torch


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


def score_row(scores: torch.Tensor, metric: str) -> dict:
    """The columns a results row holds for per-row ``scores: [n]``: ``metric`` (their mean), ``n`` and a
    95% interval — Clopper–Pearson for correctness, the normal approximation of the mean otherwise."""
    value, n = mean_score(scores), len(scores)
    if scores.dtype == torch.bool:
        lo, hi = clopper_pearson(int(scores.sum()), n)
    else:
        half = 1.96 * float(scores.double().std()) / n ** 0.5 if n > 1 else float("inf")
        lo, hi = value - half, value + half
    return {metric: value, "n": n, "ci_low": lo, "ci_high": hi}


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
    rows = torch.arange(len(logits))
    return logits[rows, a] - logits[rows, b]


def position_labels(positions):
    """A table's ``position`` column as text labels: ``None`` (no sequence axis) reads "None" under
    pandas 2 and 3 alike (pandas 3's ``astype(str)`` keeps ``None`` missing)."""
    import pandas as pd

    return positions.map(lambda p: "None" if p is None or (not isinstance(p, str) and pd.isna(p)) else str(p))


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
