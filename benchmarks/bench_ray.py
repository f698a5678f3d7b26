"""The Ray executor's cost (issue 14): the same 2 × 30-cell sweep in-process and on a local 2-worker Ray, in
one run, with the wall time of each, the overhead Ray adds per cell, and whether the tables are identical.

The sweep: IOI on SmolLM2, both MIB variables (``output_token``, ``output_position``), the full vector at
every layer at ``last`` (30 cells each), ``--pairs`` test pairs per set. Ray's time includes starting the
local cluster, putting the sweep's data (the model with it) into the object store and each actor's taking
it; ``startup_seconds`` is that part, measured by a sweep of one cell first.

    python benchmarks/bench_ray.py [--pairs 64] [--threads 1]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import base_parser, load_lm, print_table, setup_threads, write_json  # noqa: E402

import causalvar as cv  # noqa: E402
from featurizers import Neurons  # noqa: E402

COLUMNS = ["variable", "featurizer", "layer", "position", "dataset", "iia", "n", "baseline"]


def parser():
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=64, help="test pairs per counterfactual set")
    p.add_argument("--workers", type=int, default=2, help="Ray actors")
    return p


def main(argv=None) -> int:
    import ray

    args = parser().parse_args(argv)
    setup_threads(args.threads)
    lm, _ = load_lm(args)
    task = cv.tasks.ioi(lm)
    kw = dict(layers=range(lm.n_layers), positions=["last"], n_train=0, n_test=args.pairs, seed=args.seed,
              batch_size=args.batch_size, progress=False)
    variables = ["output_token", "output_position"]
    t0 = time.perf_counter()
    here = cv.localize(lm, task, variables, Neurons(), **kw)
    in_process = time.perf_counter() - t0
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    cv.localize(lm, task, variables[0], Neurons(), **{**kw, "layers": [0]}, executor=cv.RayExecutor(num_workers=args.workers))
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    there = cv.localize(lm, task, variables, Neurons(), **kw, executor=cv.RayExecutor(num_workers=args.workers))
    on_ray = time.perf_counter() - t0
    ray.shutdown()
    cells = len({(r["variable"], r["layer"]) for r in here.rows})
    out = {"args": vars(args), "cells": cells, "in_process_seconds": round(in_process, 2),
           "ray_seconds": round(on_ray, 2), "ray_workers": args.workers, "startup_seconds": round(startup, 2),
           "ray_overhead_per_cell_seconds": round((on_ray - in_process) / cells, 3),
           "identical_tables": bool(there.table[COLUMNS].equals(here.table[COLUMNS]))}
    print_table([out], ["cells", "in_process_seconds", "ray_seconds", "ray_workers", "startup_seconds",
                        "ray_overhead_per_cell_seconds", "identical_tables"], title="the same sweep in-process and on Ray")
    path = write_json("ray", out, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
