"""Issue 5 / 15: MIB's causal-variable protocol on the embedded SmolLM2-135M, task by task.

For each task (IOI, IOI's logit-difference variant, MCQA, two-digit addition, RAVEL-style cities) and
each featurizer of MIB's baselines -- the full vector, DAS with MIB's subspace size per variable (with
``--controls`` random same-size subspaces beside it), DBM over neurons and DBM over PCA components --
``cv.localize`` scores every (layer x token position) cell on each of the task's counterfactual sets,
after dropping the pairs the model gets wrong on base or source (MIB's filter). Featurizers train to
convergence (early stopping; ``--epochs`` is the bound). Layers: the ``--top`` layers per variable where
the full vector localizes best, chosen by a scan of the candidate ``--layers`` (the full vector learns
nothing, so the scan costs forwards only), or every candidate with ``--top 0``.

Written per task to ``benchmarks/results/mib_budget/<task>.json`` (``--out`` names another folder): the
model's accuracy on the task (and the logit-difference task's fitted (bias, token, position)
coefficients), the layer scan, the filtering report of each set (kept / dropped), the score of every
cell, the MIB score per variable and featurizer (mean over sets -> best position per layer -> mean and
best over layers; lower is better for the logit-difference task's squared error), the sizes, the timing
and the seconds per cell trained in this run (cells a resumed run reads back from ``runs/<task>/`` are
not counted); a run of some variables (``--variables``) keeps the other variables that an earlier run
with the same settings left in the JSON. Plus ``<task>.png`` (heatmaps) and ``<task>.csv`` (the
table). ``--table`` prints the Markdown score table of every task's JSON.

    python benchmarks/bench_mib.py                      # every task, MIB's budget (256 training pairs per set)
    python benchmarks/bench_mib.py --tasks ioi --variables output_token --top 4
    python benchmarks/bench_mib.py --table              # the README's table from the JSON files
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, base_parser, load_lm, parse_list, setup_threads, write_json  # noqa: E402

import causalvar as cv  # noqa: E402
from causalvar import task_accuracy  # noqa: E402
from causalvar.cli import parse_layers  # noqa: E402
from causalvar.runstore import cell_key  # noqa: E402
from causalvar.train import EPOCHS  # noqa: E402
from featurizers import DAS, DBM, PCA, Neurons  # noqa: E402

OUT = RESULTS / "mib_budget"

#: task -> (variables, token positions): MIB's variables; its positions for MCQA, arithmetic and
#: RAVEL, and for IOI the residual stream at the repeated subject and the last token
TASKS = {
    "ioi": (["output_token", "output_position"], ["s2", "last"]),
    "ioi_logit_diff": (["output_token", "output_position"], ["s2", "last"]),
    "mcqa": (["answer_pointer", "answer"], ["correct_symbol", "last_token"]),
    "arithmetic": (["ones_carry"], ["op2_last", "last"]),
    "ravel": (["Country", "Continent", "Language"], ["entity_last_token", "last_token"]),
}

#: MIB's DAS subspace size per variable, as a function of the hidden size d: 32 for IOI, 16 for the
#: answer pointer and the carry, d/2 for MCQA's answer, and d/8 for RAVEL (288 of Gemma-2-2B's 2304)
DAS_DIM = {"output_token": lambda d: 32, "output_position": lambda d: 32, "answer_pointer": lambda d: 16,
           "answer": lambda d: d // 2, "ones_carry": lambda d: 16, "Country": lambda d: d // 8,
           "Continent": lambda d: d // 8, "Language": lambda d: d // 8}


def parser():
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated built-in tasks")
    p.add_argument("--variables", default=None, help="keep only these variables (names other tasks lack are ignored)")
    p.add_argument("--layers", default="all", help="candidate layers: a range 0:29:4, a list 0,5,29, or all")
    p.add_argument("--top", type=int, default=4,
                   help="per variable, the layers where the full vector scores best on a scan of --layers (0: all)")
    p.add_argument("--n-train", type=int, default=256, help="training pairs per counterfactual set (DAS, DBM)")
    p.add_argument("--n-test", type=int, default=64, help="test pairs per counterfactual set")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="upper bound of the training epochs (early stopping)")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--controls", type=int, default=5, help="random same-size controls per trained cell")
    p.add_argument("--dim", type=int, default=None, help="DAS subspace size for every variable (default: MIB's, DAS_DIM)")
    p.add_argument("--n-accuracy", type=int, default=256, help="prompts for the model's task accuracy")
    p.add_argument("--table", action="store_true", help="print the Markdown table of the JSON files and exit")
    p.set_defaults(out=str(OUT), batch_size=32)  # out is a folder here: <task>.json, .csv, .png, runs/<task>/
    return p


def scan_layers(lm, task, variable: str, layers: list[int], positions, args, out: Path) -> tuple[list[int], dict]:
    """The ``args.top`` layers of ``layers`` where the full vector scores best on ``variable`` (mean over
    the sets, best position), in layer order, and every candidate's score; its cells kept in the run folder
    ``out`` (a rerun reads them back)."""
    scan = cv.localize(lm, task, variable, Neurons(), layers=layers, positions=positions, n_train=0,
                       n_test=args.n_test, seed=args.seed, batch_size=args.batch_size, out=out, progress=False)
    per_layer = (scan.table.groupby(["layer", "position"])[scan.metric].mean()
                 .groupby("layer").agg("min" if scan.lower_is_better else "max"))
    best = per_layer.sort_values(ascending=scan.lower_is_better).index[:args.top]
    return sorted(int(layer) for layer in best), {int(k): round(float(v), 4) for k, v in per_layer.items()}


def stored_cells(folder: Path) -> set[tuple]:
    """The (variable, featurizer, layer, position) cells whose rows a run folder holds."""
    path = folder / "cells.jsonl"
    if not path.exists():
        return set()
    cells = set()
    for line in path.read_text().splitlines():
        try:
            cells.add(cell_key(json.loads(line))[:4])
        except ValueError:  # a record cut by a kill: the run store repairs it, the cell is not done
            pass
    return cells


def earlier(path: Path, args, variables: list[str]) -> dict:
    """{variable: (rows, filtering reports, featurizer names, layers, layer scan)} of the variables that
    the task's JSON at ``path`` holds from an earlier run with the same settings and that this run
    (``--variables``) does not redo, so that running one variable keeps the others' results."""
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    others = [v for v in doc["variables"] if v not in variables]
    free = {"tasks", "variables", "threads", "table", "out"}  # what may differ between the runs of one table
    # (``out`` as given: the JSON is read from it)
    differ = sorted(k for k in set(doc["args"]) | set(vars(args)) if k not in free
                    and doc["args"].get(k) != vars(args).get(k))
    if others and differ:
        print(f"{path.name} holds {others} from a run with other settings ({', '.join(differ)}); "
              "they are replaced by this run's variables", flush=True)
        return {}
    return {v: ([r for r in doc["cells"] if r["variable"] == v],
                {k: r for k, r in doc["filtering"].items() if k.split("/")[0] == v},
                doc["featurizers"][v], doc["layers"][v], doc["layer_scan"][v]) for v in others}


