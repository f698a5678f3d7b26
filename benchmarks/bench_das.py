"""Issue 4 (b): a DAS training sweep, causalvar against a plain pyvene training loop.

Every layer at one position (``--position``, default "last"), IOI on SmolLM2, one CounterfactualDataset
of ``--n-train + --n-test`` pairs (seed ``--seed``, no filtering) split by
``causalvar.splits.build_splits(..., [n_train, n_test], seed, filter_correct=False)``. Per cell, both
sides:
- build ``DAS(dim=k)`` right after ``torch.manual_seed(seed)`` (the same initial rotation);
- train ``--epochs`` epochs with AdamW(lr) on cross-entropy at each base's read position against the
  counterfactual answer token, over chunks of ``--batch-size`` rows of the training split in order,
  visited in the order ``torch.randperm(n_chunks, generator=torch.Generator().manual_seed(seed))``
  draws per epoch (one generator continued across epochs), no validation / early stopping;
- score IIA on the held-out split.
causalvar trains with ``causalvar.train.train`` (suffix execution on captured sources) and scores with
``engine.run``; pyvene trains through a ``pv.IntervenableModel`` holding the same kind of featurizer
wrapped by ``causalvar.pyvene_bridge.intervention`` (a full source forward plus a full base forward and
a backward per step) and scores with ``pyvene_logits``. The causalvar total includes ``build_splits``
(encoding, capture of bases and sources, base prefix passes). Cells run interleaved (causalvar, then
pyvene) so that a busy machine slows both alike.

    python benchmarks/bench_das.py                                   # the issue's sizes
    python benchmarks/bench_das.py --layers 0,15,29 --n-train 32 --n-test 32 --epochs 1
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from causalvar.cli import parse_layers  # noqa: E402
from common import (Clock, base_parser, load_lm, print_table, print_targets,  # noqa: E402
                    setup_threads, target, warm_up, write_json)

import causalvar as cv  # noqa: E402
from causalvar.splits import build_splits  # noqa: E402
from causalvar.pyvene_bridge import intervenable, pyvene_logits  # noqa: E402
from causalvar.train import train  # noqa: E402
from featurizers import DAS  # noqa: E402


def parser():
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--layers", default="all", help='"all", "0,15,29" or a range "0:30:3"')
    p.add_argument("--position", default="last", help="the IOI role intervened at")
    p.add_argument("--dim", type=int, default=16, help="DAS subspace size k")
    p.add_argument("--n-train", type=int, default=256, help="training pairs")
    p.add_argument("--n-test", type=int, default=256, help="held-out pairs for IIA")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate")
    p.add_argument("--verbose", action="store_true", help="print every cell")
    return p


def new_das(dim: int, d: int, seed: int) -> DAS:
    torch.manual_seed(seed)
    return DAS(dim=dim).build(d)


def slices(n: int, size: int) -> list[slice]:
    """The chunks causalvar's engine makes of a split's rows: consecutive, in order."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def pyvene_locations(task, b, s, site):
    pb, ps = b.position(site.position), s.position(site.position)
    return {"sources->base": ([[[int(p)] for p in ps]], [[[int(p)] for p in pb]])}


