"""The Ray executor on a local Ray (2 CPUs): the same table as in-process, a cell that fails once retried,
one that always fails reported in the table, and a driver killed mid-sweep resumed in-process with the same
table as an uninterrupted run. Slow: Ray starts in a few seconds per session."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

import causalvar as cv
from causalvar.runstore import RunFolderWarning
from featurizers import DAS, Neurons

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

COLUMNS = ["variable", "featurizer", "layer", "position", "dataset", "iia", "n", "baseline"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def sweep(executor, out=None, feats=None):
    task, net = cv.tasks.hierarchical_equality(), cv.tasks.equality_mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cv.ConvergenceWarning)
        return cv.localize(net, task, "left", feats or [Neurons(), DAS(dim=4)], layers=[0, 1, 2], n_train=200,
                           n_test=100, epochs=3, seed=0, progress=False, executor=executor, out=out)


def test_a_ray_sweep_gives_the_in_process_table(local_ray, tmp_path):
    here = sweep(None)
    there = sweep(cv.RayExecutor(), out=tmp_path / "run")
    assert there.table[COLUMNS].equals(here.table[COLUMNS])
    executor = cv.RayExecutor()  # two variables: the actors start once and take each variable's data in turn
    task, net = cv.tasks.hierarchical_equality(), cv.tasks.equality_mlp()
    both = [cv.localize(net, task, ["left", "right"], Neurons(), layers=[0, 2], n_train=0, n_test=100, seed=0,
                        progress=False, executor=e) for e in (None, executor)]
    assert both[1].table[COLUMNS].equals(both[0].table[COLUMNS]) and set(both[1].table["variable"]) == {"left", "right"}
    assert len((tmp_path / "run" / "cells.jsonl").read_text().splitlines()) == len(here.rows)  # landed by the driver
    again = sweep("ray", out=tmp_path / "run")  # every cell resumed from the store, none run
    assert again.table[COLUMNS].equals(here.table[COLUMNS])


class Flaky(Neurons):
    """The full vector, raising in its first ``fails`` interchanges (counted in a file, across Ray workers)."""

    def __init__(self, counter: str = "", fails: int = 1):
        super().__init__()
        self.counter, self.fails = counter, fails
        self.fitted = True  # nothing to fit: a cell scores this very object (no clone through the registry)

    @property
    def name(self) -> str:
        return f"flaky{self.fails}"

    def interchange(self, h_base, h_source):
        path = Path(self.counter)
        seen = int(path.read_text()) if path.exists() else 0
        if seen < self.fails:
            path.write_text(str(seen + 1))
            raise RuntimeError(f"planned failure {seen + 1}")
        return super().interchange(h_base, h_source)


def test_a_cell_that_fails_once_is_retried_and_one_that_always_fails_is_reported(local_ray, tmp_path):
    import ray.cloudpickle as cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers need not import this test file
    once = Flaky(str(tmp_path / "once"), fails=1)
    never = Flaky(str(tmp_path / "never"), fails=100)
    task, net = cv.tasks.hierarchical_equality(), cv.tasks.equality_mlp()
    with pytest.warns(cv.executors.CellFailedWarning, match="cell left flaky100 .* failed 3 time"):
        res = cv.localize(net, task, "left", [once, never, Neurons()], layers=[0], n_train=0, n_test=100, seed=0,
                          progress=False, executor=cv.RayExecutor(retries=2))
    t = res.table.set_index("featurizer")
    assert t.loc["flaky1", "iia"] == t.loc["full_vector", "iia"] and pd_isna(t.loc["flaky1", "error"])  # retried
    assert int((tmp_path / "once").read_text()) == 1  # one failure, then the retry succeeded
    assert t.loc["flaky100", "error"] == "RuntimeError: planned failure 3" and t.loc["flaky100", "tries"] == 3
    assert pd_isna(t.loc["flaky100", "iia"])


def pd_isna(v) -> bool:
    import pandas as pd

    return v is None or bool(pd.isna(v))


def test_a_killed_ray_driver_resumes_in_process_with_the_same_table(tmp_path):
    """The driver runs a 12-cell DAS sweep on Ray in a subprocess and is SIGKILLed once some cells landed;
    the in-process rerun of the same call resumes them and gives the uninterrupted table."""
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import sys, warnings
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        warnings.simplefilter("ignore")
        import ray, torch
        torch.set_num_threads({torch.get_num_threads()})  # this process's: the same numbers as the rerun here
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        from test_ray import sweep, DAS
        import causalvar as cv
        sweep(cv.RayExecutor(), out={str(out)!r}, feats=[DAS(dim=2), DAS(dim=4), DAS(dim=8), DAS(dim=16)])
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    cells = out / "cells.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if cells.exists() and len(cells.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    landed = len(cells.read_text().splitlines())
    assert 3 <= landed < 12
    feats = [DAS(dim=2), DAS(dim=4), DAS(dim=8), DAS(dim=16)]
    with pytest.warns(RunFolderWarning, match="no longer running; taking it over"):  # the killed driver's lock
        resumed = sweep(None, out=out, feats=feats)
    fresh = sweep(None, feats=[DAS(dim=2), DAS(dim=4), DAS(dim=8), DAS(dim=16)])
    assert resumed.table[COLUMNS].equals(fresh.table[COLUMNS])
    torch.testing.assert_close(torch.tensor(resumed.table["iia"].to_numpy()), torch.tensor(fresh.table["iia"].to_numpy()))
