"""The ``causalvar`` command.

    causalvar demo [--out runs/demo]     IOI on the embedded SmolLM2-135M: where do the variables live?
    causalvar localize --task ioi --model smollm2-135m --featurizer das:32,neurons --layers 0:30:3 \
        --positions s2,last --out runs/ioi
                                         any built-in task, model and featurizers; writes a results
                                         folder (table, heatmap, MIB scores)
    causalvar patch --task ioi --variable output_token --corruption str,gn --component resid,heads \
        --layers all --positions io,s2,last --out runs/patch
                                         activation patching (no training): a folder per setting
                                         (table, heatmap) and STR against GN side by side
    causalvar validate --task two_sat --order ignored --out runs/two_sat
                                         the axioms' epsilon table of the 2-SAT case study
    causalvar dictionaries --task ioi --site 18:s2 --out runs/dict
                                         SAEs, neurons, PCA, DAS against supervised dictionaries
    causalvar run experiment.yaml        any of the above from a validated YAML file (copied into the run)
    causalvar report runs/demo           runs/demo/report.html: every results folder of the run on one
                                         self-contained page (figures, grids, best cells, tables)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .splits import task_accuracy
from .train import EPOCHS


def _shown(res, keys: list[str]) -> str:
    """The table's ``keys``, score and no-effect baseline (rows resumed from an older run may have
    none) and ``n``, as text."""
    cols = keys + [c for c in (res.metric, "baseline", "n") if c in res.table]
    return res.table[cols].to_string(index=False)


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
                        batch_size=args.batch_size, out=out / "sweep", progress=sys.stderr.isatty())
    sweep.meta["task_accuracy"] = acc
    sweep.save(out / "sweep")
    sweep.heatmap(out / "sweep" / "heatmap.png", title=f"IOI on SmolLM2-135M: full-vector IIA (n={args.n_test} per set)")
    print(_shown(sweep, ["variable", "layer", "position", "dataset"]))

    k = 32
    print(f"\n2. which basis? output_position with {k} neurons, the top {k} PCA components, "
          f"and a trained {k}-dim DAS subspace", flush=True)
    bases = cv.localize(lm, task, "output_position", [Neurons(dims=range(k)), PCA(n_components=k), DAS(dim=k)],
                        layers=[12, 15, 18, 21], positions=["s2", "last"], n_train=args.n_train,
                        n_test=args.n_test // 2, epochs=2, lr=1e-2, seed=0, batch_size=args.batch_size, train_batch_size=32,
                        out=out / "bases", progress=sys.stderr.isatty())
    bases.heatmap(out / "bases" / "heatmap.png", title=f"IOI output_position on SmolLM2-135M: bases (k={k})")
    print(_shown(bases, ["featurizer", "layer", "position", "dataset"]))
    print("\nMIB scores (mean over layers of the best position; best layer):")
    print(cv.Results(sweep.rows + bases.rows).mib_score().to_string(index=False))
    for part, res in (("sweep", sweep), ("bases", bases)):
        for v, report in res.meta["data"].items():
            print(f"{part} {v}: " + "; ".join(report))
    from .report import write_report

    report = write_report(out)
    print(f"\nwrote {out}/sweep and {out}/bases (results.csv, results.json, heatmap.png, fitted featurizers) and "
          f"{report} (one self-contained page of both) in {time.time() - t0:.0f} s")
    return 0


class UsageError(SystemExit):
    """A bad command-line argument (checked before the model loads, or right after where it needs the
    model): ``main`` prints it as one line, ``causalvar: error: ...``, and exits with status 2."""


FEATURIZER_FORMS = "full, neurons:0-63 (or neurons:0-3,7), pca:32, das:16, boundless, dbm, dbm+pca, sae:1024, supervised"


def parse_featurizer(spec: str):
    """``"das:16"`` -> ``DAS(dim=16)``; also neurons[:i-j,k], full, pca[:k], sae[:d_sae], dbm[+pca|+sae],
    boundless, supervised. A bad spec is a ``UsageError`` naming it and the expected form."""
    import featurizers as F

    name, colon, arg = spec.strip().lower().partition(":")
    sized = {"das": lambda k: F.DAS(dim=k), "pca": lambda k: F.PCA(n_components=k), "sae": lambda k: F.SAE(d_sae=k),
             "dbm+sae": lambda k: F.DBM(F.SAE(d_sae=k))}
    plain = {"full": F.Neurons, "full_vector": F.Neurons, "boundless": F.BoundlessDAS,
             "supervised": F.SupervisedDictionary, "dbm": lambda: F.DBM(F.Neurons()),
             "dbm+neurons": lambda: F.DBM(F.Neurons()), "dbm+pca": lambda: F.DBM(F.PCA())}
    if name == "neurons":
        return F.Neurons(dims=_span(spec, arg)) if colon else F.Neurons()
    if name in sized:
        if not colon:
            return sized[name](None)
        if not arg.isdigit() or int(arg) < 1:
            raise UsageError(f"featurizer {spec!r}: the size after '{name}:' must be a whole number >= 1, "
                             f"e.g. {name}:16")
        return sized[name](int(arg))
    if name in plain:
        if colon:
            raise UsageError(f"featurizer {spec!r}: {name} takes no size; write {name}")
        return plain[name]()
    raise UsageError(f"unknown featurizer {spec!r}; choose from {sorted(['neurons', *sized, *plain])} "
                     f"(e.g. das:16, pca:32, neurons:0-63)")


def parse_featurizers(text: str) -> list:
    """The ``--featurizer`` list: comma-separated specs, where a part that starts with a digit continues
    the neurons list before it (``"full,neurons:0-3,7,das:16"`` is three featurizers)."""
    specs: list[str] = []
    for part in text.split(","):
        if specs and part.strip()[:1].isdigit():
            specs[-1] += "," + part
        else:
            specs.append(part)
    return [parse_featurizer(s) for s in specs]


def _span(spec: str, text: str) -> list[int]:
    """``"0-3,7"`` -> [0, 1, 2, 3, 7]."""
    out = []
    for part in text.split(","):
        a, dash, b = part.strip().partition("-")
        if not a.isdigit() or (dash and not b.isdigit()) or (b and int(b) < int(a)):
            raise UsageError(f"featurizer {spec!r}: neurons takes hidden-unit indices and ranges, "
                             "e.g. neurons:0-63 or neurons:0-3,7")
        out += list(range(int(a), int(b) + 1)) if dash else [int(a)]
    return out


LAYER_FORMS = "all, a range start:stop[:step] (e.g. 0:30:3) or a list of block indices (e.g. 0,5,29)"


def layer_syntax(text: str) -> str | slice | list[int]:
    """``--layers`` read without the model (so a typo fails before it loads): ``"all"``, a ``slice``
    or a list of block indices; ``resolve_layers`` checks them against the model."""
    t = text.strip().lower()
    if t == "all":
        return "all"
    if ":" in t:
        parts = [p.strip() for p in t.split(":")]
        if len(parts) <= 3 and all(p.isdigit() or not p for p in parts):
            spec = slice(*(int(p) if p else None for p in parts))
            if spec.step == 0:
                raise UsageError(f"--layers {text!r}: the step of a range must be at least 1")
            return spec
    else:
        parts = [p.strip() for p in t.split(",")]
        if all(p.isdigit() for p in parts):
            return sorted({int(p) for p in parts})
    raise UsageError(f"--layers {text!r}: expected {LAYER_FORMS}; layers count from 0")


def resolve_layers(spec: str | slice | list[int], text: str, n_layers: int, model: str = "the model") -> list[int]:
    """The block indices ``spec`` (from ``layer_syntax``) names in a model of ``n_layers``; a range up to
    the end also takes the last layer (``0:30:3`` -> 0, 3, ..., 27, 29). Nothing is clipped: an index
    past the model's last layer is a ``UsageError`` naming the number of layers."""
    have = f"{model} has {n_layers} layers (0..{n_layers - 1})"
    if spec == "all":
        return list(range(n_layers))
    if isinstance(spec, slice):
        start, stop, step = spec.start or 0, n_layers if spec.stop is None else spec.stop, spec.step or 1
        if stop > n_layers:
            raise UsageError(f"--layers {text}: {have}; a range stops at {n_layers} at most, e.g. 0:{n_layers}")
        layers = list(range(start, stop, step))
        if not layers:
            raise UsageError(f"--layers {text}: the range selects no layer; {have}")
        return sorted(set(layers) | ({n_layers - 1} if stop == n_layers else set()))
    bad = [layer for layer in spec if layer >= n_layers]
    if bad:
        raise UsageError(f"--layers {text}: {have}, so {bad} do not exist")
    return spec


