"""Issue 15 (5): would cohort training pay here? One training step of several cells, alone and stacked.

Cohort training would train the featurizers of several cells that share base rows in one batched
pass: the cells' rows stacked into one suffix run (each cell's rows interchanged by its own
featurizer), one backward. Before building it, this script measures what it could gain: one AdamW-
style step (forward of the suffix from the cell's block, loss, backward into each DAS) of C cells
  - alone: C suffix runs of ``--batch`` rows each, as training runs them today;
  - stacked: one suffix run of C x ``--batch`` rows, each cell's rows patched by its own featurizer.
Two cohorts: C variables at one site (every row intervened at the same token), and the C positions
of one layer (``io``, ``s2``, ``last``: a stacked run recomputes from the earliest of them, where alone
each recomputes from its own; key/value reuse skips the positions before). Timings are the minimum
over ``--repeats`` of the mean over ``--steps`` steps, alternating; the stacked logits are checked
against the cells' own.

    python benchmarks/bench_cohort.py --threads 1                  # layers 6, 18; 3 cells; 32 rows
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import POSITIONS, base_parser, load_lm, parse_list, setup_threads, write_json  # noqa: E402

import causalvar as cv  # noqa: E402
from causalvar.engine import Engine, _patch  # noqa: E402
from causalvar.sites import Site  # noqa: E402
from featurizers import DAS  # noqa: E402


def parser():
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--layers", default="6,18", help="comma-separated layers")
    p.add_argument("--positions", default=",".join(POSITIONS), help="the positions cohort (and the site of "
                   "the variables cohort: the first)")
    p.add_argument("--cells", type=int, default=3, help="cells of the variables cohort")
    p.add_argument("--batch", type=int, default=32, help="training rows per cell and step")
    p.add_argument("--dim", type=int, default=32, help="DAS subspace size")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    return p


def step_alone(engine, prepared, sites, feats, sources):
    """Today: one suffix run and one backward per cell."""
    outs = []
    for site, feat, src in zip(sites, feats, sources):
        logits = engine.run_chunk(prepared, 0, site, feat, src)
        logits.logsumexp(-1).mean().backward()
        outs.append(logits.detach())
    return torch.cat(outs)


def step_stacked(engine, stacked, sites, feats, sources, b):
    """A cohort: every cell's rows in one suffix run from the shared block, one backward."""
    adapter, start = engine.adapter, stacked.starts[sites[0]]
    rows, state = stacked.batches[0], stacked.states[0]
    hidden = state["hidden"][start]
    parts, positions = [], []
    for c, (site, feat, src) in enumerate(zip(sites, feats, sources)):
        pos = rows.position(site.position)[c * b:(c + 1) * b]
        parts.append(_patch(hidden[c * b:(c + 1) * b], pos, feat, src))
        positions.append(pos)
    logits = adapter.run_suffix(state, start, torch.cat(parts), rows, torch.cat(positions))
    loss = sum(logits[c * b:(c + 1) * b].logsumexp(-1).mean() for c in range(len(sites)))
    loss.backward()
    return logits.detach()


def timed(fn, steps):
    t0 = time.perf_counter()
    for _ in range(steps):
        out = fn()
    return (time.perf_counter() - t0) / steps, out


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    setup_threads(args.threads)
    lm, t_load = load_lm(args)
    task = cv.tasks.ioi(lm)
    data = task.counterfactual_sets("output_token", args.batch, seed=args.seed)[0]
    bases, sources = task.encode(data.bases), task.encode(data.sources)
    positions = parse_list(args.positions)
    engine = Engine(lm, batch_size=args.batch * max(args.cells, len(positions)))
    results = []
    for layer in (int(x) for x in parse_list(args.layers)):
        cohorts = {"variables at one site": [Site(layer, positions[0])] * args.cells,
                   "positions of one layer": [Site(layer, p) for p in positions]}
        for kind, sites in cohorts.items():
            distinct = list(dict.fromkeys(sites))
            _, src_acts = engine.capture(sources, distinct)
            _, _, whole = engine.capture_prepared(bases, distinct)
            one = engine.take(whole, torch.arange(args.batch))
            stacked = engine.take(whole, torch.arange(args.batch).repeat(len(sites)))  # C copies of the rows
            torch.manual_seed(args.seed)
            feats = [DAS(dim=args.dim).build(lm.d_model) for _ in sites]
            srcs = [src_acts[s] for s in sites]
            times = {"alone": [], "stacked": []}
            for _ in range(args.repeats):
                t, alone_out = timed(lambda: step_alone(engine, one, sites, feats, srcs), args.steps)
                times["alone"].append(t)
                t, stacked_out = timed(lambda: step_stacked(engine, stacked, sites, feats, srcs, args.batch),
                                       args.steps)
                times["stacked"].append(t)
            a, s = min(times["alone"]), min(times["stacked"])
            diff = float((alone_out - stacked_out).abs().max())
            results.append({"layer": layer, "cohort": kind, "cells": len(sites), "sites": [str(x) for x in sites],
                            "alone_s_per_step": round(a, 4), "stacked_s_per_step": round(s, 4),
                            "speedup": round(a / s, 3), "max_abs_logit_diff": diff})
            print(f"layer {layer}, {kind}: alone {a:.3f} s/step, stacked {s:.3f} s/step -> {a / s:.2f}x "
                  f"(|dlogit| {diff:.1e})", flush=True)
    payload = {"args": vars(args), "model_load_s": round(t_load, 2), "cohorts": results,
               "best_speedup": max(r["speedup"] for r in results)}
    path = write_json("cohort", payload, args.out, lm.device)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
