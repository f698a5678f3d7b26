"""Activation patching on IOI with SmolLM2 (issue 11): STR against GN, the residual stream and the heads,
exact patching against its attribution screen, and ``cv.patch`` against a plain pyvene loop.

Settings (all denoising, normalised logit difference, every pair used, ``--pairs`` pairs, seed ``--seed``):
- residual stream, every layer x ``--positions``: STR (the task's corruption of ``--variable``: other names
  for ``output_token``) and GN (noise on the names' embeddings, r' = the subject), exact; and STR by
  attribution patching (one source forward, one base forward and backward for every site at once);
- every head of every layer at ``--head-position``: STR and GN exact, STR by attribution.
Timing, in one run: the residual STR sweep by ``cv.patch`` against the same cells by the plain pyvene loop
(``causalvar.pyvene_bridge.pyvene_logits``: per cell a fresh ``IntervenableModel``, a full source and a
full base forward per batch; the clean and corrupted runs once), with the ratio and the largest difference
of the cells' values; and attribution's time for every site at once. Each figure's title names its setting.

    python benchmarks/bench_patching.py                          # the issue's sizes (30 layers x 3 x 64)
    python benchmarks/bench_patching.py --layers 0,15,29 --pairs 16 --skip-heads   # a quick check
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, base_parser, load_lm, parse_list, print_table, setup_threads, write_json  # noqa: E402

import causalvar as cv  # noqa: E402
from causalvar.cli import parse_layers  # noqa: E402
from causalvar.metrics import NormalizedLogitDiff, Outcome  # noqa: E402
from causalvar.patching import _str_pairs, _str_sets, compare  # noqa: E402
from causalvar.pyvene_bridge import pyvene_logits  # noqa: E402
from featurizers import Neurons  # noqa: E402


def parser():
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--layers", default="all", help='"all", "0,15,29" or a range "0:30:3"')
    p.add_argument("--positions", default="io,s2,last", help="comma-separated IOI roles (residual stream)")
    p.add_argument("--head-position", default="last", help="the IOI role the heads are patched at")
    p.add_argument("--pairs", type=int, default=64, help="pairs per counterfactual set")
    p.add_argument("--skip-heads", action="store_true", help="only the residual stream")
    p.add_argument("--skip-loop", action="store_true", help="no pyvene loop (no timing ratio)")
    return p


def timed_patch(lm, task, variable, **kw):
    t0 = time.perf_counter()
    res = cv.patch(lm, task, variable, **kw)
    return res, time.perf_counter() - t0


def top_cells(res, k: int = 5) -> list[dict]:
    """The ``k`` cells with the largest value: layer, position or head, value."""
    across = "head" if res.meta["component"] == "heads" else "position"
    t = res.table.sort_values(res.metric, ascending=False).head(k)
    return [{"layer": r["layer"], across: r[across], res.metric: round(float(r[res.metric]), 4)} for _, r in t.iterrows()]


def agreement(exact, fast) -> dict:
    """How attribution's estimates compare with exact patching's values, cell by cell."""
    a, b = exact.table[exact.metric].to_numpy(), fast.table[fast.metric].to_numpy()
    diff = abs(a - b)
    worst = exact.table.iloc[int(diff.argmax())]
    by_layer = exact.table.assign(diff=diff).groupby("layer")["diff"].max()
    return {"pearson_r": round(float(np.corrcoef(a, b)[0, 1]), 4),
            "max_abs_diff": round(float(diff.max()), 4), "mean_abs_diff": round(float(diff.mean()), 4),
            "worst_cell": {"layer": int(worst["layer"]), "position": str(worst["position"]), "head": worst["head"],
                           "exact": round(float(a[diff.argmax()]), 4), "attribution": round(float(b[diff.argmax()]), 4)},
            "max_abs_diff_by_layer": {int(k): round(float(v), 4) for k, v in by_layer.items()}}


def pyvene_loop(lm, task, variable, layers, positions, n, seed, batch_size) -> tuple[dict, float]:
    """The same residual STR cells by the plain pyvene loop: {(layer, position): value}, seconds."""
    t0 = time.perf_counter()
    pairs = _str_pairs(task, _str_sets(task, variable, n, seed), "denoise")[0]
    with torch.inference_mode():
        clean, corrupt = lm.forward(pairs.clean), lm.forward(pairs.corrupt)
    metric = NormalizedLogitDiff(clean="source")
    values = {}
    for layer in layers:
        for pos in positions:
            logits = pyvene_logits(lm, pairs.corrupt, pairs.clean, cv.Site(layer, pos), Neurons(), batch_size)
            out = Outcome(task, logits, pairs.r, pairs.r2, corrupt, clean)
            values[layer, pos] = metric.value(metric.score(out), out)
    return values, time.perf_counter() - t0


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    setup_threads(args.threads)
    folder = Path(args.out).parent if args.out else RESULTS  # figures and result folders beside the JSON
    lm, load_s = load_lm(args)
    task = cv.tasks.ioi(lm)
    layers, positions = parse_layers(args.layers, lm.n_layers), parse_list(args.positions)
    common = dict(layers=layers, n=args.pairs, seed=args.seed, batch_size=args.batch_size, progress=sys.stderr.isatty())
    runs, seconds = {}, {}
    resid = dict(component="resid", positions=positions, **common)
    heads = dict(component="heads", positions=args.head_position, **common)
    plan = [("str_resid", "str", resid, "exact"), ("gn_resid", "gn", resid, "exact"),
            ("str_resid_attribution", "str", resid, "attribution")]
    if not args.skip_heads:
        plan += [("str_heads", "str", heads, "exact"), ("gn_heads", "gn", heads, "exact"),
                 ("str_heads_attribution", "str", heads, "attribution")]
    for name, corruption, kw, method in plan:
        print(f"{name} ...", flush=True)
        runs[name], seconds[name] = timed_patch(lm, task, args.variable if corruption == "str" else None,
                                                corruption=corruption, method=method, **kw)
        runs[name].save(folder / "patching" / name)
    out = {"settings": {"model": args.model, "task": "ioi", "variable": args.variable, "layers": layers,
                        "positions": positions, "head_position": args.head_position, "pairs": args.pairs,
                        "seed": args.seed, "metric": "logit_diff (normalised)", "direction": "denoise",
                        "filter_correct": False, "batch_size": args.batch_size, "threads": args.threads,
                        "gn": {"noise_positions": list(task.noise_positions), "contrast": task.contrast,
                               "noise_std": runs["gn_resid"].meta["noise_std"]}},
           "load_seconds": round(load_s, 2), "seconds": {k: round(v, 2) for k, v in seconds.items()},
           "top_cells": {k: top_cells(r) for k, r in runs.items()},
           "attribution_vs_exact": {"resid": agreement(runs["str_resid"], runs["str_resid_attribution"])}}
    if not args.skip_heads:
        out["attribution_vs_exact"]["heads"] = agreement(runs["str_heads"], runs["str_heads_attribution"])
    for component in ("resid",) + (() if args.skip_heads else ("heads",)):
        compare(runs[f"str_{component}"], runs[f"gn_{component}"], folder / f"patching_str_vs_gn_{component}.png")
        compare(runs[f"str_{component}"], runs[f"str_{component}_attribution"],
                folder / f"patching_exact_vs_attribution_{component}.png")
    if not args.skip_loop:
        print("the plain pyvene loop ...", flush=True)
        values, loop_s = pyvene_loop(lm, task, args.variable, layers, positions, args.pairs, args.seed, args.batch_size)
        t = runs["str_resid"].table
        ours = {(int(r["layer"]), r["position"]): float(r["logit_diff_norm"]) for _, r in t.iterrows()}
        out["timing_resid_sweep"] = {
            "cells": len(values), "pairs_per_cell": args.pairs, "causalvar_seconds": round(seconds["str_resid"], 2),
            "pyvene_loop_seconds": round(loop_s, 2), "ratio": round(loop_s / seconds["str_resid"], 2),
            "attribution_seconds_every_site": round(seconds["str_resid_attribution"], 2),
            "max_abs_value_diff_vs_pyvene": float(max(abs(ours[k] - v) for k, v in values.items()))}
        print_table([out["timing_resid_sweep"]], title="residual-stream STR sweep: cv.patch vs the plain pyvene loop")
    print_table([{"setting": k, "seconds": v} for k, v in out["seconds"].items()], title="seconds per setting")
    for k, cells in out["top_cells"].items():
        print_table(cells, title=f"top cells: {k}")
    path = write_json("patching", out, args.out)
    print(f"wrote {path} and {folder}/patching_*.png, {folder}/patching/<setting>/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