def parse_layers(text: str, n_layers: int) -> list[int]:
    """``"all"``, ``"0:30:3"`` (a Python range; the model's last layer is added), or ``"0,5,29"``."""
    return resolve_layers(layer_syntax(text), text, n_layers)


def parse_positions(text: str | None) -> list[str | int]:
    """``--positions``: comma-separated token roles (names) or token indices (ints, negative from the
    end); default ``["last"]``."""
    if text is None:
        return ["last"]
    out: list[str | int] = []
    for part in text.split(","):
        p = part.strip()
        if p.lstrip("-").isdigit():
            out.append(int(p))
        elif p.isidentifier():
            out.append(p)
        else:
            raise UsageError(f"--positions {text!r}: {p!r} is neither a token role (a name such as s2 or "
                             "last) nor a token index (an int, e.g. -1); separate them with commas")
    return out


def localize_cmd(args) -> int:
    import causalvar as cv

    tasks = cv.tasks.REGISTRY
    if args.task not in tasks:
        raise UsageError(f"unknown task {args.task!r}; built-in tasks: {sorted(tasks)}")
    feats = parse_featurizers(args.featurizer)
    for f in feats:
        if args.n_train == 0 and (f.learns_from_interventions or f.learns_from_activations):
            learns = "is trained on interchange pairs" if f.learns_from_interventions else "is fitted on activations"
            raise UsageError(f"--n-train 0: {f.name} {learns}; give --n-train of at least 1")
    layer_spec, positions = layer_syntax(args.layers), parse_positions(args.positions)
    print(f"loading {args.model} ...", flush=True)
    lm = cv.load_model(args.model)
    layers = resolve_layers(layer_spec, args.layers, lm.n_layers, args.model)
    task = tasks[args.task](lm)
    roles = getattr(task, "positions", {})
    unknown = [p for p in positions if isinstance(p, str) and p not in roles]
    if unknown:
        raise UsageError(f"--positions: {args.task} has no token role {unknown}; its roles are {sorted(roles)}, "
                         "or give token indices (ints)")
    cm = task.causal_model
    variables = args.variables.split(",") if args.variables else list(
        task.variables or [v for v in cm.variables if v not in cm.inputs and v != cm.output])
    out = Path(args.out)
    res = cv.localize(lm, task, variables, feats, layers=layers, positions=positions, n_train=args.n_train,
                      n_test=args.n_test, epochs=args.epochs, lr=args.lr, seed=args.seed,
                      batch_size=args.batch_size, train_batch_size=args.train_batch_size, out=out,
                      controls=args.controls, progress=sys.stderr.isatty())
    res.heatmap(out / "heatmap.png", title=f"{args.task} on {args.model}")
    scores = res.mib_score()
    scores.to_csv(out / "mib_scores.csv", index=False)
    print(_shown(res, ["variable", "featurizer", "layer", "position", "dataset"]))
    print(f"\nMIB scores of {res.metric}{' (lower is better)' if res.lower_is_better else ''} "
          "(mean over layers, best layer):")
    print(scores.to_string(index=False))
    print(f"wrote {out}/results.csv, results.json, heatmap.png, mib_scores.csv")
    return 0


