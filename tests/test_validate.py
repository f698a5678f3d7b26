"""Validating interpretations (Palumbo et al.'s axioms): ε against its closed form, an exact interpretation
of a hand-built network, wrong ones rejected at their step, the maps' mistakes named by step, and DAS
cells of the hierarchical-equality MLP validated where their IIA is high and failed where it is low."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import causalvar as cv
from causalvar.validate import AXIOMS, Interpretation, InterpretationError, Step, ValidationResults, validate
from featurizers import DAS


def and_or_task():
    """out = (a and b) or c over bits."""
    cm = cv.CausalModel(inputs={"a": (0, 1), "b": (0, 1), "c": (0, 1)},
                        mechanisms={"both": lambda a, b: int(a and b), "out": lambda both, c: int(both or c)})
    return cv.Task(cm, encode=lambda s: [s["a"], s["b"], s["c"]], name="and_or")


def and_or_net() -> nn.Sequential:
    """Block 0: hidden units (relu(a + b − 1), relu(c)) = (a ∧ b, c) exactly; block 1: logits (0, 2(u1 + u2) − 1),
    class 1 iff u1 ∨ u2."""
    hidden, out = nn.Linear(3, 2), nn.Linear(2, 2)
    with torch.no_grad():
        hidden.weight.copy_(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
        hidden.bias.copy_(torch.tensor([-1.0, 0.0]))
        out.weight.copy_(torch.tensor([[0.0, 0.0], [2.0, 2.0]]))
        out.bias.copy_(torch.tensor([0.0, -1.0]))
    return nn.Sequential(nn.Sequential(hidden, nn.ReLU()), out)


def units(h=None, alpha=None, gamma=None, **kw) -> Step:
    """Step 1 at block 0: the abstract state (a ∧ b, c) is the hidden units, thresholded at 0.5."""
    return Step(0, h=h or (lambda s: (s[0] & s[1], s[2])), alpha=alpha or (lambda u: (u > 0.5).long()),
                gamma=gamma or (lambda states, u: torch.tensor(states, dtype=u.dtype)), **kw)


def output(h=None, gamma=None) -> Step:
    """Step 2 at the output: the class, computed as (a ∧ b) ∨ c; γ writes logits that pick it."""
    return Step(1, h=h or (lambda s: int(s[0] or s[1])), alpha=lambda logits: logits.argmax(-1),
                gamma=gamma or (lambda states, logits: 2 * F.one_hot(torch.tensor(states), 2).float()))


def bits(x):
    return x["a"], x["b"], x["c"]


def errors(rep) -> dict:
    """{(step, axiom): errors}."""
    return {(r["step"], r["axiom"]): r["errors"] for r in rep.rows}


def test_epsilon_for_zero_errors_is_the_closed_form():
    for n, confidence in [(1, 0.95), (2000, 0.95), (8939, 0.95), (500, 0.99)]:
        assert cv.epsilon_bound(0, n, confidence) == pytest.approx(1 - (1 - confidence) ** (1 / n), rel=1e-9)
    assert cv.epsilon_bound(0, 8939) == pytest.approx(3.35e-4, rel=1e-3)  # Palumbo et al.'s modular addition
    from scipy.stats import binomtest  # errors: 1 − the one-sided exact lower bound on the agreement rate

    for k in (1, 6, 246):
        low = binomtest(1000 - k, 1000, alternative="greater").proportion_ci(0.95, "exact").low
        assert cv.epsilon_bound(k, 1000) == pytest.approx(1 - low, rel=1e-9)


def test_an_exact_interpretation_has_zero_errors_on_every_axiom():
    rep = validate(and_or_net(), and_or_task(), Interpretation(bits, [units(), output()]), n=2000, seed=0,
                   confidence=0.9)
    t = rep.table
    assert list(t.columns[:6]) == ["step", "site", "axiom", "errors", "n", "epsilon"]
    assert [(r.step, r.site, r.axiom) for r in t.itertuples()] == [(k, s, a) for k, s in ((1, "L0"), (2, "L1"))
                                                                    for a in AXIOMS]
    assert (t["errors"] == 0).all() and (t["n"] == 2000).all()
    assert t["epsilon"].tolist() == pytest.approx([1 - 0.1 ** (1 / 2000)] * 8, rel=1e-9)
    assert rep.meta["steps"] == ["L0", "L1"] and rep.meta["n"] == 2000 and rep.meta["seed"] == 0


def test_a_validation_saves_and_loads(tmp_path):
    rep = validate(and_or_net(), and_or_task(), Interpretation(bits, [units()], info={"note": "exact"}), n=200,
                   progress=False)
    back = ValidationResults.load(rep.save(tmp_path / "v"))
    assert back.table.equals(rep.table) and back.meta["interpretation"] == {"note": "exact"}
    fig = back.figure(tmp_path / "v" / "epsilon.png")
    assert (tmp_path / "v" / "epsilon.png").stat().st_size > 0
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["step 1\nL0"]


def test_a_wrong_abstract_component_is_rejected_at_its_step():
    and_not_or = output(h=lambda s: int(s[0] and s[1]))  # the output step computes AND, the network OR
    rep = validate(and_or_net(), and_or_task(), Interpretation(bits, [units(), and_not_or]), n=2000, seed=0)
    e, eps = errors(rep), {(r["step"], r["axiom"]): r["epsilon"] for r in rep.rows}
    assert all(e[(1, a)] == 0 for a in AXIOMS)
    # AND and OR of (a ∧ b, c) differ when exactly one holds: P = 1/4·1/2 + 3/4·1/2 = 1/2
    for a in AXIOMS:
        assert 0.45 < e[(2, a)] / 2000 < 0.55 and eps[(2, a)] > 0.45


def test_a_wrong_first_step_fails_its_prefix_downstream_but_not_the_next_component():
    either = units(h=lambda s: (s[0] | s[1], s[2]))  # a ∨ b for a ∧ b
    e = errors(validate(and_or_net(), and_or_task(), Interpretation(bits, [either, output()]), n=2000, seed=0))
    # at step 1 both chains start from the input: a ∨ b ≠ a ∧ b when a ≠ b (P = 1/2)
    assert 0.45 < e[(1, "prefix_equivalence")] / 2000 < 0.55 and e[(1, "component_equivalence")] == e[(1, "prefix_equivalence")]
    # the output step is right given what step 1 really holds; composed from the input it inherits the
    # mistake where a ≠ b and c = 0 (P = 1/4), and so does writing that composed state
    assert e[(2, "component_equivalence")] == e[(2, "component_replaceability")] == 0
    assert 0.2 < e[(2, "prefix_equivalence")] / 2000 < 0.3
    assert e[(2, "prefix_replaceability")] == e[(2, "prefix_equivalence")]


def test_equal_and_delta_decide_what_counts_as_the_same_state():
    flipped = dict(h=lambda s: (s[0] & s[1], 1 - s[2]))  # the second component always wrong
    net, task = and_or_net(), and_or_task()
    strict = errors(validate(net, task, Interpretation(bits, [units(**flipped)]), n=500))
    assert strict[(1, "prefix_equivalence")] == 500
    tolerant = errors(validate(net, task, Interpretation(bits, [units(**flipped, delta=1)]), n=500))
    assert tolerant[(1, "prefix_equivalence")] == tolerant[(1, "component_equivalence")] == 0
    first_only = errors(validate(net, task, Interpretation(bits, [units(**flipped, equal=lambda a, b: a[0] == b[0])]),
                                 n=500))
    assert first_only[(1, "prefix_equivalence")] == 0
    assert first_only[(1, "prefix_replaceability")] > 0  # writing the wrong c still changes the output


def test_data_replaces_the_drawn_inputs():
    data = [{"a": 1, "b": 1, "c": 0}, {"a": 0, "b": 1, "c": 0}, {"a": 1, "b": 0, "c": 1}]
    rep = validate(and_or_net(), and_or_task(), Interpretation(bits, [units(h=lambda s: (s[0] | s[1], s[2]))]),
                   data=data)
    e = errors(rep)
    assert rep.meta["n"] == 3 and rep.meta["seed"] is None and e[(1, "prefix_equivalence")] == 2  # a ∨ b ≠ a ∧ b on the last two


@pytest.mark.parametrize("step, message", [
    (units(alpha=lambda u: (u > 0.5).long()[:-1]), r"step 1 \(site L0\): alpha returned 99 states for 100 rows"),
    (units(alpha=lambda u: None), r"step 1 \(site L0\): alpha returned NoneType"),
    (units(alpha=lambda u: u.sum()), r"step 1 \(site L0\): alpha returned Tensor"),
    (units(alpha=lambda u: u.reshape(7, -1)), r"step 1 \(site L0\): alpha failed on activations \[100, 2\]"),
    (units(h=lambda s: s["a"] + 1), r"step 1 \(site L0\): h failed on the abstract state"),
    (units(gamma=lambda states, u: u[:, :1]), r"step 1 \(site L0\): gamma returned a tensor \[100, 1\] for "
                                              r"activations \[100, 2\]"),
    (units(gamma=lambda states, u: states), r"step 1 \(site L0\): gamma returned list"),
    (units(gamma=lambda states, u: torch.tensor(states)), r"step 1 \(site L0\): gamma returned a torch.int64"),
    (units(gamma=lambda states, u: u / 0), r"step 1 \(site L0\): gamma wrote NaN or infinite values on \d+ of 100"),
    (units(equal=lambda a, b: torch.tensor([1, 1])), r"step 1 \(site L0\): comparing the state read by alpha"),
    (units(delta=1, h=lambda s: s[0]), r"step 1 \(site L0\): comparing .* with delta=1 the states must be sequences"),
])
def test_a_map_that_returns_the_wrong_thing_is_named_by_step(step, message):
    with pytest.raises(InterpretationError, match=message):
        validate(and_or_net(), and_or_task(), Interpretation(bits, [step]), n=100)


def test_a_wrong_second_step_is_named_as_step_2():
    bad = output(gamma=lambda states, logits: torch.zeros(len(states) + 1, 2))
    with pytest.raises(InterpretationError, match=r"step 2 \(site L1\): gamma returned a tensor \[101, 2\]"):
        validate(and_or_net(), and_or_task(), Interpretation(bits, [units(), bad]), n=100)


def test_bad_arguments_are_refused_before_any_forward():
    net, task, interp = and_or_net(), and_or_task(), Interpretation(bits, [units()])
    with pytest.raises(cv.ModelError, match="no module 'decoder'"):
        validate(net, task, Interpretation(bits, [Step("decoder", h=id, alpha=id, gamma=id)]))
    with pytest.raises(InterpretationError, match=r"step 2 \(site L0\) does not come after step 1 \(site L1\)"):
        validate(net, task, Interpretation(bits, [output(), units()]))
    with pytest.raises(InterpretationError, match=r"step 2 \(site L0\) cuts the network where step 1 does"):
        validate(net, task, Interpretation(bits, [units(), units()]))
    with pytest.raises(InterpretationError, match="alpha_in failed on the input setting"):
        validate(net, task, Interpretation(lambda x: x["d"], [units()]), n=10)
    with pytest.raises(ValueError, match=r"confidence must be a number in \(0, 1\)"):
        validate(net, task, interp, confidence=95)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        validate(net, task, interp, n=0)
    with pytest.raises(InterpretationError, match="steps must be a non-empty list of cv.Step"):
        Interpretation(bits, [])
    with pytest.raises(InterpretationError, match="the step at L0: gamma must be callable"):
        Step(0, h=id, alpha=id, gamma=None)
    with pytest.raises(ValueError, match="delta must be an int >= 0"):
        units(delta=-1)


def test_a_language_model_is_cut_at_a_token_position(tokenizer):
    from conftest import make_lm, prompt_task

    lm = cv.HFModel(make_lm("gpt2", len(tokenizer)), tokenizer)
    task = prompt_task(lm)
    unchanged = Step(cv.Site(1, "s2"), h=lambda x: x["b"], alpha=lambda h: [None] * len(h), gamma=lambda s, h: h,
                     equal=lambda a, b: True)  # reads nothing, writes back what it found
    rep = validate(lm, task, Interpretation(lambda x: x, [unchanged]), n=40, progress=False)
    assert (rep.table["errors"] == 0).all()
    cleared = Step(cv.Site(1, "last"), h=lambda x: x["b"], alpha=lambda h: [None] * len(h),
                   gamma=lambda s, h: torch.zeros_like(h), equal=lambda a, b: True)
    assert errors(validate(lm, task, Interpretation(lambda x: x, [cleared]), n=40,
                           progress=False))[(1, "prefix_replaceability")] > 0
    with pytest.raises(InterpretationError, match=r"step 1 \(site L1\): the network has a sequence axis"):
        validate(lm, task, Interpretation(lambda x: x, [Step(1, h=id, alpha=id, gamma=id)]))


@pytest.mark.filterwarnings("ignore::causalvar.DuplicatePairsWarning")  # 3 bits: 64 pairs in all
def test_from_localization_reads_and_writes_only_the_features_the_cell_interchanges():
    from featurizers import Neurons

    net, task = and_or_net(), and_or_task()
    res = cv.localize(net, task, "both", [Neurons(dims=[0]), Neurons(dims=[1])], layers=0, n_train=0, n_test=64,
                      progress=False)
    unit = {}
    for name in ("neurons[0]", "neurons[1]"):
        interp = Interpretation.from_localization(res, "both", 0, model=net, task=task, featurizer=name, n_fit=400)
        unit[name] = (interp.info["alpha_accuracy"], errors(validate(net, task, interp, n=400, progress=False)))
    accuracy, e = unit["neurons[0]"]  # hidden unit 0 is a ∧ b
    assert accuracy == 1.0 and all(v == 0 for v in e.values())
    accuracy, e = unit["neurons[1]"]  # unit 1 is c: reading a ∧ b from it is right when c = a ∧ b only
    assert 0.6 < accuracy < 0.9 and 0.1 < e[(1, "prefix_equivalence")] / 400 < 0.4
    assert e[(1, "prefix_replaceability")] > 0  # writing a ∧ b's mean into c changes the output


@pytest.fixture(scope="module")
def das_cells(equality):
    task, net = equality
    torch.manual_seed(0)
    res = cv.localize(net, task, "left", DAS(dim=8), layers=[0, 2], n_train=2000, n_test=500, seed=0,
                      progress=False)
    return task, net, res


def test_a_das_cell_validates_where_its_iia_is_high_and_fails_where_it_is_low(das_cells):
    task, net, res = das_cells
    iia = dict(zip(res.table["layer"], res.table["iia"]))
    assert iia[0] > 0.9 and iia[2] < 0.7
    eps = {}
    for layer in (0, 2):
        interp = Interpretation.from_localization(res, "left", layer, model=net, task=task, n_fit=2000)
        assert interp.info["featurizer"] == "das(k=8)" and interp.info["site"] == f"L{layer}"
        rep = validate(net, task, interp, n=1000, seed=0)
        assert rep.meta["interpretation"]["alpha_accuracy"] == interp.info["alpha_accuracy"]
        eps[layer] = {r["axiom"]: r["epsilon"] for r in rep.rows}
    assert interp.info["alpha_accuracy"] > 0.95  # block 2 still holds `left` linearly ...
    assert max(eps[0].values()) < 0.05
    # ... but writing it there through the DAS subspace does not carry it to the output
    assert eps[2]["prefix_replaceability"] > 0.15 and eps[2]["component_replaceability"] > 0.15


def test_from_localization_names_the_cells_it_has(das_cells):
    task, net, res = das_cells
    with pytest.raises(InterpretationError, match=r"no fitted featurizer for variable 'left', featurizer None, "
                                                  r"layer 1.*layer=0.*layer=2"):
        Interpretation.from_localization(res, "left", 1, model=net, task=task)
    with pytest.raises(InterpretationError, match="unknown variable 'middle'"):
        Interpretation.from_localization(res, "middle", 0, model=net, task=task)


def padded_task(lm):
    """The name task with prompts of two lengths (one order ends with an extra word), so rows are padded."""
    from conftest import name_causal_model, name_prompt

    return cv.PromptTask(lm, name_causal_model(), prompt=lambda s: name_prompt(s) + (" then" if s["order"] == "ABB" else ""),
                         answer=lambda v: " " + v, positions={"io": cv.word("a"), "s2": cv.word("b", 2)})


def test_a_position_set_is_read_as_n_k_d_and_written_at_those_positions_only(tokenizer):
    from conftest import make_lm

    net = make_lm("gpt2", len(tokenizer))
    lm = cv.HFModel(net, tokenizer)
    task = padded_task(lm)
    data = task.causal_model.sample(60, seed=1)
    batch = task.encode(data)
    assert len(set(batch.positions["last"].tolist())) == 1 and len(set(batch.positions["first"].tolist())) == 2
    sites = [cv.Site(1, "io"), cv.Site(1, "s2")]
    shapes = []

    def read(h):
        shapes.append(tuple(h.shape))
        return [None] * len(h)

    kept = Step(sites, h=lambda x: None, alpha=read, gamma=lambda s, h: h, equal=lambda a, b: True)
    assert kept.where == "L1@[io, s2]"
    rep = validate(lm, task, Interpretation(lambda x: x, [kept]), data=data, progress=False)
    assert shapes == [(60, 2, 32)] and (rep.table["errors"] == 0).all() and rep.table["site"].iloc[0] == "L1@[io, s2]"
    # γ writes each row's activations at io and the last token from the row before; the same write by a
    # hook on block 1 made by hand
    roles = ["io", "last"]
    rolled = Step([cv.Site(1, r) for r in roles], h=lambda x: None, alpha=read, gamma=lambda s, h: h.roll(1, 0),
                  equal=lambda a, b: True)
    e = errors(validate(lm, task, Interpretation(lambda x: x, [rolled]), data=data, progress=False))
    block, captured = net.transformer.h[1], {}
    pos = torch.stack([batch.positions[r] for r in roles], 1)  # [n, 2]
    rows = torch.arange(len(data))[:, None]
    logits_at_read = lambda: net(**batch.inputs).logits[torch.arange(len(data)), batch.read].argmax(-1)
    handle = block.register_forward_hook(lambda m, a, out: captured.setdefault("h", out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        try:
            clean = logits_at_read()
        finally:
            handle.remove()
        h = captured["h"].clone()
        h[rows, pos] = captured["h"][rows, pos].roll(1, 0)
        handle = block.register_forward_hook(lambda m, a, out: (h,) + tuple(out[1:]) if isinstance(out, tuple) else h)
        try:
            patched = logits_at_read()
        finally:
            handle.remove()
    by_hand = int((patched != clean).sum())
    assert by_hand > 0 and e[(1, "prefix_replaceability")] == e[(1, "component_replaceability")] == by_hand


def test_a_position_set_that_is_wrong_is_named_by_step(tokenizer):
    from conftest import make_lm, prompt_task

    lm = cv.HFModel(make_lm("gpt2", len(tokenizer)), tokenizer)
    task = prompt_task(lm)
    io_s2 = [cv.Site(1, "io"), cv.Site(1, "s2")]
    none = dict(h=lambda x: None, alpha=lambda h: [None] * len(h), equal=lambda a, b: True)
    with pytest.raises(InterpretationError, match=r"step 1 \(site L1@\[io, s2\]\): gamma returned a tensor \[40, 32\] "
                                                  r"for activations \[40, 2, 32\]"):
        validate(lm, task, Interpretation(lambda x: x, [Step(io_s2, gamma=lambda s, h: h[:, 0], **none)]), n=40)
    with pytest.raises(InterpretationError, match=r"step 1 \(site L1@\[io, s2\]\): alpha returned 39 states for 40 rows "
                                                  r"\(activations \[40, 2, 32\]\)"):
        validate(lm, task, Interpretation(lambda x: x, [Step(io_s2, h=id, alpha=lambda h: h[1:], gamma=id)]), n=40)
    with pytest.raises(InterpretationError, match=r"step 1 \(site L1@\[last, -1\]\): two of its positions are the same "
                                                  r"token .* in example 0"):
        validate(lm, task, Interpretation(lambda x: x, [Step([cv.Site(1, "last"), cv.Site(1, -1)], gamma=id, **none)]))
    with pytest.raises(InterpretationError, match=r"step 2 \(site L1@\[s2, last\]\) cuts the network where step 1 does"):
        validate(lm, task, Interpretation(lambda x: x, [Step(io_s2, gamma=id, **none),
                                                        Step([cv.Site(1, "s2"), cv.Site(1, "last")], gamma=id, **none)]))
    with pytest.raises(cv.TaskError, match="unknown position 'io2'"):
        validate(lm, task, Interpretation(lambda x: x, [Step([cv.Site(1, "io"), cv.Site(1, "io2")], gamma=id, **none)]))
    with pytest.raises(InterpretationError, match="must differ only in their token position"):
        Step([cv.Site(0, "io"), cv.Site(1, "s2")], gamma=id, **none)
    with pytest.raises(InterpretationError, match="position 'io' appears twice"):
        Step([cv.Site(0, "io"), cv.Site(0, "io")], gamma=id, **none)
    with pytest.raises(InterpretationError, match="non-empty list of cv.Site"):
        Step([0, 1], gamma=id, **none)
    with pytest.raises(InterpretationError, match="needs a token position"):
        Step([cv.Site(0)], gamma=id, **none)
