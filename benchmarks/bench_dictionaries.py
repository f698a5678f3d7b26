"""Issue 13: are SAE features better than neurons? Makelov et al.'s three tests on IOI, SmolLM2-135M.

At each site (default: the repeated subject at layer 16, the last token at layers 20 and 24, where the
S name, the order and the IO's name move the answer), ``cv.evaluate_dictionaries`` scores side by side:
neurons, PCA, an SAE trained by sae-lens on the task's activations at the site, one trained on generic
text (``generic_activations``: the model's own continuations of random vocabulary words), the supervised
least-squares dictionary and DAS (trained per attribute). Attributes: ``output_token`` (the IO's name),
``subject`` (the S name), ``output_position`` (the order, edited by swapping the first-clause names).
Writes ``benchmarks/results/dictionaries.json`` (every table row, the best-matching features, timings),
one figure per site ``benchmarks/results/dictionaries_<site>.png``, and prints the README's table.

    python benchmarks/bench_dictionaries.py [--sites 16:s2,20:last,24:last] [--n-fit 400] [--n-test 96]
"""
from __future__ import annotations

import time

import torch

import causalvar as cv
from causalvar.sae_eval import generic_activations
from causalvar.tasks.ioi import flip_order
from featurizers import DAS, PCA, SAE, Neurons, SupervisedDictionary

from common import RESULTS, base_parser, load_lm, parse_list, setup_threads, write_json

ATTRIBUTES = ["output_token", "subject", "output_position"]
EDITS = {"output_position": flip_order}  # the other two: a new name for the IO / the subject (one input changed)


def site_of(text: str) -> cv.Site:
    layer, position = text.split(":")
    return cv.Site(int(layer), position)


def markdown(rows: list[dict], sites: list[str], ks: list[int]) -> str:
    """One line per (site, dictionary): sufficiency, necessity, and per attribute the edit accuracy at the
    largest k (the supervised edit: 2 features; DAS: its subspace) with the edit's LD share, then best F1."""
    k = max(ks)
    head = ["site", "dictionary", "suff.", "nec."] + [f"{a}: edit acc. / LD share / F1" for a in ATTRIBUTES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for site in sites:
        mine = [r for r in rows if r["site"] == site]
        get = lambda d, a, t: next((r["value"] for r in mine if r["dictionary"] == d and r["attribute"] == a
                                    and r["test"] == t), None)
        fmt = lambda v: "–" if v is None else f"{v:.2f}"
        base = {a: next(r["baseline"] for r in mine if r["attribute"] == a and r["test"].startswith("edit_accuracy"))
                for a in ATTRIBUTES}
        effect = {a: get("patch", a, "effect") for a in ATTRIBUTES}
        lines.append(f"| {site} | no edit (patch effect) | | | "
                     + " | ".join(f"{base[a]:.2f} ({effect[a]:.2f})" for a in ATTRIBUTES) + " |")
        for d in dict.fromkeys(r["dictionary"] for r in mine if r["dictionary"] != "patch"):
            cells = []
            for a in ATTRIBUTES:
                kk = next((r["k"] for r in mine if r["dictionary"] == d and r["attribute"] == a
                           and r["test"].startswith("edit_accuracy") and r["edit"] != "greedy"), k)
                cells.append(f"{fmt(get(d, a, f'edit_accuracy@{kk}'))} / {fmt(get(d, a, f'edit_ld@{kk}'))} / "
                             f"{fmt(get(d, a, 'f1'))}")
            lines.append(f"| {site} | {d} | {fmt(get(d, None, 'sufficiency'))} | {fmt(get(d, None, 'necessity'))} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = base_parser(__doc__)
    p.add_argument("--sites", default="16:s2,20:last,24:last", help="layer:position, comma-separated")
    p.add_argument("--n-fit", type=int, default=400, help="prompts the dictionaries are fitted on")
    p.add_argument("--n-test", type=int, default=96, help="prompts the tests run on")
    p.add_argument("--edit-k", default="2,4,6", help="the most features a greedy edit changes")
    p.add_argument("--d-sae", type=int, default=1024)
    p.add_argument("--sae-k", type=int, default=16, help="top-k of both SAEs")
    p.add_argument("--sae-tokens", type=int, default=50_000, help="training samples of each SAE")
    p.add_argument("--generic-prompts", type=int, default=96, help="generated texts for the generic SAE")
    p.add_argument("--das-dim", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2, help="DAS training epochs")
    p.set_defaults(threads=1)
    args = p.parse_args()
    setup_threads(args.threads)
    sites, ks = parse_list(args.sites), [int(k) for k in parse_list(args.edit_k)]
    t_start = time.perf_counter()
    lm, load_s = load_lm(args)
    task = cv.tasks.ioi(lm)
    seconds = {"load": load_s}  # wall clock; cpu_seconds: this process's CPU time (on 1 thread, what a quiet
    cpu_seconds = {}            # machine's wall clock would read when others share the cores)
    t0 = time.perf_counter()
    generic = generic_activations(lm, sorted({site_of(s).layer for s in sites}), n_prompts=args.generic_prompts,
                                  seed=args.seed)
    seconds["generic_text"] = time.perf_counter() - t0
    sae = dict(d_sae=args.d_sae, k=args.sae_k, train_tokens=args.sae_tokens)
    rows, matches, metas = [], [], {}
    for text in sites:
        site = site_of(text)
        t0, c0 = time.perf_counter(), time.process_time()
        torch.manual_seed(args.seed)
        generic_sae = SAE(**sae).fit_activations(generic[site.layer])
        dictionaries = {"neurons": Neurons(), "pca": PCA(), "sae(task)": SAE(**sae), "sae(generic)": generic_sae,
                        "supervised": SupervisedDictionary(), f"das(k={args.das_dim})": DAS(dim=args.das_dim)}
        ev = cv.evaluate_dictionaries(lm, task, site, ATTRIBUTES, dictionaries, n_fit=args.n_fit, n_test=args.n_test,
                                      edit_k=ks, seed=args.seed, edits=EDITS, contrast="subject",
                                      batch_size=args.batch_size, epochs=args.epochs, progress=False)
        seconds[text], cpu_seconds[text] = time.perf_counter() - t0, time.process_time() - c0
        ev.figure(RESULTS / f"dictionaries_L{site.layer}_{site.position}.png")
        rows += [{"site": text, **r} for r in ev.rows]
        matches += [{"site": text, **m} for m in ev.matches]
        metas[text] = ev.meta
        print(f"{text}: {seconds[text]:.0f} s ({cpu_seconds[text]:.0f} s CPU), accuracy {ev.meta['accuracy']:.3f}, "
              f"LD clean {ev.meta['ld_clean']:.2f}, mean-ablated {ev.meta['ld_ablated']:.2f}", flush=True)
    seconds["total"], cpu_seconds["total"] = time.perf_counter() - t_start, time.process_time()
    table = markdown(rows, sites, ks)
    print(table)
    write_json("dictionaries", {"benchmark": "dictionaries", "args": vars(args), "attributes": ATTRIBUTES,
                                "sites": sites, "meta": metas, "rows": rows, "best_features": matches,
                                "seconds": seconds, "cpu_seconds": cpu_seconds,
                                "markdown": table}, args.out, device=args.device)


if __name__ == "__main__":
    main()
