"""MIB's tasks built in: copy-colours MCQA, two-digit addition, RAVEL-style city attributes.

Fast tests check the causal models, prompts, token roles and counterfactual generators without a
network; slow ones (``-m slow``) run the embedded SmolLM2-135M: accuracy and one small sweep each."""
from __future__ import annotations

import importlib
import random
from types import SimpleNamespace

import pandas as pd
import pytest

import causalvar as cv
from causalvar import task_accuracy
ar = importlib.import_module("causalvar.tasks.arithmetic")  # the modules (cv.tasks.mcqa etc. are the factories)
mc = importlib.import_module("causalvar.tasks.mcqa")
rv = importlib.import_module("causalvar.tasks.ravel")
from causalvar.tasks.ravel_data import ATTRIBUTES, CITIES, TEMPLATES
from featurizers import Neurons

NO_LM = SimpleNamespace(tokenizer=None, padding_side="left")  # the factories only keep the tokenizer

HAT = {"object": "hat", "color": "gray", "choice0": "orange", "choice1": "blue", "choice2": "gray",
       "choice3": "green", "symbol0": "K", "symbol1": "V", "symbol2": "B", "symbol3": "C"}


# ---------------------------------------------------------------- MCQA
def test_mcqa_causal_model_by_hand():
    cm = mc.causal_model()
    v = cm.run(HAT)
    assert (v["answer_pointer"], v["answer"]) == (2, "B")
    moved = {**HAT, "choice0": "gray", "choice2": "orange"}  # answer at index 0
    assert cm.interchange(HAT, {"answer_pointer": moved})["answer"] == "K"  # the base's symbol there
    other = {**HAT, "symbol2": "Z"}
    assert cm.interchange(HAT, {"answer": other})["answer"] == "Z"  # the source's symbol as such
    assert cm.interchange(HAT, {"answer_pointer": other})["answer"] == "B"


def test_mcqa_prompt_and_roles():
    text = mc.prompt(HAT)
    assert text == ("The hat is gray. What color is the hat?\n"
                    "Options: orange (K), blue (V), gray (B), green (C).\nAnswer: gray (")
    v = mc.causal_model().run(HAT)
    task = mc.mcqa(NO_LM)
    i = task.positions["correct_symbol"](v, text)
    assert text[i] == "B" and text[i - 6:i] == "gray (" and text[task.positions["correct_symbol_period"](v, text)] == ")"
    assert task.positions["last_token"] == "last" and task.checker == "token"


def test_mcqa_sampler_gives_well_formed_questions():
    for s in mc.causal_model().sample(300, seed=1):
        choices, symbols = [s[c] for c in mc.CHOICES], [s[x] for x in mc.SYMBOLS]
        assert choices.count(s["color"]) == 1 and len(set(choices)) == 4 and len(set(symbols)) == 4


def test_mcqa_generators_change_exactly_what_they_should():
    cm, rng = mc.causal_model(), random.Random(0)
    for base in cm.sample(200, seed=2):
        b = cm.run(base)
        pos = mc.answer_position(dict(base), rng)
        p = cm.run(pos)
        assert {k for k in base if base[k] != pos[k]} <= set(mc.CHOICES)
        assert sorted(pos[c] for c in mc.CHOICES) == sorted(base[c] for c in mc.CHOICES)
        assert p["answer_pointer"] != b["answer_pointer"] and pos["color"] == base["color"]  # same text, moved

        let = mc.random_letter(dict(base), rng)
        assert {k for k in base if base[k] != let[k]} == set(mc.SYMBOLS)
        assert not {let[x] for x in mc.SYMBOLS} & {base[x] for x in mc.SYMBOLS}
        assert len({let[x] for x in mc.SYMBOLS}) == 4 and cm.run(let)["answer_pointer"] == b["answer_pointer"]

        both = mc.answer_position_random_letter(dict(base), rng)
        assert cm.run(both)["answer_pointer"] != b["answer_pointer"]
        assert not {both[x] for x in mc.SYMBOLS} & {base[x] for x in mc.SYMBOLS}
        assert {k for k in base if base[k] != both[k]} <= set(mc.CHOICES) | set(mc.SYMBOLS)


