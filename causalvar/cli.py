"""The ``causalvar`` command.

    causalvar demo [--out runs/demo]     IOI on the embedded SmolLM2-135M: where do the variables live?
    causalvar localize --task ioi --model smollm2-135m --featurizer das:32,neurons --layers 0:30:3 \
        --positions s2,last --out runs/ioi
                                         any built-in task, model and featurizers; writes a results
                                         folder (table, heatmap, MIB scores)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def task_accuracy(lm, task, n: int = 256, seed: int = 0, batch_size: int = 64) -> float:
    """The network's accuracy on ``n`` sampled inputs of ``task`` (no intervention), by the task's
    checker: the argmax token, or greedy decoding of the whole answer."""
    from .cells import _correct
    from .engine import Engine

    cm = task.causal_model
    settings = cm.sample(n, seed=seed)
    labels = [cm.run(s)[cm.output] for s in settings]
    n_tokens = task.n_answer_tokens(labels) if task.generates else None
    out, _ = Engine(lm, task, batch_size=batch_size).capture(task.encode(settings), [], n_tokens)
    return float(_correct(task, out, labels).float().mean())


def demo(args) -> int:
    """IOI on SmolLM2-135M: a full-vector sweep of both MIB variables, then neurons, PCA and DAS
    compared on the cells where the position signal lives."""
    import causalvar as cv
    from featurizers import DAS, PCA, Neurons

    t0 = time.time()
    out = Path(args.out)
    print("loading the embedded SmolLM2-135M ...", flush=True)
    lm = cv.load_model("smollm2-135m")
    task = cv.tasks.ioi(lm)
    acc = task_accuracy(lm, task)
    print(f"SmolLM2-135M answers {acc:.1%} of 256 random IOI prompts correctly", flush=True)

    print("\n1. where do the variables live? full-vector interchange, 11 layers x 3 positions", flush=True)
    layers = sorted(set(range(0, lm.n_layers, 3)) | {lm.n_layers - 1})
    sweep = cv.localize(lm, task, ["output_token", "output_position"], Neurons(), layers=layers,
                        positions=["io", "s2", "last"], n_train=0, n_test=args.n_test, seed=0,
                        batch_size=args.batch_size, out=out / "sweep")
    sweep.meta["task_accuracy"] = acc
    sweep.save(out / "sweep")
    sweep.heatmap(out / "sweep" / "heatmap.png", title=f"IOI on SmolLM2-135M: full-vector IIA (n={args.n_test} per set)")
    print(sweep.table[["variable", "layer", "position", "dataset", "iia", "n"]].to_string(index=False))

    k = 32
    print(f"\n2. which basis? output_position with {k} neurons, the top {k} PCA components, "
          f"and a trained {k}-dim DAS subspace", flush=True)
    bases = cv.localize(lm, task, "output_position", [Neurons(dims=range(k)), PCA(n_components=k), DAS(dim=k)],
                        layers=[12, 15, 18, 21], positions=["s2", "last"], n_train=args.n_train,
                        n_test=args.n_test // 2, epochs=2, lr=1e-2, seed=0, batch_size=32, out=out / "bases")
    bases.heatmap(out / "bases" / "heatmap.png", title=f"IOI output_position on SmolLM2-135M: bases (k={k})")
    print(bases.table[["featurizer", "layer", "position", "dataset", "iia", "n"]].to_string(index=False))
    print("\nMIB scores (mean over layers of the best position; best layer):")
    print(cv.Results(sweep.rows + bases.rows).mib_score().to_string(index=False))
    for part, res in (("sweep", sweep), ("bases", bases)):
        for v, report in res.meta["data"].items():
            print(f"{part} {v}: " + "; ".join(report))
    print(f"\nwrote {out}/sweep and {out}/bases (results.csv, results.json, heatmap.png, fitted featurizers) "
          f"in {time.time() - t0:.0f} s")
    return 0


def parse_featurizer(spec: str):
    """``"das:16"`` -> ``DAS(dim=16)``; also neurons[:i-j], full, pca[:k], sae[:d_sae], dbm[+pca|+sae],
    boundless, supervised."""
    import featurizers as F

    name, _, arg = spec.strip().lower().partition(":")
    num = int(arg) if arg.isdigit() else None
    makers = {
        "full": lambda: F.Neurons(), "full_vector": lambda: F.Neurons(),
        "neurons": lambda: F.Neurons(dims=_span(arg)) if arg else F.Neurons(),
        "das": lambda: F.DAS(dim=num), "boundless": lambda: F.BoundlessDAS(),
        "pca": lambda: F.PCA(n_components=num), "sae": lambda: F.SAE(d_sae=num),
        "supervised": lambda: F.SupervisedDictionary(),
        "dbm": lambda: F.DBM(F.Neurons()), "dbm+neurons": lambda: F.DBM(F.Neurons()),
        "dbm+pca": lambda: F.DBM(F.PCA()), "dbm+sae": lambda: F.DBM(F.SAE(d_sae=num)),
    }
    if name not in makers:
        raise SystemExit(f"unknown featurizer {spec!r}; choose from {sorted(makers)} (e.g. das:16, pca:32, neurons:0-63)")
    return makers[name]()


def _span(text: str) -> list[int]:
    """``"0-3,7"`` -> [0, 1, 2, 3, 7]."""
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def parse_layers(text: str, n_layers: int) -> list[int]:
    """``"all"``, ``"0:30:3"`` (a Python range; the model's last layer is added), or ``"0,5,29"``."""
    if text == "all":
        return list(range(n_layers))
    if ":" in text:
        parts = [int(p) if p else None for p in text.split(":")]
        layers = list(range(n_layers))[slice(*parts)]
        return sorted(set(layers) | ({n_layers - 1} if parts[1] is None or parts[1] >= n_layers else set()))
    return [int(x) for x in text.split(",")]


def localize_cmd(args) -> int:
    import causalvar as cv

    tasks = cv.tasks.REGISTRY
    if args.task not in tasks:
        raise SystemExit(f"unknown task {args.task!r}; built-in tasks: {sorted(tasks)}")
    feats = [parse_featurizer(f) for f in args.featurizer.split(",")]
    print(f"loading {args.model} ...", flush=True)
    lm = cv.load_model(args.model)
    task = tasks[args.task](lm)
    cm = task.causal_model
    variables = args.variables.split(",") if args.variables else list(
        task.variables or [v for v in cm.variables if v not in cm.inputs and v != cm.output])
    positions = args.positions.split(",") if args.positions else ["last"]
    layers = parse_layers(args.layers, lm.n_layers)
    out = Path(args.out)
    res = cv.localize(lm, task, variables, feats, layers=layers, positions=positions, n_train=args.n_train,
                      n_test=args.n_test, epochs=args.epochs, lr=args.lr, seed=args.seed,
                      batch_size=args.batch_size, out=out)
    res.heatmap(out / "heatmap.png", title=f"{args.task} on {args.model}")
    scores = res.mib_score()
    scores.to_csv(out / "mib_scores.csv", index=False)
    print(res.table[["variable", "featurizer", "layer", "position", "dataset", res.metric, "n"]].to_string(index=False))
    print(f"\nMIB scores of {res.metric}{' (lower is better)' if res.lower_is_better else ''} "
          "(mean over layers, best layer):")
    print(scores.to_string(index=False))
    print(f"wrote {out}/results.csv, results.json, heatmap.png, mib_scores.csv")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="causalvar", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="localize IOI variables in the embedded SmolLM2-135M")
    p.add_argument("--out", default="runs/demo", help="results folder (default: runs/demo)")
    p.add_argument("--n-test", type=int, default=128, help="test pairs per counterfactual set (default: 128)")
    p.add_argument("--n-train", type=int, default=128, help="training pairs per set for PCA and DAS (default: 128)")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=demo)
    p = sub.add_parser("localize", help="localize a built-in task's variables in a model")
    p.add_argument("--task", required=True, help="built-in task name (ioi, ioi_logit_diff, mcqa, arithmetic, ravel)")
    p.add_argument("--model", default="smollm2-135m", help="embedded name, local folder, .gguf file or hub name")
    p.add_argument("--featurizer", default="full", help="comma-separated: full, neurons:0-63, pca:32, das:16, "
                   "boundless, dbm, dbm+pca, sae:1024, supervised")
    p.add_argument("--variables", default=None, help="comma-separated (default: every non-input, non-output variable)")
    p.add_argument("--layers", default="all", help="all, a range 0:30:3, or a list 0,5,29")
    p.add_argument("--positions", default=None, help="comma-separated token roles or ints (default: last)")
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--n-test", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", required=True, help="results folder (a rerun resumes)")
    p.set_defaults(func=localize_cmd)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
