"""Tests for causalvar.counterfactuals on the hierarchical-equality model."""

import json
import random

import pytest

from causalvar.causal_model import CausalModel
from causalvar.counterfactuals import CounterfactualDataset, CounterfactualError, Row

INPUTS = {k: range(4) for k in "wxyz"}
MECHANISMS = {
    "left": lambda w, x: w == x,
    "right": lambda y, z: y == z,
    "out": lambda left, right: left == right,
}
EQUALITY = CausalModel(inputs=INPUTS, mechanisms=MECHANISMS)


def test_generate_labels_match_the_model():
    data = CounterfactualDataset.generate(EQUALITY, "left", 40, seed=1)
    assert len(data) == 40 and data.variable == "left" and data.name == "random"
    for row in data:
        assert isinstance(row, Row)
        assert set(row.base) == set(row.source) == set("wxyz")
        assert row.label == EQUALITY.interchange(row.base, {"left": row.source})["out"]
        assert row.base_label == EQUALITY.run(row.base)["out"]
        assert row.source_label == EQUALITY.run(row.source)["out"]
    # Hand check of the definition on the first row.
    b, s = data[0].base, data[0].source
    left = s["w"] == s["x"]
    assert data[0].label == (left == (b["y"] == b["z"]))
    assert data[-1] == data[39]
    assert data.summary().splitlines() == [
        "drew 40 candidate pairs for variable 'left' (seed 1, sources: independent draws)",
        "kept 40 pairs in counterfactual set 'random'",
    ]


def test_generate_is_deterministic():
    a = CounterfactualDataset.generate(EQUALITY, "right", 30, seed=5, changes_output=True)
    b = CounterfactualDataset.generate(EQUALITY, "right", 30, seed=5, changes_output=True)
    assert a == b
    assert a != CounterfactualDataset.generate(EQUALITY, "right", 30, seed=6, changes_output=True)


def test_changes_output_keeps_only_changing_pairs_and_reports_counts():
    data = CounterfactualDataset.generate(EQUALITY, "left", 50, seed=0, changes_output=True)
    assert len(data) == 50
    assert all(row.label != row.base_label for row in data)
    drawn_line, filter_line, kept_line = data.report
    drawn = int(drawn_line.split()[1])
    assert drawn > 50  # uniform w, x agree only 1/4 of the time, so many pairs change nothing
    assert filter_line == f"filter 'changes output (label != base label)': dropped {drawn - 50} of {drawn}"
    assert kept_line == "kept 50 pairs in counterfactual set 'random'"


def test_source_generator():
    def copy_w_to_x(base: dict, rng: random.Random) -> dict:
        return dict(base, x=base["w"], z=rng.randrange(4))

    data = CounterfactualDataset.generate(EQUALITY, "left", 20, source=copy_w_to_x, name="w_eq_x")
    assert data.name == "w_eq_x"
    for row in data:
        assert row.source["x"] == row.source["w"] == row.base["w"]
        assert row.label == (row.base["y"] == row.base["z"])  # left is forced True
    assert "sources: copy_w_to_x" in data.report[0]


def test_model_sampler_is_used_for_bases_and_sources():
    def distinct_wx(rng: random.Random) -> dict:
        w, x = rng.sample(range(4), 2)
        return {"w": w, "x": x, "y": rng.randrange(4), "z": rng.randrange(4)}

    model = CausalModel(inputs=INPUTS, mechanisms=MECHANISMS, sampler=distinct_wx)
    data = CounterfactualDataset.generate(model, "right", 30)
    assert all(r.base["w"] != r.base["x"] for r in data)
    assert all(r.source["w"] != r.source["x"] for r in data)


def test_variable_that_cannot_change_the_output():
    model = CausalModel(inputs=INPUTS, mechanisms=dict(MECHANISMS, junk=lambda w: w + 1), output="out")
    with pytest.raises(
        CounterfactualError,
        match="only 0 of the 10 requested pairs for variable 'junk' change the output after 1000 draws; "
        "relax changes_output or check the causal model",
    ):
        CounterfactualDataset.generate(model, "junk", 10, changes_output=True)
    assert len(CounterfactualDataset.generate(model, "junk", 10)) == 10


def test_max_draws_too_small_to_keep_enough():
    with pytest.raises(CounterfactualError, match=r"only \d+ of the 100 requested pairs for variable 'left'"):
        CounterfactualDataset.generate(EQUALITY, "left", 100, changes_output=True, max_draws=150)
    with pytest.raises(CounterfactualError, match=r"max_draws \(5\) is smaller than n \(10\)"):
        CounterfactualDataset.generate(EQUALITY, "left", 10, max_draws=5)


def test_generate_argument_errors():
    with pytest.raises(CounterfactualError, match="unknown variable 'middle'; variables are: w, x, y, z, left"):
        CounterfactualDataset.generate(EQUALITY, "middle", 10)
    for n in (0, -3, 2.5):
        with pytest.raises(CounterfactualError, match="n must be a positive integer"):
            CounterfactualDataset.generate(EQUALITY, "left", n)


def test_split_sizes_and_determinism():
    data = CounterfactualDataset.generate(EQUALITY, "left", 50)
    train, test = data.split(40, seed=2)
    assert (len(train), len(test)) == (40, 10)
    assert sorted(map(repr, train.bases + test.bases)) == sorted(map(repr, data.bases))
    assert data.split(40, seed=2) == (train, test)
    assert data.split(40, seed=3) != (train, test)
    assert [len(part) for part in data.split(0.7)] == [35, 15]
    assert train.report[-1] == "split (seed 2): 40 train / 10 test of 50; this is train"
    assert test.report[-1] == "split (seed 2): 40 train / 10 test of 50; this is test"
    with pytest.raises(CounterfactualError, match=r"n_train must be an int in \[0, 50\]"):
        data.split(51)
    with pytest.raises(CounterfactualError, match=r"fractional n_train must lie in \[0, 1\]"):
        data.split(1.5)


def test_filter_and_subset():
    data = CounterfactualDataset.generate(EQUALITY, "left", 20, seed=4)
    n_true = sum(data.labels)
    kept = data.filter(lambda row: row.label, reason="label is True")
    assert len(kept) == n_true and all(kept.labels)
    assert kept.report[-1] == f"filter 'label is True': dropped {20 - n_true} of 20"
    assert len(data) == 20 and len(data.report) == 2  # never mutates
    flags = [i % 2 == 0 for i in range(20)]
    evens = data.filter(flags, reason="even rows")
    assert evens.bases == data.bases[::2]
    assert evens.summary().endswith("filter 'even rows': dropped 10 of 20")
    with pytest.raises(CounterfactualError, match="filter 'short': got 3 keep flags for 20 rows"):
        data.filter([True] * 3, reason="short")
    sub = data.subset([3, 1])
    assert sub[0] == data[3] and sub[1] == data[1] and len(sub) == 2
    assert sub.report[-1] == "subset: kept 2 of 20 rows"


def test_to_dict_round_trip_through_json():
    data = CounterfactualDataset.generate(EQUALITY, "right", 15, changes_output=True, name="flip")
    restored = CounterfactualDataset.from_dict(json.loads(json.dumps(data.to_dict())))
    assert restored == data
    assert restored.summary() == data.summary()


def test_columns_must_have_equal_lengths():
    with pytest.raises(CounterfactualError, match="must have equal lengths, got 1, 0, 0, 0, 0"):
        CounterfactualDataset("left", [{"w": 0}], [], [], [], [])
