"""Issue 4 (a) and (d): the full-vector IIA sweep, causalvar against a plain pyvene loop, and the cost
of one cell at layer L against the ideal (N - L) / N of a plain forward.

(a) IOI on SmolLM2, every layer x position ("io", "s2", "last"), ``--pairs`` counterfactual pairs of
    ``--variable`` (one CounterfactualDataset, seed ``--seed``, no filtering, the same encoded batches
    on both sides). Each cell runs both ways, one right after the other:
    - pyvene: ``causalvar.pyvene_bridge.pyvene_logits`` -- a fresh ``pv.IntervenableModel`` for the
      cell, the sources passed as inputs: a full source forward plus a full base forward per batch;
    - causalvar: ``engine.run(prepared, site, Neurons(), acts[site])`` on the sources captured once
      (``engine.capture``) and the bases prepared once (``engine.prepare``);
    and ``task.correct`` scores both. causalvar's total includes its one-off costs (encoding, source
    capture, base prefix pass); the pyvene total includes its encoding. Reported: both totals, the
    ratio, the breakdown, IIA per cell on both sides and the largest |logit difference|.
(d) A plain forward of the same base prompts (``lm.forward``, in the same batches) against
    ``engine.run`` of one cell at each layer L and position; ``measured / ((N - L) / N * forward)``.
    The minimum over ``--repeats`` timings is used on both sides.

    python benchmarks/bench_sweep.py                               # the issue's sizes
    python benchmarks/bench_sweep.py --layers 0,15,29 --pairs 32   # a quick check
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from causalvar.cli import parse_layers  # noqa: E402
from common import (POSITIONS, Clock, base_parser, load_lm, parse_list, print_table,  # noqa: E402
                    print_targets, setup_threads, target, warm_up, write_json)

import causalvar as cv  # noqa: E402
from causalvar.pyvene_bridge import pyvene_logits  # noqa: E402
from featurizers import Neurons  # noqa: E402


def parser():
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--layers", default="all", help='"all", "0,15,29" or a range "0:30:3"')
    p.add_argument("--positions", default=",".join(POSITIONS), help="comma-separated IOI roles")
    p.add_argument("--pairs", type=int, default=256, help="counterfactual pairs (bases = sources = pairs)")
    p.add_argument("--repeats", type=int, default=3, help="(d): timings per measurement; the minimum is kept")
    p.add_argument("--skip-cost", action="store_true", help="skip (d)")
    p.add_argument("--verbose", action="store_true", help="print every cell")
    return p


# ------------------------------------------------------------------ the causalvar path (shared with bench_memory)
def causalvar_setup(engine: cv.Engine, task, ds: cv.CounterfactualDataset, sites, clock: Clock):
    """causalvar's one-off work: encode, capture every site of every source, prepare the bases."""
    with clock("encode"):
        bases, sources = task.encode(ds.bases), task.encode(ds.sources)
    with clock("capture_sources"):
        _, acts = engine.capture(sources, sites)
    with clock("prepare_bases"):
        prepared = engine.prepare(bases, sites)
    return bases, prepared, acts


def causalvar_cell(engine: cv.Engine, task, prepared, acts, site: cv.Site, labels, d: int):
    """One full-vector cell: logits ``[n, vocab]`` and correctness ``bool [n]``."""
    featurizer = Neurons().build(d)
    logits = engine.run(prepared, site, featurizer, acts[site])
    return logits, task.correct(logits, labels)


def pyvene_cell(lm, task, bases, sources, site: cv.Site, labels, d: int, batch_size: int):
    featurizer = Neurons().build(d)
    logits = pyvene_logits(lm, bases, sources, site, featurizer, batch_size=batch_size)
    return logits, task.correct(logits, labels)


def warm_up_all(lm, task, ds, sites, batch_size: int) -> None:
    """Run every code path once on a few rows, untimed."""
    small = ds.subset(range(min(8, len(ds))))
    bases, sources = task.encode(small.bases), task.encode(small.sources)
    warm_up(lm, bases)
    engine = cv.Engine(lm, batch_size=batch_size)
    _, acts = engine.capture(sources, sites[:1])
    prepared = engine.prepare(bases, sites[:1])
    causalvar_cell(engine, task, prepared, acts, sites[0], small.labels, lm.d_model)
    pyvene_cell(lm, task, bases, sources, sites[0], small.labels, lm.d_model, batch_size)


