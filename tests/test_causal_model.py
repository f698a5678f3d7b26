"""Tests for causalvar.causal_model on the hierarchical-equality model."""

import random

import pytest

from causalvar.causal_model import CausalModel, CausalModelError

MECHANISMS = {
    "left": lambda w, x: w == x,
    "right": lambda y, z: y == z,
    "out": lambda left, right: left == right,
}


def equality(**kwargs) -> CausalModel:
    inputs = {"w": range(4), "x": range(4), "y": range(4), "z": range(4)}
    return CausalModel(inputs=inputs, mechanisms=dict(MECHANISMS), **kwargs)


def test_structure():
    model = equality()
    assert model.variables == ("w", "x", "y", "z", "left", "right", "out")
    assert model.inputs["w"] == (0, 1, 2, 3)
    assert model.parents["out"] == ("left", "right")
    assert model.parents["w"] == ()
    assert model.output == "out"
    assert "left(w, x)" in repr(model) and "output: out" in repr(model)


def test_topological_order_is_independent_of_declaration_order():
    model = CausalModel(
        inputs={"a": (1, 2)},
        mechanisms={"c": lambda b: b * 10, "b": lambda a: a + 1},
    )
    assert model.variables == ("a", "b", "c")
    assert model.run({"a": 2}) == {"a": 2, "b": 3, "c": 30}


def test_run():
    s = equality().run({"w": 0, "x": 0, "y": 1, "z": 2})
    assert s == {"w": 0, "x": 0, "y": 1, "z": 2, "left": True, "right": False, "out": False}


def test_intervene_on_mechanism_ignores_non_input_keys():
    model = equality()
    s = model.run({"w": 0, "x": 0, "y": 1, "z": 2})
    t = model.run(s, intervene={"left": False})  # s carries left=True, which is ignored
    assert (t["left"], t["right"], t["out"]) == (False, False, True)


def test_intervene_on_input_needs_no_value_for_it():
    model = equality()
    t = model.run({"x": 1, "y": 2, "z": 2}, intervene={"w": 1})
    assert (t["w"], t["left"], t["right"], t["out"]) == (1, True, True, True)


def test_interchange_single_variable():
    model = equality()
    base = {"w": 0, "x": 1, "y": 2, "z": 2}  # left False, right True -> out False
    source = {"w": 3, "x": 3, "y": 0, "z": 1}  # left True
    assert model.run(base)["out"] is False
    t = model.interchange(base, {"left": source})
    assert (t["left"], t["right"], t["out"]) == (True, True, True)
    assert {k: t[k] for k in "wxyz"} == base
    # A source where w != x leaves left False: nothing changes.
    assert model.interchange(base, {"left": {"w": 1, "x": 2, "y": 0, "z": 0}})["out"] is False


def test_interchange_several_variables():
    model = equality()
    base = {"w": 0, "x": 1, "y": 2, "z": 3}  # left False, right False -> out True
    left_src = {"w": 1, "x": 1, "y": 0, "z": 1}  # left True
    right_src = {"w": 0, "x": 1, "y": 0, "z": 0}  # right True
    assert model.interchange(base, {"left": left_src})["out"] is False
    both = model.interchange(base, {"left": left_src, "right": right_src})
    assert (both["left"], both["right"], both["out"]) == (True, True, True)


def test_interchange_of_an_input():
    model = equality()
    t = model.interchange({"w": 0, "x": 1, "y": 2, "z": 2}, {"w": {"w": 1, "x": 0, "y": 0, "z": 0}})
    assert (t["w"], t["left"], t["out"]) == (1, True, True)


def test_sample_is_deterministic_and_in_domain():
    model = equality()
    a, b = model.sample(50, seed=3), model.sample(50, seed=3)
    assert a == b and len(a) == 50
    assert a != model.sample(50, seed=4)
    assert all(set(s) == {"w", "x", "y", "z"} and all(v in range(4) for v in s.values()) for s in a)
    assert model.sample(0) == []


def test_sample_uses_sampler():
    def distinct_wx(rng: random.Random) -> dict:
        w, x = rng.sample(range(4), 2)
        return {"w": w, "x": x, "y": rng.randrange(4), "z": rng.randrange(4)}

    samples = equality(sampler=distinct_wx).sample(100, seed=1)
    assert all(s["w"] != s["x"] for s in samples)
    assert samples == equality(sampler=distinct_wx).sample(100, seed=1)


# --- errors at construction -------------------------------------------------


