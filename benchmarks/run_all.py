"""Run every benchmark of issue 4, each in its own fresh process, then print and save one summary.

    python benchmarks/run_all.py                                # full sizes (what `make bench` runs)
    python benchmarks/run_all.py --layers 0,15,29 --pairs 32 --n-train 32 --n-test 32 --epochs 1

Writes ``<out-dir>/{sweep,das,memory}.json`` and ``<out-dir>/summary.json`` (default
``benchmarks/results``). Options left out keep each script's own default (the issue's sizes).
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
from common import RESULTS, machine_info, print_table  # noqa: E402

SCRIPTS = {"sweep": "bench_sweep.py", "das": "bench_das.py", "memory": "bench_memory.py"}


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="sweep,das,memory", help="comma-separated subset of sweep,das,memory")
    p.add_argument("--layers", help="all scripts: 'all', '0,15,29' or a range '0:30:3'")
    p.add_argument("--positions", help="sweep and memory: comma-separated IOI roles")
    p.add_argument("--pairs", type=int, help="sweep and memory: counterfactual pairs")
    p.add_argument("--repeats", type=int, help="sweep (d): timings per measurement")
    p.add_argument("--n-train", type=int, help="das: training pairs")
    p.add_argument("--n-test", type=int, help="das: held-out pairs")
    p.add_argument("--epochs", type=int, help="das: epochs")
    p.add_argument("--dim", type=int, help="das: subspace size")
    p.add_argument("--variable", help="all scripts: output_token or output_position")
    p.add_argument("--batch-size", type=int, help="all scripts")
    p.add_argument("--threads", type=int, help="all scripts: torch.set_num_threads")
    p.add_argument("--device", help="all scripts: cpu (default), cuda, ...")
    p.add_argument("--dtype", help="all scripts: float32 (default) or bfloat16")
    p.add_argument("--out-dir", default=str(RESULTS), help="where the JSON files go")
    return p


def script_args(name: str, args) -> list[str]:
    common = ["layers", "variable", "batch_size", "threads", "device", "dtype"]
    own = {"sweep": ["positions", "pairs", "repeats"], "memory": ["positions", "pairs"],
           "das": ["n_train", "n_test", "epochs", "dim"]}[name]
    out = []
    for key in common + own:
        value = getattr(args, key)
        if value is not None:
            out += [f"--{key.replace('_', '-')}", str(value)]
    return out + ["--out", str(Path(args.out_dir) / f"{name}.json")]


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        raise SystemExit(f"unknown benchmarks {unknown}; choose from {sorted(SCRIPTS)}")
    out_dir = Path(args.out_dir)
    status, seconds = {}, {}
    for name in names:
        cmd = [sys.executable, str(HERE / SCRIPTS[name]), *script_args(name, args)]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        status[name] = subprocess.run(cmd).returncode
        seconds[name] = round(time.perf_counter() - t0, 1)

    rows, targets = [], {}
    for name in names:
        path = out_dir / f"{name}.json"
        if status[name] != 0 or not path.exists():
            rows.append({"benchmark": name, "measure": "FAILED", "value": f"exit status {status[name]}"})
            continue
        doc = json.loads(path.read_text())
        targets.update(doc.get("targets", {}))
        if name == "sweep":
            s = doc["sweep"]
            rows += [{"benchmark": "(a) sweep", "measure": "pyvene / causalvar seconds",
                      "value": f"{s['pyvene']['total_s']:.1f} / {s['causalvar']['total_s']:.1f}"},
                     {"benchmark": "(a) sweep", "measure": "speedup", "value": f"{s['speedup']:.2f}x"},
                     {"benchmark": "(a) sweep", "measure": "IIA identical / max |dlogit|",
                      "value": f"{s['iia_identical_all_cells']} / {s['max_abs_logit_diff']:.2e}"}]
            if doc.get("cost"):
                rows.append({"benchmark": "(d) cost", "measure": "max measured / ideal",
                             "value": f"{doc['cost']['max_ratio']:.3f}"})
        elif name == "das":
            s = doc["das"]
            rows += [{"benchmark": "(b) DAS", "measure": "pyvene / causalvar seconds",
                      "value": f"{s['pyvene']['total_s']:.1f} / {s['causalvar']['total_s']:.1f}"},
                     {"benchmark": "(b) DAS", "measure": "speedup", "value": f"{s['speedup']:.2f}x"},
                     {"benchmark": "(b) DAS", "measure": "max |dIIA| / max |dlogit|",
                      "value": f"{s['max_abs_iia_diff']:.4f} / {s['max_abs_logit_diff']:.2e}"}]
        elif name == "memory":
            m = doc["memory"]
            rows.append({"benchmark": "(c) memory", "measure": "peak GB (process / sweep)",
                         "value": f"{m['peak_gb']:.3f} / {m['sweep_peak_gb'] if m['sweep_peak_gb'] is None else round(m['sweep_peak_gb'], 3)}"})
    summary = {"machine": machine_info(), "wall_s": seconds, "exit_status": status, "rows": rows,
               "targets": targets, "files": {n: str(out_dir / f"{n}.json") for n in names}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print_table(rows, ["benchmark", "measure", "value"], title="issue 4 benchmarks")
    print_table([{"target": k, "value": t["value"], "goal": t["target"], "met": t["met"]} for k, t in targets.items()],
                ["target", "value", "goal", "met"], title="targets (reported, not asserted)")
    print(f"\nwrote {out_dir / 'summary.json'}")
    if any(status.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