def pyvene_train(lm, task, site, featurizer, bases, sources, targets, epochs: int, lr: float, seed: int,
                 batch_size: int) -> dict:
    """The plain pyvene training loop, replicating causalvar.train.train's steps exactly."""
    model = intervenable(lm, site, featurizer)
    params = [p for p in featurizer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    chunks = slices(len(bases), batch_size)
    total, step = max(1, epochs * len(chunks)), 0
    history = {"loss": [], "epochs": 0}
    for _ in range(epochs):
        featurizer.train()
        losses = []
        for k in torch.randperm(len(chunks), generator=gen).tolist():
            featurizer.set_progress(step / total)
            c = chunks[k]
            b, s = bases.select(c), sources.select(c)
            _, cf = model(b.inputs, [s.inputs], unit_locations=pyvene_locations(task, b, s, site))
            logits = cf.logits[torch.arange(len(b)), b.read]
            loss = F.cross_entropy(logits.float(), targets[c]) + featurizer.regularizer()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
        featurizer.set_progress(min(1.0, step / total))
        history["loss"].append(sum(losses) / len(losses))
        history["epochs"] += 1
    featurizer.eval()
    return history


def warm_up_all(lm, task, ds, site, args) -> None:
    """Both training paths once on a few rows, untimed."""
    small = ds.subset(range(min(16, len(ds))))
    engine = cv.Engine(lm, batch_size=8)
    (tr, te), _ = build_splits(engine, task, small, [site], [len(small) // 2, len(small) - len(small) // 2],
                               seed=args.seed, filter_correct=False)
    das = new_das(args.dim, lm.d_model, args.seed)
    train(engine, das, site, tr, None, epochs=1, lr=args.lr, seed=args.seed, progress=False)
    engine.run(te.prepared, site, das, te.sources[site])
    bases, sources = task.encode(small.bases), task.encode(small.sources)
    warm_up(lm, bases)
    das = new_das(args.dim, lm.d_model, args.seed)
    pyvene_train(lm, task, site, das, bases, sources, task.targets(small.labels), 1, args.lr, args.seed, 8)
    pyvene_logits(lm, bases, sources, site, das, batch_size=8)


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    setup_threads(args.threads)
    lm, t_load = load_lm(args)
    task = cv.tasks.ioi(lm)
    d = lm.d_model
    layers = parse_layers(args.layers, lm.n_layers)
    sites = [cv.Site(layer, args.position) for layer in layers]
    ds = cv.CounterfactualDataset.generate(task.causal_model, args.variable, args.n_train + args.n_test,
                                           seed=args.seed)
    print(f"DAS(dim={args.dim}) sweep: {len(layers)} layers at '{args.position}', {args.n_train} train / "
          f"{args.n_test} test pairs of {args.variable}, {args.epochs} epochs, lr {args.lr}, batch "
          f"{args.batch_size}, {torch.get_num_threads()} threads (model loaded in {t_load:.1f}s)", flush=True)
    warm_up_all(lm, task, ds, sites[0], args)

    cv_clock, pv_clock = Clock(), Clock()
    # causalvar's one-off work
    engine = cv.Engine(lm, batch_size=args.batch_size)
    with cv_clock("build_splits"):
        (tr, te), kept = build_splits(engine, task, ds, sites, [args.n_train, args.n_test], seed=args.seed,
                                      filter_correct=False)
    # pyvene's one-off work: the same rows, encoded the same way
    with pv_clock("encode"):
        bases_all, sources_all = task.encode(kept.bases), task.encode(kept.sources)
        tr_idx, te_idx = torch.tensor(tr.rows), torch.tensor(te.rows)
        pv_tr = (bases_all.select(tr_idx), sources_all.select(tr_idx), task.targets([kept.labels[r] for r in tr.rows]))
        pv_te = (bases_all.select(te_idx), sources_all.select(te_idx))

    cells = []
    for i, site in enumerate(sites):
        t = {}
        # causalvar
        t0 = time.perf_counter()
        das_cv = new_das(args.dim, d, args.seed)
        t1 = time.perf_counter()
        hist_cv = train(engine, das_cv, site, tr, None, epochs=args.epochs, lr=args.lr, seed=args.seed,
                        progress=False)
        t2 = time.perf_counter()
        ours = engine.run(te.prepared, site, das_cv, te.sources[site])
        ok = task.correct(ours, te.labels)
        t3 = time.perf_counter()
        t["cv"] = {"init": t1 - t0, "train": t2 - t1, "evaluate": t3 - t2}
        # pyvene
        t0 = time.perf_counter()
        das_pv = new_das(args.dim, d, args.seed)
        t1 = time.perf_counter()
        hist_pv = pyvene_train(lm, task, site, das_pv, *pv_tr, args.epochs, args.lr, args.seed, args.batch_size)
        t2 = time.perf_counter()
        ref = pyvene_logits(lm, *pv_te, site, das_pv, batch_size=args.batch_size)
        ref_ok = task.correct(ref, te.labels)
        t3 = time.perf_counter()
        t["pv"] = {"init": t1 - t0, "train": t2 - t1, "evaluate": t3 - t2}
        for side, clock in (("cv", cv_clock), ("pv", pv_clock)):
            for k, v in t[side].items():
                clock.seconds[k] = clock[k] + v
        cell = {"layer": site.layer, "position": site.position,
                "iia_pyvene": cv.iia(ref_ok), "iia_causalvar": cv.iia(ok),
                "abs_iia_diff": abs(cv.iia(ref_ok) - cv.iia(ok)),
                "rows_differing": int((ref_ok != ok).sum()),
                "max_abs_logit_diff": float((ref - ours).abs().max()),
                "max_abs_R_diff": float((das_cv.R - das_pv.R).detach().abs().max()),
                "loss_causalvar": [round(x, 6) for x in hist_cv["loss"]],
                "loss_pyvene": [round(x, 6) for x in hist_pv["loss"]],
                "t_pyvene_s": round(sum(t["pv"].values()), 4), "t_causalvar_s": round(sum(t["cv"].values()), 4)}
        cells.append(cell)
        print(f"[{i + 1}/{len(sites)}] {site}: pyvene {cell['t_pyvene_s']:.2f}s iia {cell['iia_pyvene']:.3f} | "
              f"causalvar {cell['t_causalvar_s']:.2f}s iia {cell['iia_causalvar']:.3f} | max|dlogit| "
              f"{cell['max_abs_logit_diff']:.2e} max|dR| {cell['max_abs_R_diff']:.2e}", flush=True)
        del ref, ours

    t_pv, t_cv = pv_clock.total(), cv_clock.total()
    res = {
        "pyvene": {"total_s": round(t_pv, 3), "breakdown_s": pv_clock.rounded()},
        "causalvar": {"total_s": round(t_cv, 3), "breakdown_s": cv_clock.rounded()},
        "speedup": round(t_pv / t_cv, 3),
        "speedup_training_only": round(pv_clock["train"] / cv_clock["train"], 3),
        "n_cells": len(cells),
        "steps_per_cell": args.epochs * len(slices(args.n_train, args.batch_size)),
        "max_abs_iia_diff": max(c["abs_iia_diff"] for c in cells),
        "max_abs_logit_diff": max(c["max_abs_logit_diff"] for c in cells),
        "max_abs_R_diff": max(c["max_abs_R_diff"] for c in cells),
        "cells": cells,
    }
    targets = {"(b) speedup vs pyvene": target(res["speedup"], 3, ">=", "x"),
               "(b) max |IIA diff| per cell": target(res["max_abs_iia_diff"], 0.02, "<=")}
    payload = {"args": vars(args), "model_load_s": round(t_load, 2), "layers": layers,
               "dataset_report": kept.report, "das": res, "targets": targets}
    path = write_json("das", payload, args.out, lm.device)

    if args.verbose:
        print_table([{k: v for k, v in c.items() if not k.startswith("loss")} for c in cells], title="(b) every cell")
    print_table([{"side": side, "total_s": res[side]["total_s"], **res[side]["breakdown_s"]}
                 for side in ("pyvene", "causalvar")],
                title=f"(b) DAS(dim={args.dim}) training sweep, {len(cells)} cells x {res['steps_per_cell']} steps")
    print(f"speedup {res['speedup']:.2f}x (training only {res['speedup_training_only']:.2f}x); max |dIIA| "
          f"{res['max_abs_iia_diff']:.4f}; max |dlogit| {res['max_abs_logit_diff']:.2e}; "
          f"max |dR| {res['max_abs_R_diff']:.2e}")
    print_targets(targets)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
