"""Issue 15: DAS's rotation, torch's matrix-exponential map against the same map in rank 2k.

DAS(dim=k) keeps ``R: [d, k]`` orthonormal through the matrix exponential of a skew ``d × d`` matrix of
rank ≤ 2k. torch (``orthogonal(..., orthogonal_map="matrix_exp")``) exponentiates the ``d × d`` matrix, and
its backward a ``2d × 2d`` one; ``featurizers.das.OrthogonalExp`` computes the same function in rank 2k
when 2k < d. Side by side in one run:
1. the map alone, forward and backward, at the hidden size of SmolLM2 (d = 576) for MIB's subspace sizes
   (16, 32, d/8 = 72, d/2 = 288: the last one is torch's path on both sides), the minimum of
   ``--repeats``, with the largest difference of the two results;
2. one IOI cell (DAS with k = ``--dim`` at ``--layer`` x ``--position``, ``--n-train`` pairs, trained to
   convergence by ``causalvar.train.train`` from the same seed and the same splits): training seconds,
   epochs and the held-out IIA with each map.

    python benchmarks/bench_rotation.py --threads 1
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import base_parser, load_lm, print_table, setup_threads, write_json  # noqa: E402

import causalvar as cv  # noqa: E402
from causalvar.splits import build_splits, evaluate  # noqa: E402
from causalvar.train import train  # noqa: E402
from featurizers import DAS  # noqa: E402


class TorchDAS(DAS):
    """DAS with torch's own parametrization (the previous implementation), for comparison."""

    def _build(self, d: int) -> None:
        self.rotate = orthogonal(nn.Linear(d, self.dim or d, bias=False), orthogonal_map="matrix_exp")


def parser():
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--dims", default="16,32,72,288", help="subspace sizes of part 1")
    p.add_argument("--repeats", type=int, default=5, help="timings of the map per size; the minimum is reported")
    p.add_argument("--dim", type=int, default=32, help="part 2: the DAS subspace size")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--position", default="last")
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--n-test", type=int, default=64)
    p.set_defaults(batch_size=32)
    return p


def time_map(das: DAS, d: int, repeats: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Seconds of one forward + backward of ``das.R`` (min over repeats), the last R and its gradient; the
    same start and parameters for every ``das`` of a size."""
    torch.manual_seed(0)
    das.build(d)
    g = torch.randn(d, das.dim, generator=torch.Generator().manual_seed(1))
    original = das.rotate.parametrizations.weight.original
    with torch.no_grad():
        original.copy_(torch.randn(original.shape, generator=torch.Generator().manual_seed(2)) * 0.1)
    best = float("inf")
    for _ in range(repeats):
        original.grad = None
        t = time.perf_counter()
        R = das.R
        (R * g).sum().backward()
        best = min(best, time.perf_counter() - t)
    return best, R.detach(), original.grad.clone()


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    setup_threads(args.threads)
    d = 576
    maps = []
    for k in (int(x) for x in args.dims.split(",")):
        t_torch, R_torch, g_torch = time_map(TorchDAS(dim=k), d, args.repeats)
        t_ours, R_ours, g_ours = time_map(DAS(dim=k), d, args.repeats)
        maps.append({"d": d, "k": k, "torch_s": round(t_torch, 4), "rank_2k_s": round(t_ours, 4),
                     "speedup": round(t_torch / t_ours, 1), "max_abs_diff_R": float((R_torch - R_ours).abs().max()),
                     "max_rel_diff_grad": float((g_torch - g_ours).abs().max() / g_torch.abs().max())})
    print_table(maps, title=f"the map alone, forward + backward ({torch.get_num_threads()} threads)")

    lm, t_load = load_lm(args)
    task = cv.tasks.ioi(lm)
    site = cv.Site(args.layer, args.position)
    data = cv.CounterfactualDataset.generate(task.causal_model, args.variable, 2 * (args.n_train + args.n_test),
                                             seed=args.seed)
    engine = cv.Engine(lm, batch_size=args.batch_size)
    n_val = args.n_train // 5  # localize's val_fraction
    (train_split, val_split, test_split), _ = build_splits(engine, task, data, [site],
                                                           [args.n_train - n_val, n_val, args.n_test], args.seed)
    cells = []
    for name, cls in (("torch matrix_exp", TorchDAS), ("rank 2k", DAS)):
        torch.manual_seed(args.seed)
        das = cls(dim=args.dim).build(lm.d_model)
        t = time.perf_counter()
        history = train(engine, das, site, train_split, val_split, seed=args.seed, progress=False)
        seconds = time.perf_counter() - t
        iia, _ = evaluate(engine, test_split, site, das)
        cells.append({"rotation": name, "train_s": round(seconds, 1), "epochs": history["epochs"],
                      "val_curve": [round(v, 4) for v in history["val_score"]], "test_iia": round(iia, 4)})
    cells[1]["speedup"] = round(cells[0]["train_s"] / cells[1]["train_s"], 2)
    print_table(cells, title=f"IOI {args.variable}, DAS(k={args.dim}) at {site}, {args.n_train} training pairs")
    path = write_json("bench_rotation", {"args": vars(args), "map": maps, "cell": cells,
                                         "model_load_s": round(t_load, 1)}, args.out, lm.device)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
