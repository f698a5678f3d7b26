"""Executors beyond the in-process one: ``as_executor`` reads every analysis's ``executor=`` argument, and
``RayExecutor`` runs cells on a Ray cluster: ``cv.localize(..., executor="ray")`` or
``executor=cv.RayExecutor(address=...)``.

The frozen network (inside its engine) goes into Ray's object store once per executor and sweep: its actors
(one per CPU slot or device) load it once and stay up for every variable of the sweep; each variable's
prepared data (``SweepData`` less the engine: the captured source activations, the bases' prefix states) is
put once and taken once by each actor, which then runs cells on it (``run_cell``), so nothing is captured
again per cell and the network is not shipped again per variable.
The driver lands every finished cell in the same run store as the in-process executor, as it finishes, so a
killed sweep resumes (in-process or on Ray) losing only the cells in flight. A cell that raises is retried
``retries`` times, then reported in the table (its rows carry ``error``, the metric NaN), never dropped.
Results come back in the cells' order, so the table is the in-process one for the same seed.

Ray is an optional dependency (``pip install causalvar[ray]``).
"""
from __future__ import annotations

import math
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace

from tqdm.auto import tqdm

from .runstore import RunStore
from .sweep import Cell, CellResult, InProcessExecutor, SweepData, resumed, run_cell


class CellFailedWarning(UserWarning):
    """A cell raised on every try; its rows carry the error."""


class RayExecutor:
    """Run a sweep's cells on Ray actors.

    Args:
        address: a running cluster (``"auto"``, ``"ray://host:10001"``); ``None`` starts a local Ray with
            ``num_workers`` CPUs unless one is already initialised in this process.
        num_workers: actors (default: the cluster's CPUs, or its GPUs when ``num_gpus_per_actor`` > 0).
        num_gpus_per_actor: GPUs each actor holds (the network is moved to its device by the adapter).
        retries: tries after the first for a cell that raises.
        threads: torch threads per actor (default: this process's ``torch.get_num_threads()``, so that the
            actors compute exactly what an in-process run would: results depend on the thread count in
            their last bits, and trained featurizers amplify that).
    """

    def __init__(self, address: str | None = None, num_workers: int | None = None, num_gpus_per_actor: float = 0,
                 retries: int = 2, threads: int | None = None):
        if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1):
            raise ValueError(f"num_workers must be a whole number >= 1, got {num_workers!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a whole number >= 0, got {retries!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a whole number >= 1, got {threads!r}")
        self.address, self.num_workers, self.gpus, self.retries = address, num_workers, num_gpus_per_actor, retries
        self.threads = threads
        self._pool: tuple | None = None  # (the engine, its actors): reused while the sweep's engine is the same

    def _ray(self):
        try:
            import ray
        except ImportError as e:
            raise ImportError("executor='ray' needs Ray: pip install 'causalvar[ray]' (or pip install 'ray>=2,<3')") from e
        if not ray.is_initialized():
            kw = {"num_cpus": self.num_workers} if self.address is None and self.num_workers else {}
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True, **kw)
        return ray

    def run(self, cells: Sequence[Cell], data: SweepData, store: RunStore | None = None, progress: bool = True,
            desc: str = "cells") -> Iterator[CellResult]:
        done = store.done() if store else {}
        results: dict[int, CellResult] = {}
        todo = []
        for i, cell in enumerate(cells):
            old = resumed(cell, data, store, done)
            if old is not None:
                results[i] = old
            else:
                todo.append(i)
        bar = tqdm(total=len(cells), initial=len(results), desc=f"{desc} (ray)", disable=not progress)
        try:
            if todo:
                yield from self._ordered(cells, todo, results, data, store, bar)
            else:
                yield from (results[i] for i in range(len(cells)))
        finally:
            bar.close()

    def _actors(self, ray, engine, n: int) -> list:
        """``n`` actors holding ``engine``: started (and the network shipped) once, then reused by every
        later run on the same engine (each variable of a sweep); a new engine starts new ones."""
        if self._pool is None or self._pool[0] is not engine or len(self._pool[1]) < n:
            import torch

            worker = ray.remote(num_cpus=0 if self.gpus else 1, num_gpus=self.gpus)(_Worker)
            self._pool = None  # drop the old actors' handles first: Ray ends them and frees their slots
            ref = ray.put(engine)
            self._pool = (engine, [worker.remote(ref, self.threads or torch.get_num_threads()) for _ in range(n)])
        return self._pool[1][:n]

    def _ordered(self, cells, todo, results, data, store, bar) -> Iterator[CellResult]:
        ray = self._ray()
        resources = ray.cluster_resources()
        slots = resources.get("GPU", 0) / self.gpus if self.gpus else resources.get("CPU", 1)
        n = max(1, min(len(todo), self.num_workers or int(slots) or 1))
        actors = self._actors(ray, data.engine, n)
        shared = ray.put(replace(data, engine=None))  # this variable's activations and prepared bases: once
        ray.get([a.load.remote(shared) for a in actors])
        tries = {i: 0 for i in todo}
        pending, queue, free = {}, list(todo), list(range(n))
        next_out = 0
        while pending or queue:
            while queue and free:
                i, a = queue.pop(0), free.pop(0)
                pending[actors[a].run.remote(cells[i])] = (i, a)
            ready, _ = ray.wait(list(pending), num_returns=1)
            i, a = pending.pop(ready[0])
            free.append(a)
            outcome = ray.get(ready[0])
            if isinstance(outcome, _Failure):
                tries[i] += 1
                if tries[i] <= self.retries:
                    queue.insert(0, i)
                    continue
                outcome = _failed(cells[i], data, outcome, tries[i])
            elif store:
                store.write_cell(outcome.rows, outcome.featurizer, outcome.cell.key)  # lands as it finishes
            results[i] = outcome
            bar.update(1)
            while next_out < len(cells) and next_out in results:  # back in the cells' order (the last one
                yield results.pop(next_out)                        # to finish yields all that remain)
                next_out += 1