def test_mcqa_counterfactual_sets_and_labels():
    task = mc.mcqa(NO_LM)
    sets = task.counterfactual_sets("answer_pointer", 40, seed=3)
    assert [d.name for d in sets] == ["answerPosition", "randomLetter", "answerPosition_randomLetter"]
    cm = task.causal_model
    by_name = {d.name: d for d in sets}
    for row in by_name["answerPosition"]:  # the base's symbol at the source's index
        assert row.label == row.base[f"symbol{cm.run(row.source)['answer_pointer']}"] != row.base_label
    for row in by_name["randomLetter"]:  # the pointer did not move
        assert row.label == row.base_label != row.source_label
    answer = {d.name: d for d in task.counterfactual_sets("answer", 40, seed=3)}
    for d in answer.values():
        assert d.labels == d.source_labels


# ---------------------------------------------------------------- arithmetic
def test_arithmetic_causal_model_by_hand():
    cm = ar.causal_model()
    v = cm.run({"a": 27, "b": 85})
    assert (v["ones"], v["ones_carry"], v["tens"], v["answer"]) == (2, 1, 11, 112)
    v = cm.run({"a": 23, "b": 45})
    assert (v["ones"], v["ones_carry"], v["tens"], v["answer"]) == (8, 0, 6, 68)
    assert cm.interchange({"a": 23, "b": 45}, {"ones_carry": {"a": 27, "b": 85}})["answer"] == 78
    assert cm.run({"a": 99, "b": 99}, intervene={"ones_carry": 0})["answer"] == 188
    for a in range(10, 100, 7):
        for b in range(10, 100, 3):
            assert cm.run({"a": a, "b": b})["answer"] == a + b


def test_arithmetic_prompt_and_roles():
    task = ar.arithmetic(NO_LM)
    assert task.checker == "greedy" and task.answer(112) == "112"
    for a, b in [(23, 45), (35, 35), (12, 35), (99, 10)]:  # b also in the worked example, a == b
        text = ar.prompt({"a": a, "b": b})
        assert text == f"12 + 35 = 47\n{a} + {b} = "
        i = task.positions["op2_last"]({"a": a, "b": b}, text)
        assert text[i] == str(b)[-1] and text[i + 1:] == " = " and text[i - 1] == str(b)[0]