def run_task(lm, name: str, args, out: Path, save) -> dict:
    """Localize one task's variables with MIB's featurizers; ``save(payload)`` after each variable (so that a
    stopped run keeps the variables it finished: ``variables`` lists them); returns the last payload."""
    t0 = time.perf_counter()
    task = cv.tasks.REGISTRY[name](lm)
    variables, positions = TASKS[name]
    if args.variables:
        variables = [v for v in variables if v in parse_list(args.variables)]
    candidates = parse_layers(args.layers, lm.n_layers)
    accuracy = task_accuracy(lm, task, n=args.n_accuracy, seed=args.seed)
    print(f"{name}: accuracy {accuracy:.3f} on {args.n_accuracy} prompts; {variables} x {positions}", flush=True)
    res = cv.Results(meta={"metric": task.metric.name, "lower_is_better": task.metric.lower_is_better, "data": {}})
    featurizers, chosen, scans, trained, t_train = {}, {}, {}, 0, 0.0
    kept = earlier(out / f"{name}.json", args, variables)
    for v, (rows, filtering, feats, layers, scan) in kept.items():  # an earlier run's other variables stay
        res.rows += rows
        res.meta["data"].update(filtering)
        featurizers[v], chosen[v], scans[v] = feats, layers, scan

    def payload() -> dict:
        """The task's JSON payload so far (its heatmap and CSV table written beside it)."""
        res.heatmap(out / f"{name}.png", title=f"{name} on SmolLM2-135M ({res.metric}, mean over sets)")
        res.table.to_csv(out / f"{name}.csv", index=False)
        scores = res.mib_score()
        t = res.table
        controls = (cv.metrics.mib_aggregate(t[t["control_mean"].notna()], "control_mean", res.lower_is_better)
                    if args.controls else None)  # the same aggregation of the controls' mean, where there are any
        print(scores.to_string(index=False), flush=True)
        return {"task": name, "metric": res.metric, "lower_is_better": res.lower_is_better,
                "accuracy": accuracy, "n_accuracy": args.n_accuracy, "variables": list(featurizers),
                "layers": chosen, "layer_scan": scans, "positions": positions, "featurizers": featurizers,
                "logit_diff_coefficients": getattr(task, "coefficients", None), "filtering": res.meta["data"],
                "scores": scores.to_dict("records"),
                "control_scores": [] if controls is None else controls.to_dict("records"),
                "cells": res.rows, "seconds": round(time.perf_counter() - t0, 1), "trained_cells_run": trained,
                "seconds_per_trained_cell": round(t_train / trained, 1) if trained else None}

    for v in variables:  # one sweep per variable: DAS takes the variable's own size, the layers are its own
        layers, scans[v] = (scan_layers(lm, task, v, candidates, positions, args, out / "runs" / name / "scan" / v)
                            if args.top else (candidates, {}))
        chosen[v] = layers
        print(f"  {v}: layers {layers}" + (f" (full-vector scan of {len(candidates)})" if args.top else ""), flush=True)
        feats = [Neurons(), DAS(dim=args.dim or DAS_DIM[v](lm.d_model)), DBM(Neurons()), DBM(PCA())]
        t1, before = time.perf_counter(), stored_cells(out / "runs" / name / v)
        part = cv.localize(lm, task, v, feats, layers=layers, positions=positions, n_train=args.n_train,
                           n_test=args.n_test, epochs=args.epochs, lr=args.lr, seed=args.seed,
                           batch_size=args.batch_size, train_batch_size=args.batch_size, controls=args.controls,
                           out=out / "runs" / name / v, progress=False)
        t_train += time.perf_counter() - t1
        trained += sum(1 for c in stored_cells(out / "runs" / name / v) - before if c[1] != feats[0].name)
        # the cells trained in this invocation (DAS and the two DBMs; the full vector trains nothing),
        # not those a resumed run read back
        res.rows += part.rows
        res.meta["data"].update(part.meta["data"])
        featurizers[v] = [f.name for f in feats]
        last = payload()
        save(last)
    return last