def _choices(text: str, allowed: tuple, flag: str) -> list[str]:
    """A comma-separated ``flag`` value, each part one of ``allowed`` (a ``UsageError`` names a bad one)."""
    parts = [p.strip().lower() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if p not in allowed]
    if bad or not parts:
        raise UsageError(f"{flag} {text!r}: {bad or 'nothing given'}; choose from {', '.join(allowed)} "
                         "(comma-separated)")
    return list(dict.fromkeys(parts))


def patch_cmd(args) -> int:
    import causalvar as cv
    from .patching import COMPONENTS, CORRUPTIONS, DIRECTIONS, METHODS, METRICS, compare

    tasks = cv.tasks.REGISTRY
    if args.task not in tasks:
        raise UsageError(f"unknown task {args.task!r}; built-in tasks: {sorted(tasks)}")
    corruptions = _choices(args.corruption, CORRUPTIONS, "--corruption")
    components = _choices(args.component, tuple(COMPONENTS), "--component")
    metric = _choices(args.metric, METRICS, "--metric")[0]
    direction = _choices(args.direction, DIRECTIONS, "--direction")[0]
    method = _choices(args.method, METHODS, "--method")[0]
    layer_spec, positions = layer_syntax(args.layers), parse_positions(args.positions)
    head_position = None if args.head_position == "all" else parse_positions(args.head_position)[0]
    print(f"loading {args.model} ...", flush=True)
    lm = cv.load_model(args.model)
    layers = resolve_layers(layer_spec, args.layers, lm.n_layers, args.model)
    task = tasks[args.task](lm)
    roles = getattr(task, "positions", {})
    unknown = [p for p in positions + [head_position] if isinstance(p, str) and p not in roles]
    if unknown:
        raise UsageError(f"--positions / --head-position: {args.task} has no token role {unknown}; its roles are "
                         f"{sorted(roles)}, or give token indices (ints)")
    variable = args.variable or (task.variables or [None])[0]
    out = Path(args.out)
    runs = {}
    for component in components:
        for corruption in corruptions:
            res = cv.patch(lm, task, variable if corruption == "str" else None, corruption=corruption, metric=metric,
                           direction=direction, component=component, layers=layers,
                           positions=head_position if component == "heads" else positions, n=args.n, seed=args.seed,
                           filter_correct=args.filter_correct, window=args.window, method=method,
                           batch_size=args.batch_size, progress=sys.stderr.isatty())
            folder = out / f"{corruption}_{component}"
            res.save(folder)
            res.heatmap(folder / "heatmap.png")
            runs[corruption, component] = res
            print(f"\n{res.title} (n={args.n} pairs per set; {res.meta['data']})")
            print(res.grid().round(3).to_string())
        if len(corruptions) == 2:
            compare(runs["str", component], runs["gn", component], out / f"str_vs_gn_{component}.png")
    print(f"\nwrote {', '.join(f'{out}/{c}_{k}' for c, k in runs)} (results.csv, results.json, heatmap.png)"
          + (f" and {out}/str_vs_gn_*.png" if len(corruptions) == 2 else ""))
    return 0


