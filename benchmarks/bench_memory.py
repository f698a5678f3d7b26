"""Issue 4 (c): peak resident memory of causalvar's full-vector sweep (the causalvar side of (a)).

The sweep runs in a fresh subprocess (this script with ``--child``), which reports:
- ``peak_gb``: the whole process's peak resident memory, model loading included (the number the target
  is checked against): ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, read once the model is loaded and
  again at the end, the larger of the two;
- ``sweep_peak_gb``: the peak over the sweep alone (``VmHWM`` from ``/proc/self/status`` at the end), after
  resetting the high-water mark once the model is loaded (``echo 5 > /proc/self/clear_refs``, which
  resets ``ru_maxrss`` too, hence the two readings above; absent where the kernel refuses);
- the resident memory after imports and after loading the model, for scale.
GB means 2**30 bytes.

``--path engine`` (default) runs exactly the causalvar path of bench_sweep.py (encode, capture every
site of every source, prepare the bases, one ``engine.run`` + ``task.correct`` per cell);
``--path localize`` runs ``cv.localize(..., Neurons(), n_train=0, filter_correct=False)`` on the same pairs.

    python benchmarks/bench_memory.py                               # the issue's sizes
    python benchmarks/bench_memory.py --layers 0,15,29 --pairs 32
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import (POSITIONS, base_parser, peak_rss_gb, print_table, print_targets, setup_threads,  # noqa: E402
                    target, write_json)

LIMIT_GB = 2.5


def parser():
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--layers", default="all", help='"all", "0,15,29" or a range "0:30:3"')
    p.add_argument("--positions", default=",".join(POSITIONS), help="comma-separated IOI roles")
    p.add_argument("--pairs", type=int, default=256, help="counterfactual pairs")
    p.add_argument("--path", choices=["engine", "localize"], default="engine", help="what the child runs")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p


def reset_peak() -> bool:
    """Reset the kernel's resident high-water mark (VmHWM) of this process."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(args) -> dict:
    """Runs in the fresh subprocess: load, sweep, report memory as JSON on the last stdout line."""
    setup_threads(args.threads)
    import torch

    import causalvar as cv
    from causalvar.cli import parse_layers
    from common import load_lm, parse_list
    from featurizers import Neurons

    after_import = peak_rss_gb()
    lm, t_load = load_lm(args)
    after_load = peak_rss_gb()
    task = cv.tasks.ioi(lm)
    layers = parse_layers(args.layers, lm.n_layers)
    positions = parse_list(args.positions)
    sites = [cv.Site(layer, pos) for layer in layers for pos in positions]
    ds = cv.CounterfactualDataset.generate(task.causal_model, args.variable, args.pairs, seed=args.seed)
    was_reset = reset_peak()
    t0 = time.perf_counter()
    if args.path == "engine":
        from bench_sweep import causalvar_cell, causalvar_setup
        from common import Clock

        engine = cv.Engine(lm, batch_size=args.batch_size)
        _, prepared, acts = causalvar_setup(engine, task, ds, sites, Clock())
        iia = [cv.iia(causalvar_cell(engine, task, prepared, acts, s, ds.labels, lm.d_model)[1]) for s in sites]
    else:
        res = cv.localize(lm, task, args.variable, Neurons(), layers=layers, positions=positions, n_train=0,
                          n_test=args.pairs, seed=args.seed, data=ds, batch_size=args.batch_size,
                          filter_correct=False, progress=False)
        iia = [r["iia"] for r in res.rows]
    seconds = time.perf_counter() - t0
    end = peak_rss_gb()
    # the reset also resets ru_maxrss (both read the kernel's hiwater_rss): the process peak is the larger
    # of the peak before the reset and the one after it
    out = {"peak_gb": max(after_load["ru_maxrss_gb"], end["ru_maxrss_gb"]),
           "sweep_peak_gb": end.get("vmhwm_gb", end["ru_maxrss_gb"]) if was_reset else None, "hwm_reset": was_reset,
           "rss_after_import_gb": after_import.get("vmrss_gb"), "rss_after_load_gb": after_load.get("vmrss_gb"),
           "peak_after_load_gb": after_load["ru_maxrss_gb"], "rss_end_gb": end.get("vmrss_gb"),
           "model_load_s": round(t_load, 2), "sweep_s": round(seconds, 3), "n_cells": len(sites),
           "mean_iia": sum(iia) / len(iia), "torch_threads": torch.get_num_threads(), "device": str(lm.device)}
    return out


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return {}
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--child"]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *forwarded]
    print(f"memory: running the causalvar sweep ({args.path}) in a fresh process: {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the child process failed with exit status {proc.returncode}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    mem = json.loads(lines[-1])
    targets = {"(c) peak resident memory (GB)": target(mem["peak_gb"], LIMIT_GB, "<=", " GB")}
    payload = {"args": {k: v for k, v in vars(args).items() if k != "child"}, "memory": mem, "targets": targets}
    path = write_json("memory", payload, args.out, mem.get("device"))
    print_table([{"measure": k, "GB": mem[k]} for k in
                 ("rss_after_import_gb", "rss_after_load_gb", "peak_after_load_gb", "sweep_peak_gb", "peak_gb")
                 if mem.get(k) is not None],
                title=f"(c) memory of the causalvar sweep, {mem['n_cells']} cells ({mem['sweep_s']:.1f}s)")
    print_targets(targets)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