def test_empty_domain():
    with pytest.raises(CausalModelError, match="input 'w' has an empty domain"):
        CausalModel(inputs={"w": []}, mechanisms={"o": lambda w: w})


def test_variadic_mechanism():
    with pytest.raises(CausalModelError, match=r"mechanism 'o' has \*args, \*\*kwargs .*\(args\)"):
        CausalModel(inputs={"w": [1]}, mechanisms={"o": lambda *args: args})
    with pytest.raises(CausalModelError, match=r"mechanism 'o' has .*\(kw\)"):
        CausalModel(inputs={"w": [1]}, mechanisms={"o": lambda w, **kw: w})


def test_name_both_input_and_mechanism():
    with pytest.raises(CausalModelError, match="'w' declared both as input and as mechanism"):
        CausalModel(inputs={"w": [1]}, mechanisms={"w": lambda: 1, "o": lambda w: w})


def test_unknown_parent():
    mechanisms = dict(MECHANISMS, out=lambda lft, right: lft == right)
    with pytest.raises(
        CausalModelError,
        match="mechanism 'out' has parameter 'lft', which is not a variable; "
        "variables are: w, x, y, z, left, right, out",
    ):
        CausalModel(inputs={k: range(4) for k in "wxyz"}, mechanisms=mechanisms)


def test_cycle():
    with pytest.raises(CausalModelError, match="cycle among mechanisms: a -> b -> a"):
        CausalModel(inputs={"w": [1]}, mechanisms={"a": lambda b, w: b, "b": lambda a: a, "o": lambda a: a})
    with pytest.raises(CausalModelError, match="cycle among mechanisms: a -> a"):
        CausalModel(inputs={"w": [1]}, mechanisms={"a": lambda a: a})


def test_unknown_output():
    with pytest.raises(CausalModelError, match="output 'result' is not a variable; variables are: w, x"):
        equality(output="result")


def test_several_sinks():
    inputs = {k: range(4) for k in "wxyz"}
    junk = dict(MECHANISMS, junk=lambda w: w + 1)
    with pytest.raises(CausalModelError, match="the sinks are out, junk; pass output="):
        CausalModel(inputs=inputs, mechanisms=junk)
    assert CausalModel(inputs=inputs, mechanisms=junk, output="out").output == "out"


# --- errors at call -----------------------------------------------------------


def test_missing_input():
    with pytest.raises(CausalModelError, match="input 'z' is missing"):
        equality().run({"w": 0, "x": 0, "y": 1})


def test_input_outside_domain():
    with pytest.raises(CausalModelError, match=r"input 'w' = 7 is outside its domain \(0, 1, 2, 3\)"):
        equality().run({"w": 7, "x": 0, "y": 1, "z": 2})


def test_intervention_on_unknown_variable():
    with pytest.raises(
        CausalModelError,
        match="intervention on unknown variable 'middle'; variables are: w, x, y, z, left, right, out",
    ):
        equality().run({"w": 0, "x": 0, "y": 1, "z": 2}, intervene={"middle": True})


def test_interchange_of_unknown_variable():
    s = {"w": 0, "x": 0, "y": 1, "z": 2}
    with pytest.raises(CausalModelError, match="interchange of unknown variable 'middle'; variables are: w"):
        equality().interchange(s, {"middle": s})


def test_mechanism_that_raises():
    model = CausalModel(inputs={"w": range(2), "x": range(2)}, mechanisms={"left": lambda w, x: w / (w - w)})
    with pytest.raises(
        CausalModelError,
        match=r"mechanism 'left' raised ZeroDivisionError\('division by zero'\) on left\(w=0, x=1\)",
    ) as info:
        model.run({"w": 0, "x": 1})
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_sampler_results_are_validated():
    with pytest.raises(CausalModelError, match=r"input 'w' = 9 is outside its domain"):
        equality(sampler=lambda rng: {"w": 9, "x": 0, "y": 0, "z": 0}).sample(1)
    with pytest.raises(CausalModelError, match="sampler left input 'z' missing"):
        equality(sampler=lambda rng: {"w": 0, "x": 0, "y": 0}).sample(1)
    with pytest.raises(CausalModelError, match="sampler returned 'v', which are not inputs"):
        equality(sampler=lambda rng: {"v": 0, "w": 0, "x": 0, "y": 0, "z": 0}).sample(1)


def test_negative_sample_size():
    with pytest.raises(CausalModelError, match="cannot sample -1 settings"):
        equality().sample(-1)


def test_error_is_a_value_error():
    assert issubclass(CausalModelError, ValueError)
