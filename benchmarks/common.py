"""Shared pieces of the benchmarks: machine description, timing, CLI parsing, tables, JSON results.

Every benchmark writes ``benchmarks/results/<name>.json`` holding the machine it ran on (CPU model,
cores, torch threads, library versions, device), the arguments, the measurements and the targets of
issue 4 (reported, never asserted).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# the IOI roles of issue 4: the indirect object's name, the repeated subject, the last token
POSITIONS = ("io", "s2", "last")


# ----------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device=None) -> dict:
    """What the numbers were measured on."""
    import transformers

    try:
        import pyvene
        pyvene_version = getattr(pyvene, "__version__", None)
        if pyvene_version is None:
            from importlib.metadata import version
            pyvene_version = version("pyvene")
    except Exception:  # pragma: no cover - pyvene is a dev dependency
        pyvene_version = None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    info = {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pyvene": pyvene_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device) if device is not None else "cpu",
        "memory_gb": _mem_total_gb(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available() and device is not None and str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 2)
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------------------- memory
def peak_rss_gb() -> dict:
    """Peak resident memory of this process: ``ru_maxrss`` (KiB on Linux) and ``VmHWM``, in GB (2**30 B)."""
    out = {"ru_maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if sys.platform == "darwin":  # bytes there
        out["ru_maxrss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**30
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                key = "vmhwm_gb" if line.startswith("VmHWM") else "vmrss_gb"
                out[key] = int(line.split()[1]) / 2**20
    except OSError:
        pass
    return {k: round(v, 4) for k, v in out.items()}


# ----------------------------------------------------------------------------------------- timing
class Clock:
    """Accumulates wall-clock seconds (``time.perf_counter``) under named keys.

    >>> clock = Clock()
    >>> with clock("encode"):
    ...     ...
    >>> clock["encode"]
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, key: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0

    def __getitem__(self, key: str) -> float:
        return self.seconds.get(key, 0.0)

    def total(self) -> float:
        return sum(self.seconds.values())

    def rounded(self, digits: int = 4) -> dict:
        return {k: round(v, digits) for k, v in self.seconds.items()}


def timed(fn, *args, **kwargs):
    """``(result, seconds)`` of one call."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


# ----------------------------------------------------------------------------------------- CLI
def parse_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def base_parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark shares."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="cv.load_model name or path")
    p.add_argument("--variable", default="output_token", choices=["output_token", "output_position"],
                   help="the IOI variable interchanged")
    p.add_argument("--batch-size", type=int, default=64, help="rows per forward, both sides")
    p.add_argument("--seed", type=int, default=0, help="dataset / initialisation / batch-order seed")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for both sides (default: torch's default)")
    p.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="the model's dtype")
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/<name>.json)")
    return p


def setup_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


_LM_CACHE: dict = {}


def load_lm(args):
    """``cv.load_model(args.model)`` on ``args.device`` in ``args.dtype``, once per process; returns
    ``(lm, seconds to load)``."""
    import causalvar as cv

    key = (args.model, args.device, args.dtype)
    if key not in _LM_CACHE:
        _LM_CACHE[key] = timed(cv.load_model, args.model, dtype=getattr(torch, args.dtype), device=args.device)
    return _LM_CACHE[key]


def warm_up(lm, batch) -> None:
    """One plain forward, so that lazy initialisation (kernels, allocator) is not timed."""
    with torch.inference_mode():
        lm.forward(batch.to(lm.device))


# ----------------------------------------------------------------------------------------- output
def target(value: float, goal: float, kind: str, unit: str = "") -> dict:
    """A target of the issue, reported not asserted. kind: ">=" or "<=" ."""
    met = value >= goal if kind == ">=" else value <= goal
    return {"value": value, "target": f"{kind} {goal}{unit}", "met": bool(met)}


def write_json(name: str, payload: dict, out: str | None = None, device=None) -> Path:
    """Write ``payload`` (plus the machine and a timestamp) to ``out`` or ``benchmarks/results/<name>.json``."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": machine_info(device), **payload}
    path.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    return path


def _json_default(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return str(x)


def print_table(rows: list[dict], columns: list[str] | None = None, title: str | None = None) -> None:
    """A plain fixed-width table."""
    if not rows:
        return
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) < 1e-3:
            return f"{v:.2e}"
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def print_targets(targets: dict) -> None:
    rows = [{"target": k, "value": t["value"], "goal": t["target"], "met": t["met"]} for k, t in targets.items()]
    print_table(rows, ["target", "value", "goal", "met"], title="targets of issue 4 (reported, not asserted)")