def parse_site(text: str):
    """``--site 18:s2`` -> ``cv.Site(18, "s2")`` (a layer, a colon, a token role or index)."""
    from .sites import Site

    layer, colon, pos = text.partition(":")
    if not colon or not layer.strip().isdigit() or not pos.strip():
        raise UsageError(f"--site {text!r}: expected LAYER:POSITION, e.g. 18:s2 or 24:last")
    return Site(int(layer), parse_positions(pos)[0])


def dictionaries_cmd(args) -> int:
    import torch

    import causalvar as cv
    from featurizers import SAE
    from .sae_eval import generic_activations

    tasks = cv.tasks.REGISTRY
    if args.task not in tasks:
        raise UsageError(f"unknown task {args.task!r}; built-in tasks: {sorted(tasks)}")
    site = parse_site(args.site)
    edit_k = [int(k) for k in args.edit_k.split(",") if k.strip().isdigit()]
    if not edit_k or len(edit_k) != len(args.edit_k.split(",")):
        raise UsageError(f"--edit-k {args.edit_k!r}: expected whole numbers separated by commas, e.g. 2,4,6")
    dicts, generic = {}, {}  # name -> featurizer; generic SAEs are fitted once the model is loaded
    for spec in (p.strip() for p in args.dictionaries.split(",") if p.strip()):
        kind, _, size = spec.lower().partition(":")
        if kind in ("sae", "generic-sae"):
            if not size.isdigit() or int(size) < 1:
                raise UsageError(f"dictionary {spec!r}: give the SAE's number of latents, e.g. {kind}:1024")
            (generic if kind == "generic-sae" else dicts)[f"sae({'generic' if kind != 'sae' else 'task'},{size})"] = \
                SAE(d_sae=int(size), k=args.sae_k)
        else:
            f = parse_featurizer(spec)
            dicts[f.name] = f
    print(f"loading {args.model} ...", flush=True)
    lm = cv.load_model(args.model)
    resolve_layers([site.layer], args.site, lm.n_layers, args.model)
    task = tasks[args.task](lm)
    if generic:  # trained on text the model writes itself, not on the task's prompts
        torch.manual_seed(args.seed)
        acts = generic_activations(lm, site.layer, n_prompts=args.generic_prompts, seed=args.seed)
        dicts.update({name: sae.fit_activations(acts) for name, sae in generic.items()})
    attributes = args.attributes.split(",") if args.attributes else list(
        task.variables or [v for v in task.causal_model.variables if v not in task.causal_model.inputs])
    ev = cv.evaluate_dictionaries(lm, task, site, attributes, dicts, n_fit=args.n_fit, n_test=args.n_test,
                                  edit_k=edit_k, seed=args.seed, batch_size=args.batch_size,
                                  progress=sys.stderr.isatty())
    out = Path(args.out)
    ev.save(out)
    ev.figure(out / "dictionaries.png")
    print(ev.summary().round(3).to_string())
    print(f"wrote {out} (results.csv, results.json, dictionaries.png)")
    return 0


