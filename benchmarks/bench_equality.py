"""Issue 3's quality benchmark: the DAS paper's result on hierarchical equality, every basis side by side.

On the package's equality MLP, localize ``left`` (= w == x) at blocks 0-2 with: DAS (k=8), the best
8-neuron alignment found by greedy forward selection on the training pairs (and the first 8 neurons),
PCA (top 8), an SAE trained with sae-lens (top-k, k=8), DBM over neurons, the supervised
mean-difference dictionary and Boundless DAS. Writes ``benchmarks/results/equality.json`` and prints
a markdown table (the README's).

    python benchmarks/bench_equality.py [--n-train 4000] [--n-test 1000] [--epochs 20]
"""
from __future__ import annotations

import argparse
import time

import torch

import causalvar as cv
from causalvar.splits import build_splits, evaluate
from featurizers import DAS, DBM, PCA, SAE, BoundlessDAS, Neurons, SupervisedDictionary

from common import write_json


#: the featurizers scored beside random same-size controls (the others are not of subspace form, or the full vector)
CONTROLLED = ("das", "best_neurons", "pca", "dbm_neurons", "boundless_das")


def greedy_neurons(engine, split, site, k: int, d: int) -> list[int]:
    """Add, one at a time, the neuron whose inclusion gives the best IIA on ``split``."""
    chosen: list[int] = []
    for _ in range(k):
        scores = {i: evaluate(engine, split, site, Neurons(dims=chosen + [i]).build(d))[0]
                  for i in range(d) if i not in chosen}
        chosen.append(max(scores, key=scores.get))
    return sorted(chosen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--controls", type=int, default=5, help="random same-size controls per controlled featurizer")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)  # a tiny network: one thread is fastest
    t0 = time.perf_counter()
    task, mlp = cv.tasks.hierarchical_equality(), cv.tasks.equality_mlp()
    d, layers, k = mlp[0][0].out_features, [0, 1, 2], args.k
    engine = cv.Engine(cv.TorchModel(mlp))
    ds = cv.CounterfactualDataset.generate(task.causal_model, "left", args.n_train, seed=args.seed + 1)
    (train_split,), _ = build_splits(engine, task, ds, [cv.Site(l) for l in layers], [None], seed=args.seed)
    best = {l: greedy_neurons(engine, train_split, cv.Site(l), k, d) for l in layers}
    rows = []
    for layer in layers:
        feats = [DAS(dim=k), Neurons(dims=best[layer]), Neurons(dims=range(k)), PCA(n_components=k),
                 SAE(k=k, d_sae=4 * d), DBM(Neurons()), SupervisedDictionary(), BoundlessDAS()]
        names = ["das", "best_neurons", "first_neurons", "pca", "sae", "dbm_neurons", "supervised", "boundless_das"]
        scored = {}  # featurizer name -> its row: those of subspace form with random controls, the others without
        for group, controls in (([f for f, m in zip(feats, names) if m in CONTROLLED], args.controls),
                                ([f for f, m in zip(feats, names) if m not in CONTROLLED], 0)):
            res = cv.localize(mlp, task, "left", group, layers=[layer], n_train=args.n_train, n_test=args.n_test,
                              epochs=args.epochs, lr=1e-2, seed=args.seed, controls=controls, progress=False)
            scored.update({row["featurizer"]: row for row in res.rows})
        for name, feat in zip(names, feats):
            row = scored[feat.name]
            rows.append({"method": name, "featurizer": row["featurizer"], "layer": layer, "iia": row["iia"],
                         "ci_low": row["ci_low"], "ci_high": row["ci_high"], "n": row["n"], "baseline": row["baseline"],
                         **{key: row[key] for key in ("control_mean", "control_max", "kept", "of", "size",
                                                      "epochs_run") if key in row}})
    table = {}
    for r in rows:
        cell = f"{r['iia']:.3f}"
        if "control_max" in r:
            cell += f" ({r['control_mean']:.2f} / {r['control_max']:.2f})"
        table.setdefault(r["method"], {})[r["layer"]] = cell
    lines = ["| featurizer | block 0 | block 1 | block 2 |", "|---|---|---|---|"]
    lines += [f"| {m} | " + " | ".join(table[m][l] for l in layers) + " |" for m in table]
    lines += ["", f"In parentheses: the mean and the best IIA of {args.controls} random same-size controls "
              "(random subspaces of DAS's and PCA's dimension, random neurons and masks of the same size); "
              f"the no-effect baseline is {rows[0]['baseline']:.3f}."]
    print("\n".join(lines))
    write_json("equality", {
        "args": vars(args), "best_neurons": {str(l): best[l] for l in layers},
        "rows": rows, "markdown": "\n".join(lines), "seconds": round(time.perf_counter() - t0, 1),
        "target": "DAS IIA >= 0.95 for left at the best layer; the best 8-neuron alignment clearly lower"},
        args.out)


if __name__ == "__main__":
    main()
