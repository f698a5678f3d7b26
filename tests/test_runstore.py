"""The run folder survives accidents: records cut by a kill, a second process, other settings, atomic files;
results tables and heatmaps carry each cell's no-effect baseline."""
from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

import causalvar as cv
from causalvar.runstore import featurizer_dir
from causalvar.runstore import RunFolderError, RunFolderWarning, RunStore
from featurizers import DAS, Neurons

KW = dict(layers=[0, 1, 2], n_train=0, n_test=32, seed=3, progress=False)


def temporaries(folder):
    return sorted(p.name for p in folder.rglob("*.tmp-*"))


def test_truncated_last_line_is_skipped_and_its_cell_run_again(equality, tmp_path):
    task, mlp = equality
    out = tmp_path / "run"
    first = cv.localize(mlp, task, "left", Neurons(), out=out, **KW).table
    cells = out / "cells.jsonl"
    lines = cells.read_text().splitlines()
    assert len(lines) == 3 and temporaries(out) == []
    cells.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])  # a kill mid-write
    with pytest.warns(RunFolderWarning, match=r"cells\.jsonl line 3 is cut short.*run again"):
        again = cv.localize(mlp, task, "left", Neurons(), out=out, **KW).table
    pd.testing.assert_frame_equal(again, first)
    assert cells.read_text().splitlines() == lines  # the lost cell redone, on a line of its own
    # other settings: only the keys that differ are named
    with pytest.raises(RunFolderError, match=r"other settings \(seed: there 3, now 4\)") as e:
        cv.localize(mlp, task, "left", Neurons(), out=out, **{**KW, "seed": 4})
    assert "n_test" not in str(e.value) and "layers" not in str(e.value)


def test_a_corrupt_line_before_the_last_is_an_error_naming_file_and_line(tmp_path):
    with RunStore(tmp_path, {}) as store:
        store.write_cell([{"variable": "left", "featurizer": "f", "layer": 0, "position": None, "iia": 1.0}], None,
                         ("left", "f", "0", "None"))
    cells = tmp_path / "cells.jsonl"
    cells.write_text("{not json\n" + cells.read_text())
    with pytest.raises(RunFolderError, match=r"cells\.jsonl line 1 is not a JSON record.*repair or delete"):
        RunStore(tmp_path, {})
    assert not (tmp_path / ".lock").exists()  # released although opening failed


def test_a_second_store_on_the_folder_is_refused_until_the_first_closes(tmp_path):
    with RunStore(tmp_path, {"seed": 0}):
        assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())
        with pytest.raises(RunFolderError, match=rf"in use by process {os.getpid()} \(lock file .*\.lock\)"):
            RunStore(tmp_path, {"seed": 0})
    with pytest.raises(ZeroDivisionError):  # a sweep that raises releases the folder too
        with RunStore(tmp_path, {"seed": 0}):
            1 / 0
    assert not (tmp_path / ".lock").exists()
    RunStore(tmp_path, {"seed": 0}).close()


def test_another_process_is_refused_while_it_runs_and_its_lock_taken_over_once_it_died(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from causalvar.runstore import RunStore; "
                               "s = RunStore(sys.argv[1], {}); print('ready', flush=True); time.sleep(120)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(RunFolderError, match=rf"in use by process {holder.pid} "):
            RunStore(tmp_path, {})
    finally:
        holder.kill()  # like a kill -9: its lock file stays behind
        holder.wait()
    with pytest.warns(RunFolderWarning, match=rf"left by process {holder.pid}, which is no longer running"):
        RunStore(tmp_path, {}).close()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path):
    import socket

    (tmp_path / ".lock").write_text(f"4194305 {socket.gethostname()}\n")  # above any pid_max: no such process
    with pytest.warns(RunFolderWarning, match=r"\.lock was left by process 4194305.*taking it over"):
        store = RunStore(tmp_path, {})
    assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())
    store.close()


def test_writes_are_atomic_and_leftovers_of_a_kill_are_cleaned(tmp_path):
    feat = DAS(dim=2)
    feat.build(16)
    key = ("left", feat.name, "0", "None")
    res = cv.Results(rows(baseline=False, featurizer=feat.name), featurizers={key: feat})
    res.save(tmp_path)
    res.save(tmp_path)  # replacing a saved featurizer leaves no temporary folder either
    assert temporaries(tmp_path) == []
    assert cv.Results.load(tmp_path).featurizers[key].d == 16
    # a kill between moving the old featurizer aside and renaming the new one into place
    dest = tmp_path / featurizer_dir(*key)
    os.replace(dest, dest.with_name(f".{dest.name}.tmp-abc123-old"))
    (tmp_path / ".settings.json.tmp-xyz").write_text("{")
    RunStore(tmp_path, {}).close()
    assert temporaries(tmp_path) == [] and (dest / "featurizer.safetensors").exists()


def test_saving_results_under_a_file_is_refused_naming_the_path(equality, tmp_path):
    task, mlp = equality
    (tmp_path / "notes.txt").write_text("x")
    res = cv.Results(rows(baseline=False))
    with pytest.raises(RunFolderError, match=r"cannot write the results to .*notes\.txt/run: .*notes\.txt is a file"):
        res.save(tmp_path / "notes.txt" / "run")
    with pytest.raises(RunFolderError, match=r"cannot write the run folder to .*notes\.txt/run"):  # before any work
        cv.localize(mlp, task, "left", Neurons(), out=tmp_path / "notes.txt" / "run", **KW)


def rows(baseline: bool, featurizer: str = "full_vector"):
    """Two cells of a results table, as a sweep writes them."""
    cells = [(0, 0.97, 0.5), (1, 0.61, 0.55)]
    return [{"variable": "left", "featurizer": featurizer, "layer": layer, "position": None, "dataset": "random",
             "iia": iia, **({"baseline": base} if baseline else {}), "n": 100, "ci_low": iia - 0.05,
             "ci_high": min(iia + 0.05, 1.0)} for layer, iia, base in cells]


def test_tables_and_heatmaps_show_the_no_effect_baseline(tmp_path):
    res = cv.Results(rows(baseline=True))
    assert list(res.table.columns[5:10]) == ["iia", "n", "ci_low", "ci_high", "baseline"]
    fig = res.heatmap(tmp_path / "heat.png")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert {"0.97", "(0.50)", "0.61", "(0.55)"} <= set(texts)
    assert "in parentheses: the no-effect baseline" in fig.axes[-1].get_ylabel()
    old = cv.Results(rows(baseline=False))  # result files written before baselines: drawn as before
    assert list(old.table.columns[5:7]) == ["iia", "n"]
    fig = old.heatmap()
    assert sorted(t.get_text() for ax in fig.axes for t in ax.texts) == ["0.61", "0.97"]
    assert fig.axes[-1].get_ylabel() == "iia"