def validate_cmd(args) -> int:
    import causalvar as cv

    if args.task != "two_sat":
        raise UsageError(f"validate has a built-in interpretation for the task 'two_sat' only, got {args.task!r}; "
                         "for your own, build a cv.Interpretation and call cv.validate from Python")
    if args.order not in ("ignored", "required"):
        raise UsageError(f"--order {args.order!r}: the parser's clauses compare with literal order 'ignored' or "
                         "'required'")
    if not 0 < args.confidence < 1:
        raise UsageError(f"--confidence {args.confidence}: a number in (0, 1), e.g. 0.95")
    print("loading the shipped 2-SAT network ...", flush=True)
    lm = cv.tasks.two_sat_model()
    interp = cv.tasks.two_sat_interpretation(lm, order=args.order, n_fit=args.n_fit, seed=args.seed, delta=args.delta)
    rep = cv.validate(lm, cv.tasks.two_sat(lm), interp, n=args.n, seed=args.seed, confidence=args.confidence,
                      progress=sys.stderr.isatty())
    out = Path(args.out)
    rep.save(out)
    rep.figure(out / "epsilon.png")
    print(rep.table.to_string(index=False))
    print(f"wrote {out} (results.csv, results.json, epsilon.png)")
    return 0


def run_cmd(args) -> int:
    from .experiment import prepare

    spec = prepare(args.file)
    commands = {"localize": localize_cmd, "patch": patch_cmd, "dictionaries": dictionaries_cmd, "validate": validate_cmd}
    return commands[spec.analysis](spec.cli())