class _Failure:
    """What a worker returns for a cell that raised: the error and its traceback."""

    def __init__(self, error: BaseException):
        self.error = f"{type(error).__name__}: {error}"
        self.trace = traceback.format_exc()


class _Worker:
    """A Ray actor: holds the sweep's engine (the frozen network, taken from the object store once) and the
    current variable's data, and runs cells on them."""

    def __init__(self, engine, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.engine, self.data = engine, None

    def load(self, data: SweepData) -> None:
        """The next variable's splits (``data.engine`` is None: the actor's own engine joins them)."""
        self.data = replace(data, engine=self.engine)

    def run(self, cell: Cell):
        try:
            return run_cell(cell, self.data)
        except Exception as e:  # reported to the driver, which retries or records it
            return _Failure(e)


def _failed(cell: Cell, data: SweepData, failure: _Failure, tries: int) -> CellResult:
    """The rows of a cell that failed every try: its key, the error, the metric NaN (one per test set)."""
    warnings.warn(CellFailedWarning(f"cell {cell} failed {tries} time(s): {failure.error}"), stacklevel=4)
    metric = data.metrics[0].name
    rows = [{"variable": cell.variable, "featurizer": cell.featurizer.name, "layer": cell.site.layer,
             "position": cell.site.position, "dataset": name, metric: math.nan, "n": 0, "ci_low": math.nan,
             "ci_high": math.nan, "baseline": math.nan, "error": failure.error, "tries": tries} for name in data.tests]
    return CellResult(cell, rows, None)


def as_executor(spec):
    """``executor=`` of every analysis: ``None`` (``InProcessExecutor``), ``"ray"`` (``RayExecutor()``: a local
    Ray, or the one this process initialised), or an executor object (``run(cells, data, store, progress,
    desc)``)."""
    if spec is None:
        return InProcessExecutor()
    if isinstance(spec, str):
        if spec != "ray":
            raise ValueError(f"executor must be None, 'ray' or an executor object, got {spec!r}")
        return RayExecutor()
    if not callable(getattr(spec, "run", None)):
        raise ValueError(f"executor must be None, 'ray' or an object with run(cells, data, store, progress, desc), "
                         f"got {type(spec).__name__}")
    return spec
