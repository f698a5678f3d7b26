"""Issue 15 (4): the one-off cost of a sweep's splits, two passes over the bases against one.

Before the one-pass capture, ``build_splits`` ran every base row twice: a capture pass (the sites'
activations and the logits MIB's filter judges) and a prepare pass (every row's prefix state, from which
each cell's suffix runs start). Now one forward per base row does all three
(``Engine.capture_prepared``; each split then takes its rows' states with ``Engine.take``). The sources
are captured once either way. Both paths run here side by side on the same rows and sites (the
minimum of ``--repeats`` timings each, alternating, each on a new engine since an engine reuses the
captures it made), and their outputs are checked equal: logits, activations and the prefix states
each split is given.

    python benchmarks/bench_splits.py --threads 1          # 256 IOI pairs, every layer x io,s2,last
    python benchmarks/bench_splits.py --layers 0,15,29 --pairs 64
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import POSITIONS, base_parser, load_lm, parse_list, setup_threads, write_json  # noqa: E402

import causalvar as cv  # noqa: E402
from causalvar.cli import parse_layers  # noqa: E402
from causalvar.engine import Engine  # noqa: E402
from causalvar.sites import Site  # noqa: E402


def parser():
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--layers", default="all", help='"all", "0,15,29" or a range "0:30:3"')
    p.add_argument("--positions", default=",".join(POSITIONS), help="comma-separated IOI roles")
    p.add_argument("--pairs", type=int, default=256, help="base/source pairs")
    p.add_argument("--repeats", type=int, default=3, help="timings of each path; the minimum is reported")
    return p


def two_passes(engine: Engine, bases, sources, sites, idx):
    """The former path: capture the bases, prepare them again for the split's rows, capture the sources."""
    base_out, base_acts = engine.capture(bases, sites)
    prepared = engine.prepare(bases.select(idx), sites)
    src_out, src_acts = engine.capture(sources, sites)
    return base_out, base_acts, prepared, src_out, src_acts


def one_pass(engine: Engine, bases, sources, sites, idx):
    """The current path: one forward per base row, the split's prefix states taken from it."""
    base_out, base_acts, whole = engine.capture_prepared(bases, sites)
    prepared = engine.take(whole, idx)
    src_out, src_acts = engine.capture(sources, sites)
    return base_out, base_acts, prepared, src_out, src_acts


def same(a, b) -> bool:
    """Equal logits, activations and prefix states (every tensor of every chunk, bit for bit)."""
    flat = lambda x: ([x] if isinstance(x, torch.Tensor) else
                      [t for v in (x.values() if isinstance(x, dict) else x) for t in flat(v)]
                      if isinstance(x, (dict, list, tuple)) else [])
    ta, tb = flat([a[0], a[1], a[2].states, a[3], a[4]]), flat([b[0], b[1], b[2].states, b[3], b[4]])
    return len(ta) == len(tb) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(ta, tb))


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    setup_threads(args.threads)
    lm, t_load = load_lm(args)
    task = cv.tasks.ioi(lm)
    data = task.counterfactual_sets(args.variable, args.pairs, seed=args.seed)[0]
    bases, sources = task.encode(data.bases), task.encode(data.sources)
    layers, positions = parse_layers(args.layers, lm.n_layers), parse_list(args.positions)
    sites = [Site(layer, pos) for layer in layers for pos in positions]
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))  # a split: every row, shuffled
    paths = {"two_passes": two_passes, "one_pass": one_pass}
    times = {k: [] for k in paths}
    outs = {}
    for _ in range(args.repeats):
        for name, fn in paths.items():
            engine = Engine(lm, batch_size=args.batch_size)  # a new one each time: an engine reuses its captures
            t0 = time.perf_counter()
            outs[name] = fn(engine, bases, sources, sites, idx)
            times[name].append(time.perf_counter() - t0)
            print(f"{name}: {times[name][-1]:.2f} s", flush=True)
    before, after = min(times["two_passes"]), min(times["one_pass"])
    payload = {"args": vars(args), "model_load_s": round(t_load, 2), "n_pairs": len(data), "n_sites": len(sites),
               "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
               "two_passes_s": round(before, 3), "one_pass_s": round(after, 3),
               "speedup": round(before / after, 3), "outputs_identical": same(outs["two_passes"], outs["one_pass"])}
    path = write_json("splits", payload, args.out, lm.device)
    print(f"two passes {before:.2f} s, one pass {after:.2f} s: {before / after:.2f}x; "
          f"identical: {payload['outputs_identical']}; wrote {path}")


if __name__ == "__main__":
    main()