def report_cmd(args) -> int:
    from .report import write_report

    path = write_report(args.run_dir)
    print(f"wrote {path} (self-contained: open it offline, or send it)")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line like every other error of the command."""

    def error(self, message):
        print(f"causalvar: error: {message} (see {self.prog} -h)", file=sys.stderr)
        sys.exit(2)


def _at_least(minimum: int):
    def whole(text: str) -> int:
        if not text.strip().lstrip("-").isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return int(text)
    return whole


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _message(e: Exception) -> str:
    """One line for a run-time error: causalvar's errors (ValueErrors and ``TrainingError``) say what
    to change themselves; anything else is named by its type, with the way to see the traceback."""
    from .train import TrainingError

    if isinstance(e, (ValueError, TrainingError)):
        return str(e)
    return f"{type(e).__name__}: {e} (rerun with --debug for the traceback)"


def main(argv=None) -> int:
    parser = _Parser(prog="causalvar", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", parents=[common], help="localize IOI variables in the embedded SmolLM2-135M")
    p.add_argument("--out", default="runs/demo", help="results folder (default: runs/demo)")
    p.add_argument("--n-test", type=_at_least(2), default=128,
                   help="test pairs per counterfactual set, half of them for the bases (default: 128)")
    p.add_argument("--n-train", type=_at_least(1), default=128,
                   help="training pairs per set for PCA and DAS (default: 128)")
    p.add_argument("--batch-size", type=_at_least(1), default=64)
    p.set_defaults(func=demo)
    p = sub.add_parser("localize", parents=[common], help="localize a built-in task's variables in a model")
    p.add_argument("--task", required=True, help="built-in task name (ioi, ioi_logit_diff, mcqa, arithmetic, ravel)")
    p.add_argument("--model", default="smollm2-135m", help="embedded name, local folder, .gguf file or hub name")
    p.add_argument("--featurizer", default="full", help=f"comma-separated: {FEATURIZER_FORMS}")
    p.add_argument("--variables", default=None, help="comma-separated (default: every non-input, non-output variable)")
    p.add_argument("--layers", default="all", help=LAYER_FORMS)
    p.add_argument("--positions", default=None, help="comma-separated token roles or ints (default: last)")
    p.add_argument("--n-train", type=_at_least(0), default=256, help="training pairs per set (0: no featurizer learns)")
    p.add_argument("--n-test", type=_at_least(1), default=128, help="test pairs per set")
    p.add_argument("--epochs", type=_at_least(1), default=EPOCHS,
                   help=f"upper bound; training stops when the validation score stops improving (default {EPOCHS})")
    p.add_argument("--controls", type=_at_least(0), default=0,
                   help="random same-size controls scored beside each DAS/PCA/neuron/DBM cell (default 0)")
    p.add_argument("--lr", type=_positive, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=_at_least(1), default=32, help="rows per forward (no score depends on it)")
    p.add_argument("--train-batch-size", type=_at_least(1), default=32, help="training pairs per AdamW step of DAS/DBM")
    p.add_argument("--out", required=True, help="results folder (a rerun resumes)")
    p.set_defaults(func=localize_cmd)
    p = sub.add_parser("patch", parents=[common], help="activation patching of a built-in task (no training)")
    p.add_argument("--task", required=True, help="built-in task name (ioi, mcqa, arithmetic, ravel)")
    p.add_argument("--model", default="smollm2-135m", help="embedded name, local folder, .gguf file or hub name")
    p.add_argument("--variable", default=None, help="STR: the variable whose corrupted prompts are drawn "
                   "(default: the task's first)")
    p.add_argument("--corruption", default="str", help="comma-separated: str, gn (both: also a side-by-side figure)")
    p.add_argument("--component", default="resid", help="comma-separated: resid, attn, mlp, heads")
    p.add_argument("--metric", default="logit_diff", help="logit_diff, prob, kl or iia")
    p.add_argument("--direction", default="denoise", help="denoise (clean into corrupted) or noise")
    p.add_argument("--method", default="exact", help="exact, or attribution (the linear fast screen)")
    p.add_argument("--layers", default="all", help=LAYER_FORMS)
    p.add_argument("--positions", default=None, help="comma-separated token roles or ints (default: last)")
    p.add_argument("--head-position", default="last", help="heads: one token role or int, or all (every "
                   "token index together; prompts of one length)")
    p.add_argument("--n", type=_at_least(1), default=64, help="pairs per counterfactual set (default: 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--window", type=_at_least(1), default=1, help="consecutive layers patched at once (default 1)")
    p.add_argument("--filter-correct", action="store_true", help="only pairs the model answers (MIB's filter)")
    p.add_argument("--batch-size", type=_at_least(1), default=64, help="rows per forward (no score depends on it)")
    p.add_argument("--out", required=True, help="results folder")
    p.set_defaults(func=patch_cmd)
    p = sub.add_parser("validate", parents=[common],
                       help="Palumbo et al.'s axioms on a built-in interpretation (the 2-SAT case study)")
    p.add_argument("--task", default="two_sat", help="two_sat (the shipped network and the paper's interpretation)")
    p.add_argument("--order", default="ignored", help="the parser's clause equality: ignored or required")
    p.add_argument("--delta", type=_at_least(0), default=0, help="evaluator neurons allowed to differ (default 0)")
    p.add_argument("--n", type=_at_least(1), default=10_000, help="formulas validated on (default 10000)")
    p.add_argument("--n-fit", type=_at_least(1), default=4000, help="formulas the interpretation is fitted on")
    p.add_argument("--confidence", type=_positive, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="results folder")
    p.set_defaults(func=validate_cmd)
    p = sub.add_parser("dictionaries", parents=[common],
                       help="SAEs, neurons, PCA, DAS against supervised dictionaries at one site (Makelov et al.)")
    p.add_argument("--task", required=True, help="built-in task name (ioi, ...)")
    p.add_argument("--model", default="smollm2-135m", help="embedded name, local folder, .gguf file or hub name")
    p.add_argument("--site", required=True, help="LAYER:POSITION, e.g. 18:s2")
    p.add_argument("--attributes", default=None, help="comma-separated causal-model variables (default: the task's)")
    p.add_argument("--dictionaries", default="supervised,neurons,pca,sae:1024,generic-sae:1024,das:32",
                   help=f"comma-separated: {FEATURIZER_FORMS}, generic-sae:SIZE (an SAE on text the model writes)")
    p.add_argument("--sae-k", type=_at_least(1), default=16, help="active latents of the top-k SAEs (default 16)")
    p.add_argument("--generic-prompts", type=_at_least(1), default=96, help="generated texts for generic SAEs")
    p.add_argument("--n-fit", type=_at_least(1), default=400)
    p.add_argument("--n-test", type=_at_least(1), default=96)
    p.add_argument("--edit-k", default="2,4,6", help="the most features a greedy edit changes (comma-separated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=_at_least(1), default=64)
    p.add_argument("--out", required=True, help="results folder")
    p.set_defaults(func=dictionaries_cmd)
    p = sub.add_parser("run", parents=[common], help="run an experiment file (YAML), validated before any model loads")
    p.add_argument("file", help="experiment.yaml: analysis (localize, patch, dictionaries, validate), task, out and the "
                   "command's options")
    p.set_defaults(func=run_cmd)
    p = sub.add_parser("report", parents=[common], help="one self-contained HTML page of a run folder")
    p.add_argument("run_dir", help="a run folder (e.g. runs/demo): every results folder in it gets a section")
    p.set_defaults(func=report_cmd)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"causalvar: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if args.debug:
            raise
        print(f"causalvar: error: {_message(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