def table(out: Path = OUT) -> str:
    """The MIB scores of every ``<task>.json`` in ``out`` as one Markdown table, "mean (best)"; DAS's
    random controls beside it."""
    lines = ["| task | variable | metric | model accuracy | pairs kept / drawn | layers | full vector | DAS | "
             "DAS's random controls | DBM neurons | DBM PCA |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in TASKS:
        path = out / f"{name}.json"
        if not path.exists():
            continue
        doc = json.loads(path.read_text())
        by = {(s["variable"], s["featurizer"]): s for s in doc["scores"]}
        control = {(s["variable"], s["featurizer"]): s for s in doc["control_scores"]}
        for v in doc["variables"]:
            kept = drawn = 0
            for key, report in doc["filtering"].items():
                if key.split("/")[0] == v:
                    line = next(x for x in report if x.startswith("filter 'network answers"))
                    dropped, of = (int(t) for t in line.rsplit("dropped ", 1)[1].split(" of "))
                    kept, drawn = kept + of - dropped, drawn + of
            names = doc["featurizers"][v]
            fmt = lambda s: "–" if s is None else f"{s['mean']:.2f} ({s['best']:.2f})"
            k = names[1].split("=")[1].rstrip(")")
            scores = [fmt(by.get((v, names[0]))), f"k={k}: {fmt(by.get((v, names[1])))}",
                      fmt(control.get((v, names[1]))), *(fmt(by.get((v, f))) for f in names[2:])]
            lines.append(f"| {name} | {v} | {doc['metric']}{' ↓' if doc['lower_is_better'] else ''} | "
                         f"{doc['accuracy']:.2f} | {kept} / {drawn} | {','.join(map(str, doc['layers'][v]))} | "
                         + " | ".join(scores) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    out = Path(args.out)
    if args.table:
        print(table(out))
        return
    setup_threads(args.threads)
    names = parse_list(args.tasks)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise SystemExit(f"unknown tasks {unknown}; choose from {list(TASKS)}")
    if args.variables:
        known = {v for n in names for v in TASKS[n][0]}
        unknown = [v for v in parse_list(args.variables) if v not in known]
        if unknown:
            raise SystemExit(f"--variables {unknown} belong to none of the tasks {names}; they have {sorted(known)}")
        skipped = [n for n in names if not set(TASKS[n][0]) & set(parse_list(args.variables))]
        if skipped:
            print(f"skipping {skipped}: none of their variables is in --variables", flush=True)
            names = [n for n in names if n not in skipped]
    lm, t_load = load_lm(args)
    print(f"model loaded in {t_load:.1f}s; {torch.get_num_threads()} threads", flush=True)
    for name in names:
        def save(payload, name=name):
            path = write_json(name, {"args": vars(args), **payload}, str(out / f"{name}.json"), lm.device)
            print(f"wrote {path} ({', '.join(payload['variables'])}; {payload['seconds']:.0f} s)", flush=True)
        run_task(lm, name, args, out, save)
    print(table(out))


if __name__ == "__main__":
    main()