# ------------------------------------------------------------------ (a)
def sweep(lm, task, ds, sites, batch_size: int, verbose: bool = False) -> tuple[dict, tuple]:
    d = lm.d_model
    engine = cv.Engine(lm, batch_size=batch_size)
    cv_clock, pv_clock = Clock(), Clock()

    bases, prepared, acts = causalvar_setup(engine, task, ds, sites, cv_clock)
    with pv_clock("encode"):
        pv_bases, pv_sources = task.encode(ds.bases), task.encode(ds.sources)

    cells = []
    for i, site in enumerate(sites):
        t0 = time.perf_counter()
        ref, ref_ok = pyvene_cell(lm, task, pv_bases, pv_sources, site, ds.labels, d, batch_size)
        t_pv = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours, ok = causalvar_cell(engine, task, prepared, acts, site, ds.labels, d)
        t_cv = time.perf_counter() - t0
        pv_clock.seconds["cells"] = pv_clock["cells"] + t_pv
        cv_clock.seconds["cells"] = cv_clock["cells"] + t_cv
        cell = {"layer": site.layer, "position": site.position,
                "iia_pyvene": cv.iia(ref_ok), "iia_causalvar": cv.iia(ok),
                "rows_differing": int((ref_ok != ok).sum()),
                "argmax_differing": int((ref.argmax(-1) != ours.argmax(-1)).sum()),
                "max_abs_logit_diff": float((ref - ours).abs().max()),
                "t_pyvene_s": round(t_pv, 4), "t_causalvar_s": round(t_cv, 4)}
        cells.append(cell)
        print(f"[{i + 1}/{len(sites)}] {site}: pyvene {t_pv:.2f}s iia {cell['iia_pyvene']:.3f} | causalvar "
              f"{t_cv:.2f}s iia {cell['iia_causalvar']:.3f} | max|dlogit| {cell['max_abs_logit_diff']:.2e}",
              flush=True)
        del ref, ours

    t_pv, t_cv = pv_clock.total(), cv_clock.total()
    result = {
        "pyvene": {"total_s": round(t_pv, 3), "breakdown_s": pv_clock.rounded()},
        "causalvar": {"total_s": round(t_cv, 3), "breakdown_s": cv_clock.rounded()},
        "speedup": round(t_pv / t_cv, 3),
        "speedup_cells_only": round(pv_clock["cells"] / cv_clock["cells"], 3),
        "n_cells": len(cells),
        "iia_identical_all_cells": all(c["rows_differing"] == 0 for c in cells),
        "max_abs_iia_diff": max(abs(c["iia_pyvene"] - c["iia_causalvar"]) for c in cells),
        "max_abs_logit_diff": max(c["max_abs_logit_diff"] for c in cells),
        "cells": cells,
    }
    if verbose:
        print_table(cells, title="(a) every cell")
    return result, (engine, bases, prepared, acts)


# ------------------------------------------------------------------ (d)
def cost(lm, engine, bases, prepared, acts, sites, repeats: int) -> dict:
    """Per-cell evaluation time at each layer against (N - L) / N of a plain forward of the same bases."""
    n = lm.n_layers
    size = engine.batch_size
    chunks = [bases.select(slice(i, i + size)).to(lm.device) for i in range(0, len(bases), size)]
    fwd = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.inference_mode():
            for chunk in chunks:
                lm.forward(chunk).float().cpu()
        fwd.append(time.perf_counter() - t0)
    t_fwd = min(fwd)
    f = Neurons().build(lm.d_model)
    cells = []
    for site in sites:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            engine.run(prepared, site, f, acts[site])
            times.append(time.perf_counter() - t0)
        measured = min(times)
        ideal = (n - site.layer) / n * t_fwd
        cells.append({"layer": site.layer, "position": site.position, "measured_s": round(measured, 5),
                      "ideal_s": round(ideal, 5), "ratio": round(measured / ideal, 4)})
    per_layer = {}
    for c in cells:
        worst = per_layer.get(c["layer"])
        if worst is None or c["ratio"] > worst["ratio"]:
            per_layer[c["layer"]] = {"layer": c["layer"], "worst_position": c["position"], "ratio": c["ratio"],
                                     "measured_s": c["measured_s"], "ideal_s": c["ideal_s"]}
    return {"plain_forward_s": round(t_fwd, 5), "plain_forward_all_s": [round(t, 5) for t in fwd],
            "n_layers": n, "repeats": repeats, "ideal": "(N - L) / N * plain_forward_s",
            "cells": cells, "per_layer": [per_layer[k] for k in sorted(per_layer)],
            "max_ratio": max(c["ratio"] for c in cells)}


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    setup_threads(args.threads)
    lm, t_load = load_lm(args)
    task = cv.tasks.ioi(lm)
    layers = parse_layers(args.layers, lm.n_layers)
    positions = parse_list(args.positions)
    sites = [cv.Site(layer, pos) for layer in layers for pos in positions]
    ds = cv.CounterfactualDataset.generate(task.causal_model, args.variable, args.pairs, seed=args.seed)
    print(f"sweep: {len(layers)} layers x {len(positions)} positions, {args.pairs} pairs of {args.variable}, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads (model loaded in {t_load:.1f}s)", flush=True)

    warm_up_all(lm, task, ds, sites, args.batch_size)
    res_a, (engine, bases, prepared, acts) = sweep(lm, task, ds, sites, args.batch_size, args.verbose)
    res_d = None if args.skip_cost else cost(lm, engine, bases, prepared, acts, sites, args.repeats)

    targets = {
        "(a) speedup vs pyvene": target(res_a["speedup"], 5, ">=", "x"),
        "(a) identical IIA per cell": {"value": res_a["iia_identical_all_cells"], "target": "identical",
                                       "met": res_a["iia_identical_all_cells"]},
    }
    if res_d is not None:
        targets["(d) max measured/ideal"] = target(res_d["max_ratio"], 1.3, "<=")
    payload = {"args": vars(args), "model_load_s": round(t_load, 2),
               "layers": layers, "positions": positions, "n_pairs": len(ds), "dataset_report": ds.report,
               "sweep": res_a, "cost": res_d, "targets": targets}
    path = write_json("sweep", payload, args.out, lm.device)

    print_table([{"side": side, "total_s": res_a[side]["total_s"],
                  **{k: v for k, v in res_a[side]["breakdown_s"].items()}} for side in ("pyvene", "causalvar")],
                title=f"(a) full-vector sweep, {res_a['n_cells']} cells")
    print(f"speedup {res_a['speedup']:.2f}x (cells only {res_a['speedup_cells_only']:.2f}x); "
          f"IIA identical in every cell: {res_a['iia_identical_all_cells']}; "
          f"max |dIIA| {res_a['max_abs_iia_diff']:.4f}; max |dlogit| {res_a['max_abs_logit_diff']:.2e}")
    if res_d is not None:
        print_table(res_d["per_layer"], ["layer", "worst_position", "measured_s", "ideal_s", "ratio"],
                    title=f"(d) one cell vs (N-L)/N of a plain forward ({res_d['plain_forward_s']:.3f}s)")
    print_targets(targets)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
