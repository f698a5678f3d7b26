"""The ``causalvar`` command.

    causalvar demo [--out runs/demo]     IOI on the embedded SmolLM2-135M: where do the variables live?
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def task_accuracy(lm, task, n: int = 256, seed: int = 0, batch_size: int = 64) -> float:
    """The network's accuracy on ``n`` sampled inputs of ``task`` (no intervention)."""
    from .engine import Engine

    settings = task.causal_model.sample(n, seed=seed)
    labels = [task.causal_model.run(s)[task.causal_model.output] for s in settings]
    logits, _ = Engine(lm, task, batch_size=batch_size).capture(task.encode(settings), [])
    return float(task.correct(logits, labels).float().mean())


def demo(args) -> int:
    import causalvar as cv
    from featurizers import Neurons

    t0 = time.time()
    out = Path(args.out)
    print("loading the embedded SmolLM2-135M ...", flush=True)
    lm = cv.load_model("smollm2-135m")
    task = cv.tasks.ioi(lm)
    acc = task_accuracy(lm, task)
    print(f"SmolLM2-135M answers {acc:.1%} of 256 random IOI prompts correctly", flush=True)
    layers = sorted(set(range(0, lm.n_layers, 3)) | {lm.n_layers - 1})
    res = cv.localize(lm, task, ["output_token", "output_position"], Neurons(), layers=layers,
                      positions=["io", "s2", "last"], n_train=0, n_test=args.n_test, seed=0,
                      batch_size=args.batch_size, out=out)
    res.meta["task_accuracy"] = acc
    res.save(out)
    res.heatmap(out / "heatmap.png", title=f"IOI on SmolLM2-135M: full-vector IIA (n={args.n_test})")
    print(res.table[["variable", "featurizer", "layer", "position", "iia", "n"]].to_string(index=False))
    for v, report in res.meta["data"].items():
        print(f"{v}: " + "; ".join(report))
    print(f"wrote {out / 'results.csv'}, {out / 'results.json'} and {out / 'heatmap.png'} "
          f"in {time.time() - t0:.0f} s")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="causalvar", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="localize IOI variables in the embedded SmolLM2-135M")
    p.add_argument("--out", default="runs/demo", help="results folder (default: runs/demo)")
    p.add_argument("--n-test", type=int, default=128, help="test pairs per variable (default: 128)")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
