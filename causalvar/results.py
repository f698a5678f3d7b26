"""Results of a localization sweep: a table, heatmaps, and files on disk."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from featurizers import Featurizer

from .runstore import cell_key, ensure_folder, featurizer_dir, save_featurizer, write_text

#: the leading columns of a table; "iia" stands for the task's metric (e.g. "mse" for IOI's logit difference)
COLUMNS = ["variable", "featurizer", "layer", "position", "dataset", "iia", "n", "ci_low", "ci_high"]


class Results:
    """One row per cell (variable × featurizer × layer × position).

    Attributes:
        rows: list of dicts with at least ``COLUMNS`` (plus e.g. training history, mask sizes), the
            task's metric in place of "iia" when it names another.
        meta: what was run: model, task, seed, sizes, the metric (``metric``, ``lower_is_better``;
            IIA by default) and each dataset's filtering report.
        featurizers: the fitted featurizer of each cell, keyed by (variable, featurizer, layer, position).
    """

    def __init__(self, rows: list[dict] | None = None, meta: dict | None = None,
                 featurizers: dict | None = None):
        self.rows = list(rows or [])
        self.meta = dict(meta or {})
        self.featurizers: dict[tuple, Featurizer] = dict(featurizers or {})

    @property
    def metric(self) -> str:
        """The column that scores a cell: "iia" unless the task named another (e.g. "mse")."""
        return self.meta.get("metric", "iia")

    @property
    def lower_is_better(self) -> bool:
        return bool(self.meta.get("lower_is_better", False))

    @property
    def columns(self) -> list[str]:
        """The leading columns: ``COLUMNS`` with the metric in place of "iia", then the metric's no-effect
        ``baseline`` where the rows carry one."""
        cols = [self.metric if c == "iia" else c for c in COLUMNS]
        return cols + (["baseline"] if any("baseline" in row for row in self.rows) else [])

    @property
    def table(self) -> pd.DataFrame:
        """A DataFrame: variable, featurizer, layer, position, dataset, iia (or the task's metric), n,
        ci_low, ci_high, [baseline], ..."""
        df = pd.DataFrame(self.rows)
        if df.empty:
            return pd.DataFrame(columns=self.columns)
        extra = [c for c in df.columns if c not in self.columns]
        return df[self.columns + extra]

    def best(self) -> pd.DataFrame:
        """The best cell of each (variable, featurizer) by the metric (the lowest where lower is better)."""
        t = self.table
        groups = t.groupby(["variable", "featurizer"], sort=False)[self.metric]
        return t.loc[groups.idxmin() if self.lower_is_better else groups.idxmax()].reset_index(drop=True)

    def mib_score(self, score: str | None = None, lower_is_better: bool | None = None) -> pd.DataFrame:
        """MIB aggregation (mean over counterfactual sets → best position per layer → mean and best
        over layers) per variable and featurizer, of the metric unless ``score`` names another column;
        see ``causalvar.metrics.mib_aggregate``."""
        from .metrics import mib_aggregate

        lower = self.lower_is_better if lower_is_better is None else lower_is_better
        return mib_aggregate(self.table, score or self.metric, lower)

    def __repr__(self) -> str:
        return f"Results({len(self.rows)} cells)\n" + self.table[self.columns].to_string(index=False)

    def heatmap(self, path: str | Path | None = None, value: str | None = None, title: str | None = None):
        """One figure: a grid of heatmaps (rows: featurizers, columns: variables), each layer × position,
        of ``value`` (default: the metric; the colour scale is flipped where lower is better, so bright
        is always good). Each cell shows its score and, beneath it in parentheses, its no-effect baseline
        when the rows carry one. Saved to ``path`` (PNG/PDF) when given; returns the matplotlib figure."""
        from .figures import grid_panel, pyplot, saved
        from .metrics import layer_order, position_labels

        t = self.table
        t = t.assign(position=position_labels(t["position"]))
        value = value or self.metric
        cmap = "viridis_r" if value == self.metric and self.lower_is_better else "viridis"
        baseline = value == self.metric and "baseline" in t.columns  # old result files have none
        controlled = value == self.metric and "control_max" in t.columns and t["control_max"].notna().any()
        shown = t.groupby(["variable", "featurizer", "layer", "position"])[value].mean()  # per cell
        limits = dict(vmin=0, vmax=1) if value == "iia" else dict(vmin=shown.min(), vmax=shown.max())
        feats = list(dict.fromkeys(t["featurizer"]))
        variables = list(dict.fromkeys(t["variable"]))
        layers = layer_order(t["layer"])
        positions = list(dict.fromkeys(t["position"]))
        fig, axes = pyplot().subplots(len(feats), len(variables), squeeze=False,
                                      figsize=(1.2 + 1.1 * len(positions) * len(variables),
                                               1.0 + max(2.0, 0.32 * len(layers)) * len(feats)),
                                      constrained_layout=True)
        for i, f in enumerate(feats):
            for j, v in enumerate(variables):
                ax = axes[i][j]
                sub = t[(t["featurizer"] == f) & (t["variable"] == v)]  # several sets: their mean
                grids = {col: sub.pivot_table(index="layer", columns="position", values=col, aggfunc="mean",
                                              sort=False).reindex(index=layers, columns=positions).to_numpy(float)
                         for col in [value] + (["baseline"] if baseline else []) + (["control_max"] if controlled else [])}
                beaten = None
                if controlled:  # hatched: not better than the best random control (NaN controls: never hatched)
                    ctrl = grids["control_max"]
                    beaten = ~np.isnan(ctrl) & ((grids[value] >= ctrl) if self.lower_is_better else (grids[value] <= ctrl))
                im = grid_panel(ax, grids[value], layers, positions, cmap, below=grids.get("baseline"), hatched=beaten,
                                **limits)
                ax.set_title(f"{v} · {f}", fontsize=9)
                ax.set_ylabel("layer" if j == 0 else "")
        label = f"{value} (in parentheses: the no-effect baseline)" if baseline else value
        fig.colorbar(im, ax=axes, shrink=0.8, label=label + ("; hatched: not above its best random control"
                                                              if controlled else ""))
        if title:
            fig.suptitle(title)
        return saved(fig, path)

    def save(self, directory: str | Path) -> Path:
        """Write ``results.json`` (rows + meta), ``results.csv`` and each fitted featurizer under
        ``featurizers/<variable>/<featurizer>/L<layer>_<position>/`` (safetensors + JSON), each file
        whole or not at all (written beside, then renamed). A folder that cannot be written is
        refused (``RunFolderError``) before anything is written."""

        d = ensure_folder(directory, "the results")
        write_text(d / "results.json", json.dumps({"meta": self.meta, "rows": self.rows}, indent=1, default=str))
        write_text(d / "results.csv", self.table.to_csv(index=False))
        for key, feat in self.featurizers.items():
            if feat.has_state:
                save_featurizer(feat, d / featurizer_dir(*key))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "Results":
        """Read what ``save`` wrote, featurizers included."""
        d = Path(directory)
        blob = json.loads((d / "results.json").read_text())
        feats = {}
        for row in blob["rows"]:
            key = cell_key(row)[:4]
            path = d / featurizer_dir(*key)
            if (path / "featurizer.json").exists():
                feats[key] = Featurizer.load(path)
        return cls(blob["rows"], blob["meta"], feats)
