"""Tasks (encoding, positions, answers), the localize sweep, results on disk, and their errors."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import causalvar as cv
from featurizers import Neurons

from conftest import make_lm, name_prompt, prompt_task


@pytest.fixture(scope="module")
def gpt2(tokenizer):
    return cv.HFModel(make_lm("gpt2", len(tokenizer)), tokenizer)


def test_positions_resolve_to_the_named_tokens(gpt2, tokenizer):
    task = prompt_task(gpt2)
    settings = [{"a": "Mary", "b": "John", "order": "ABB"}, {"a": "Tom", "b": "Anna", "order": "BAB"}]
    batch = task.encode(settings)
    ids = batch.inputs["input_ids"]
    for i, s in enumerate(settings):
        assert tokenizer.convert_ids_to_tokens([int(ids[i, batch.positions["io"][i]])]) == [s["a"]]
        s2 = int(batch.positions["s2"][i])
        assert tokenizer.convert_ids_to_tokens([int(ids[i, s2])]) == [s["b"]]
        assert tokenizer.convert_ids_to_tokens([int(ids[i, s2 - 1])]) == [","]  # the second mention
        assert int(batch.read[i]) == int(batch.inputs["attention_mask"][i].nonzero().max())
    assert task.resolve(batch, 0).tolist() == batch.positions["first"].tolist()
    assert task.resolve(batch, -1).tolist() == batch.read.tolist()


def test_answer_must_be_a_single_token(gpt2):
    task = cv.PromptTask(gpt2, prompt_task(gpt2).causal_model, prompt=name_prompt,
                         answer=lambda v: f" {v} and {v}")
    with pytest.raises(cv.TaskError, match=r"answer ' Mary and Mary' \(output value 'Mary'\) is 3 tokens"):
        task.targets(["Mary"])
    with pytest.raises(cv.TaskError, match="single-token answers"):
        cv.localize(gpt2, task, "io", Neurons(), layers=[0], positions=["last"], n_train=0, n_test=4,
                    progress=False)


def test_missing_role_is_an_error_naming_the_example(gpt2):
    task = cv.PromptTask(gpt2, prompt_task(gpt2).causal_model, prompt=name_prompt,
                         positions={"s3": cv.word("b", 3)})
    with pytest.raises(cv.TaskError, match=r"'Mary' \(variable 'b'\) occurs 2 time\(s\) in prompt .*occurrence 3"):
        task.encode([{"a": "John", "b": "Mary", "order": "ABB"}])


def test_bad_positions_layers_variables_fail_before_work(gpt2):
    task = prompt_task(gpt2)
    kw = dict(n_train=0, n_test=4, progress=False)
    with pytest.raises(cv.TaskError, match=r"unknown position 'nowhere'; this task's positions are \['io', 'last', 's2'\]"):
        cv.localize(gpt2, task, "io", Neurons(), layers=[0], positions=["nowhere"], **kw)
    with pytest.raises(cv.TaskError, match="position 40 is outside example 0"):
        cv.localize(gpt2, task, "io", Neurons(), layers=[0], positions=[40], **kw)
    with pytest.raises(cv.ModelError, match=r"layer 7 is out of range: the model has 3 blocks"):
        cv.localize(gpt2, task, "io", Neurons(), layers=[7], positions=["last"], **kw)
    with pytest.raises(cv.ModelError, match="the model has no module 'transformer.h.0.mlpp'"):
        cv.localize(gpt2, task, "io", Neurons(), layers=["transformer.h.0.mlpp"], positions=["last"], **kw)
    with pytest.raises(ValueError, match=r"unknown variable 'nope'; the causal model's variables are"):
        cv.localize(gpt2, task, "nope", Neurons(), layers=[0], positions=["last"], **kw)


def test_tensor_task_errors(equality):
    task, mlp = equality
    with pytest.raises(cv.TaskError, match="position 'last' given, but this task's network has no sequence axis"):
        cv.localize(mlp, task, "left", Neurons(), layers=[0], positions=["last"], n_train=0, n_test=4, progress=False)
    bad = cv.Task(task.causal_model, encode=lambda s: [s["w"]] * (1 + s["w"] % 2))
    with pytest.raises(cv.TaskError, match="encode returned tensors of different shapes"):
        bad.encode([{"w": 0, "x": 0, "y": 0, "z": 0}, {"w": 1, "x": 0, "y": 0, "z": 0}])
    with pytest.raises(ValueError, match="Neurons dims \\[99\\] are outside the site's hidden size 64"):
        cv.localize(mlp, task, "left", Neurons(dims=[99]), layers=[0], n_train=0, n_test=4, progress=False)


def test_localize_results_table_heatmap_save_load_resume(equality, tmp_path):
    task, mlp = equality
    out = tmp_path / "run"
    kw = dict(layers=[0, 1, 2], n_train=0, n_test=200, seed=3, out=out, progress=False)
    res = cv.localize(mlp, task, ["left", "out"], [Neurons(), Neurons(dims=range(8))], **kw)
    t = res.table
    assert list(t.columns[:9]) == ["variable", "featurizer", "layer", "position", "dataset", "iia", "n",
                                   "ci_low", "ci_high"]
    assert len(t) == 2 * 2 * 3 and (t["n"] == 200).all()
    assert ((t["ci_low"] <= t["iia"]) & (t["iia"] <= t["ci_high"])).all()
    # the full vector carries every variable at once: interchanging 'out' through it is always right
    assert (t[(t.variable == "out") & (t.featurizer == "full_vector")]["iia"] == 1.0).all()
    png = res.heatmap(tmp_path / "heat.png")
    assert (tmp_path / "heat.png").stat().st_size > 10_000 and png is not None
    loaded = cv.Results.load(out)
    pd.testing.assert_frame_equal(loaded.table, t)
    assert json.loads((out / "results.json").read_text())["meta"]["data"]["left/random"][0].startswith("drew 258")
    # resume: a rerun reads the finished cells instead of recomputing them
    lines = (out / "cells.jsonl").read_text().splitlines()
    again = cv.localize(mlp, task, ["left", "out"], [Neurons(), Neurons(dims=range(8))], **kw)
    assert (out / "cells.jsonl").read_text().splitlines() == lines
    pd.testing.assert_frame_equal(again.table, t)
    with pytest.raises(ValueError, match="holds a sweep with other settings"):
        cv.localize(mlp, task, "left", Neurons(), **{**kw, "seed": 4})


def test_same_seed_same_table(equality):
    task, mlp = equality
    runs = [cv.localize(mlp, task, "left", Neurons(dims=range(4)), layers=[0, 1], n_train=0, n_test=100, seed=9,
                        progress=False).table for _ in range(2)]
    pd.testing.assert_frame_equal(*runs)


def test_filter_drops_exactly_the_pairs_the_network_gets_wrong():
    from causalvar.splits import build_splits

    task = cv.tasks.hierarchical_equality()
    net = cv.tasks.train_mlp(task, hidden=(16,), steps=400, n=4000)  # half-trained: wrong on a third
    assert 0.55 < net.accuracy < 0.8
    data = cv.CounterfactualDataset.generate(task.causal_model, "left", 300, seed=1)
    with torch.no_grad():
        right = lambda settings, labels: net(task.encode(settings).inputs["x"]).argmax(-1) == task.targets(labels)
        keep = (right(data.bases, data.base_labels) & right(data.sources, data.source_labels)).tolist()
    (split,), kept = build_splits(cv.Engine(cv.as_adapter(net)), task, data, [cv.Site(0)], [None])
    expected = [i for i in range(len(data)) if keep[i]]
    assert 0 < len(expected) < len(data)
    assert kept.bases == [data.bases[i] for i in expected] and kept.sources == [data.sources[i] for i in expected]
    assert kept.labels == [data.labels[i] for i in expected] and len(split) == len(expected)
    assert f"filter 'network answers base and source correctly': dropped {len(data) - len(expected)} of 300" \
        in kept.report