def test_flip_carry_flips_only_the_carry():
    cm, rng = ar.causal_model(), random.Random(0)
    changed_a = 0
    for a in range(10, 100):
        for b in range(10, 100):
            base = {"a": a, "b": b}
            src = ar.flip_carry(dict(base), rng)
            assert cm.run(src)["ones_carry"] == 1 - cm.run(base)["ones_carry"]
            assert (src["a"] // 10, src["b"] // 10) == (a // 10, b // 10)  # the tens digits stay
            if src["a"] != a:
                changed_a += 1
                assert a % 10 == 0 and cm.run(base)["ones_carry"] == 0  # only when b alone cannot carry
            label = cm.interchange(base, {"ones_carry": src})["answer"]
            assert label == a + b + (10 if cm.run(src)["ones_carry"] else -10)
    assert changed_a == 9 * 90  # every a ending in 0


def test_arithmetic_sets():
    task = ar.arithmetic(NO_LM)
    sets = task.counterfactual_sets("ones_carry", 5, seed=0)
    assert [d.name for d in sets] == ["random", "ones_carry"]
    assert all(len(d) == 5 * task.oversample for d in sets)  # headroom for the model's ~43% accuracy
    assert all(abs(r.label - r.base_label) == 10 for r in sets[1])


# ---------------------------------------------------------------- RAVEL
def test_ravel_causal_model_by_hand():
    cm = rv.causal_model()
    paris = {"city": "Paris", "attribute": "Continent", "template": 0}
    v = cm.run(paris)
    assert (v["Country"], v["Continent"], v["Language"], v["answer"]) == ("France", "Europe", "French", "Europe")
    tokyo = {"city": "Tokyo", "attribute": "Language", "template": 1}
    assert cm.interchange({**paris, "attribute": "Country"}, {"Country": tokyo})["answer"] == "Japan"
    assert cm.interchange({**paris, "attribute": "Language"}, {"Country": tokyo})["answer"] == "French"
    assert rv.prompt(paris) == "The city of Paris is in the continent of"
    assert rv.prompt(tokyo) == "City: Kyoto\nLanguage: Japanese\n\nCity: Tokyo\nLanguage:"


def test_ravel_material_and_roles():
    assert "Kyoto" not in CITIES and len(CITIES) == 30
    assert all(len(v) == 3 for v in CITIES.values()) and set(TEMPLATES) == set(ATTRIBUTES)
    task = rv.ravel(NO_LM)
    assert task.checker == "normalized" and task.answer("South America") == " South America"
    for city in CITIES:
        for attribute in ATTRIBUTES:
            for t in range(rv.N_TEMPLATES):
                s = {"city": city, "attribute": attribute, "template": t}
                text = rv.prompt(s)
                assert text.count(city) == 1
                i = task.positions["entity_last_token"](s, text)
                assert text[:i + 1].endswith(city)


@pytest.mark.parametrize("variable", ATTRIBUTES)
def test_ravel_cause_and_isolate_sets(variable):
    task = rv.ravel(NO_LM)
    cause, isolate = rv.ravel_sets(task, variable, 60, seed=1)
    assert (cause.name, isolate.name, len(cause), len(isolate)) == ("cause", "isolate", 60, 60)
    k = ATTRIBUTES.index(variable)
    for row in cause:
        assert row.base["attribute"] == variable
        assert CITIES[row.source["city"]][k] != CITIES[row.base["city"]][k]
        assert row.label == CITIES[row.source["city"]][k] != row.base_label
    for row in isolate:
        assert row.base["attribute"] != variable
        assert CITIES[row.source["city"]][k] != CITIES[row.base["city"]][k]
        assert row.label == row.base_label
    assert {r.base["attribute"] for r in isolate} == set(ATTRIBUTES) - {variable}
    assert [d.name for d in task.counterfactual_sets(variable, 10)] == ["cause", "isolate"]
    with pytest.raises(ValueError, match="isolate"):
        task.counterfactual_sets(variable, 10, changes_output=True)


def test_disentangle_averages_cause_and_isolate():
    rows = [{"variable": "Country", "featurizer": "full_vector", "layer": layer, "position": "entity_last_token",
             "dataset": name, "iia": iia, "n": 10, "ci_low": 0.0, "ci_high": 1.0}
            for layer, name, iia in [(0, "cause", 0.8), (0, "isolate", 0.2), (5, "cause", 0.6), (5, "isolate", 1.0)]]
    d = rv.disentangle(cv.Results(rows))
    assert list(d.columns) == ["variable", "featurizer", "layer", "position", "Cause", "Isolate", "Disentangle"]
    assert d["Disentangle"].tolist() == pytest.approx([0.5, 0.8])
    assert rv.disentangle(pd.DataFrame(rows))["Cause"].tolist() == [0.8, 0.6]
    with pytest.raises(ValueError, match="isolate"):
        rv.disentangle(pd.DataFrame(rows[:1]))


# ---------------------------------------------------------------- SmolLM2-135M (slow)
def _iia(res) -> dict:
    return {(r["variable"], r["layer"], r["position"], r["dataset"]): r["iia"] for r in res.rows}


@pytest.mark.slow
def test_smollm_accuracy_on_mib_tasks(smollm):
    assert task_accuracy(smollm, mc.mcqa(smollm), n=256) >= 0.93  # measured 0.97 (n=1024)
    assert task_accuracy(smollm, ar.arithmetic(smollm), n=128) >= 0.33  # measured 0.43 (n=512)
    assert task_accuracy(smollm, rv.ravel(smollm), n=128) >= 0.97  # measured 1.0 (all 180 prompts)


@pytest.mark.slow
def test_mcqa_symbol_is_copied_from_its_token_and_read_out_at_the_end(smollm):
    task = mc.mcqa(smollm)
    res = cv.localize(smollm, task, ["answer_pointer", "answer"], Neurons(), layers=[0, 29],
                      positions=["correct_symbol", "last_token"], n_train=0, n_test=32, progress=False)
    iia = _iia(res)
    for name in mc.SETS:  # the answer symbol: at its own token early, at the last token late
        assert iia[("answer", 0, "correct_symbol", name)] >= 0.85
        assert iia[("answer", 29, "last_token", name)] >= 0.9
        assert iia[("answer", 0, "last_token", name)] <= 0.1
    # late at the last token the symbol is already chosen: right when the pointer's symbol is the
    # source's, wrong when only the letters changed
    assert iia[("answer_pointer", 29, "last_token", "answerPosition")] >= 0.9
    assert iia[("answer_pointer", 29, "last_token", "randomLetter")] <= 0.1
    assert "filter 'network answers base and source correctly'" in res.meta["data"]["answer/randomLetter"][2]


@pytest.mark.slow
def test_arithmetic_carry_is_not_a_single_early_site(smollm):
    task = ar.arithmetic(smollm)
    data = task.counterfactual_sets("ones_carry", 26, seed=0)  # 260 pairs per set; ~12-17% survive filtering
    res = cv.localize(smollm, task, "ones_carry", Neurons(), layers=[0, 24], positions=["op2_last", "last"],
                      n_train=0, n_test=24, data=data, progress=False)
    iia = _iia(res)
    # the ones_carry set's labels are the base's sum +-10: no early single-site patch gives them
    assert iia[("ones_carry", 0, "op2_last", "ones_carry")] <= 0.1
    assert iia[("ones_carry", 0, "last", "ones_carry")] <= 0.1
    # an early patch of the last token leaves the answer alone: right on the random pairs with the
    # base's carry (about half), wrong on the others
    assert 0.3 <= iia[("ones_carry", 0, "last", "random")] <= 0.8
    assert iia[("ones_carry", 24, "last", "ones_carry")] > iia[("ones_carry", 0, "last", "ones_carry")]


@pytest.mark.slow
def test_ravel_entity_token_causes_but_does_not_isolate(smollm):
    task = rv.ravel(smollm)
    res = cv.localize(smollm, task, "Country", Neurons(), layers=[4, 29],
                      positions=["entity_last_token", "last_token"], n_train=0, n_test=32, progress=False)
    d = rv.disentangle(res).set_index(["layer", "position"])
    # the whole city vector early: every attribute follows the source city (Cause high, Isolate low)
    # measured Cause 0.69, n=32
    assert d.loc[(4, "entity_last_token"), "Cause"] >= 0.6 and d.loc[(4, "entity_last_token"), "Isolate"] <= 0.35
    # too late at the city token: nothing moves; early at the last token: nothing about the city yet
    assert d.loc[(29, "entity_last_token"), "Cause"] <= 0.1 and d.loc[(29, "entity_last_token"), "Isolate"] >= 0.9
    assert d.loc[(4, "last_token"), "Cause"] <= 0.1
    assert (d["Disentangle"] == (d["Cause"] + d["Isolate"]) / 2).all()
    assert res.meta["data"]["Country/cause"][2] == "filter 'network answers base and source correctly': dropped 0 of 48"
