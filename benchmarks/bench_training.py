"""The training defaults' evidence (issue 15): IIA and time of a DAS cell trained with the old defaults
(a fixed 3 epochs), the new ones (to convergence: patience 5, the learning rate halved on each plateau epoch, at most 50 epochs) and a long run (50
epochs, no early stopping), on the equality MLP (``left``, blocks 0 and 1, k=8) and on one IOI cell of
SmolLM2 (``output_position`` at layer 18, ``s2``, k=32, the demo's cell). Writes
``benchmarks/results/training.json`` and prints the table of ``benchmarks/README.md``.

    python benchmarks/bench_training.py [--skip-ioi] [--threads 1]
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import base_parser, load_lm, print_table, setup_threads, write_json  # noqa: E402

import causalvar as cv  # noqa: E402
from featurizers import DAS  # noqa: E402

SETTINGS = {"old defaults (3 epochs)": dict(epochs=3, patience=3),
            "new defaults (patience 5, lr halved on plateau, at most 50)": dict(),
            "long run (50 epochs, no early stopping)": dict(epochs=50, patience=50)}


def parser():
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--skip-ioi", action="store_true", help="only the equality MLP")
    p.add_argument("--n-train", type=int, default=256, help="IOI training pairs per set")
    return p


def run(name: str, model, task, variable: str, feat, layers, positions, **kw) -> list[dict]:
    rows = []
    for setting, training in SETTINGS.items():
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cv.ConvergenceWarning)  # the 3-epoch runs stop at their bound
            res = cv.localize(model, task, variable, feat.clone(), layers=layers, positions=positions, progress=False,
                              **kw, **training)
        seconds = time.perf_counter() - t0
        for _, r in res.table.groupby(["layer", "position"], dropna=False, sort=False):
            rows.append({"case": name, "setting": setting, "layer": r["layer"].iloc[0],
                         "iia": round(float(r["iia"].mean()), 4), "epochs_run": int(r["epochs_run"].iloc[0]),
                         "converged": bool(r["converged"].iloc[0]), "seconds": round(seconds, 1)})
    return rows


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    setup_threads(args.threads)
    rows = run("equality MLP, left, DAS k=8", cv.tasks.equality_mlp(), cv.tasks.hierarchical_equality(), "left",
               DAS(dim=8), [0, 1], None, n_train=2000, n_test=500, seed=args.seed)
    if not args.skip_ioi:
        lm, _ = load_lm(args)
        rows += run("IOI on SmolLM2, output_position, L18 s2, DAS k=32", lm, cv.tasks.ioi(lm), "output_position",
                    DAS(dim=32), [18], ["s2"], n_train=args.n_train, n_test=128, seed=args.seed,
                    batch_size=args.batch_size, train_batch_size=32)
    print_table(rows, ["case", "setting", "layer", "iia", "epochs_run", "converged", "seconds"],
                title="DAS trained with the old defaults, the new ones and a long run (seconds: the whole call)")
    path = write_json("training", {"args": vars(args), "rows": rows}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
