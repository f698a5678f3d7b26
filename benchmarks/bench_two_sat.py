"""Issue 12's case study: Palumbo et al.'s 2-SAT interpretation validated on the package's network.

Loads the shipped network (``cv.tasks.two_sat_model()``; its training record gives accuracy and time),
measures its accuracy on fresh formulas, fits the paper's interpretation (parser, evaluating neurons,
OR) and runs ``cv.validate`` with the parser's clauses compared up to literal order and in their
written order, and the evaluator within δ ∈ {0, 1, 2, 4} neurons. Writes
``benchmarks/results/two_sat.json`` (every step × axiom: errors, n, ε, beside the paper's values) and
``benchmarks/results/two_sat.png``, and prints the README's table.

    python benchmarks/bench_two_sat.py [--n 10000] [--n-fit 4000] [--seed 0]
"""
from __future__ import annotations

import argparse
import importlib
import time

import torch

import causalvar as cv
from causalvar.validate import AXIOMS

from common import RESULTS, write_json

ts = importlib.import_module("causalvar.tasks.two_sat")  # the module (cv.tasks.two_sat is its task factory)

#: Palumbo et al.'s ε (REFERENCE §2, their notebook's outputs): (step, axiom, order) -> ε
PAPER = {
    ("parser", "prefix_equivalence", "ignored"): 3.7e-5,
    ("parser", "prefix_equivalence", "required"): 0.85,
    ("parser", "prefix_replaceability", "ignored"): 0.042,
    ("evaluator", "prefix_equivalence", "ignored"): 0.309,  # disjunction-only neuron models
    ("evaluator", "prefix_replaceability", "ignored"): 0.0029,
    ("output", "prefix_equivalence", "ignored"): 0.0128,
    ("output", "component_equivalence", "ignored"): 0.0043,
}
STEPS = ("parser", "evaluator", "output")


def table(rep, order: str, delta: int) -> list[dict]:
    return [{"step": STEPS[r["step"] - 1], "site": r["site"], "axiom": r["axiom"], "order": order, "delta": delta,
             "errors": r["errors"], "n": r["n"], "epsilon": r["epsilon"],
             "paper_epsilon": PAPER.get((STEPS[r["step"] - 1], r["axiom"], order)) if delta == 0 else None}
            for r in rep.rows]


def figure(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["delta"] == 0]
    labels = [f"{s}\n" + a.replace('_', '\n') for s in STEPS for a in AXIOMS]
    fig, ax = plt.subplots(figsize=(12, 4.2))
    width = 0.38
    for j, order in enumerate(("ignored", "required")):
        eps = [next(r["epsilon"] for r in shown if r["order"] == order and r["step"] == s and r["axiom"] == a)
               for s in STEPS for a in AXIOMS]
        ax.bar([i + (j - 0.5) * width for i in range(len(labels))], eps, width, label=f"clause literal order {order}")
    paper = [PAPER.get((s, a, "ignored")) for s in STEPS for a in AXIOMS]
    ax.scatter([i for i, p in enumerate(paper) if p], [p for p in paper if p], marker="_", s=400, color="k",
               zorder=3, label="Palumbo et al. (order ignored)")
    ax.set_yscale("log")
    ax.set_ylabel("ε (95% one-sided Clopper–Pearson)")
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_title(f"2-SAT network: the paper's interpretation, every step × axiom (n = {shown[0]['n']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000, help="formulas validate draws")
    ap.add_argument("--n-fit", type=int, default=4000, help="formulas the interpretation is fitted on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    lm = ts.two_sat_model()
    task = ts.two_sat(lm)
    accuracy = cv.task_accuracy(lm, task, n=args.n, seed=args.seed + 1)
    rows, info, seconds = [], {}, {}
    for order, delta in (("ignored", 0), ("required", 0), ("ignored", 1), ("ignored", 2), ("ignored", 4)):
        t1 = time.perf_counter()
        interp = ts.two_sat_interpretation(lm, order=order, n_fit=args.n_fit, seed=args.seed, delta=delta)
        rep = cv.validate(lm, task, interp, n=args.n, seed=args.seed, progress=False)
        seconds[f"{order}_delta{delta}"] = round(time.perf_counter() - t1, 1)
        rows += table(rep, order, delta)
        info = interp.info
    figure(rows, RESULTS / "two_sat.png")
    parser = {o: next(r for r in rows if r["order"] == o and r["delta"] == 0 and r["step"] == "parser"
                      and r["axiom"] == "prefix_equivalence") for o in ("ignored", "required")}
    payload = {
        "args": vars(args),
        "model": {"architecture": "Falcon decoder (ALiBi), 2 layers, d_model 128, d_mlp 512, ReLU, 8 heads, "
                                  "LayerNorm before each sublayer and the unembedding",
                  "accuracy_fresh": accuracy, "n_accuracy": args.n, "training": lm.info},
        "interpretation": {k: v for k, v in info.items() if k != "delta"},
        "rows": rows,
        "parser_order": {o: {"errors": r["errors"], "n": r["n"], "epsilon": r["epsilon"],
                             "paper_epsilon": r["paper_epsilon"]} for o, r in parser.items()},
        "seconds": {**seconds, "total": round(time.perf_counter() - t0, 1)},
        "timing_note": "wall clock, one torch thread, on a 2-core machine shared with other sessions",
    }
    path = write_json("two_sat", payload, args.out)
    print(f"accuracy on {args.n} fresh formulas: {accuracy:.4f}; training: {lm.info['train_seconds']} s")
    print("| step | axiom | errors (order ignored) | ε | ε (order required) | paper ε |\n|---|---|---|---|---|---|")
    for s in STEPS:
        for a in AXIOMS:
            ig, rq = (next(r for r in rows if r["order"] == o and r["delta"] == 0 and r["step"] == s and r["axiom"] == a)
                      for o in ("ignored", "required"))
            paper = "" if ig["paper_epsilon"] is None else f"{ig['paper_epsilon']:.3g}"
            print(f"| {s} | {a} | {ig['errors']} / {ig['n']} | {ig['epsilon']:.3g} | {rq['epsilon']:.3g} | {paper} |")
    print(path)


if __name__ == "__main__":
    main()
