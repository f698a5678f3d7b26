"""The 2-SAT case study (Palumbo et al.): the solver against two independent ones, the sampler balanced and
free of duplicate clauses, the prompts' clause roles, the shipped network's accuracy on fresh formulas, and
the paper's interpretation validated on it, with the numbers this network gives."""
from __future__ import annotations

import importlib
import itertools
import random

import pytest

import causalvar as cv

ts = importlib.import_module("causalvar.tasks.two_sat")  # the module (cv.tasks.two_sat is its task factory)


def brute_force(clauses) -> bool:
    """Some assignment of x0..x4 makes every clause true (literals evaluated one by one)."""
    value = lambda lit, a: not a[int(lit[-1])] if lit.startswith("~") else a[int(lit[-1])]
    return any(all(value(l, a) or value(r, a) for l, r in clauses) for a in itertools.product((False, True), repeat=5))


def implication_graph(clauses) -> bool:
    """Aspvall–Plass–Tarjan: satisfiable iff no variable shares a strongly connected component with its
    negation in the graph of implications ¬l → r, ¬r → l (components by Kosaraju)."""
    neg = lambda lit: lit[1:] if lit.startswith("~") else "~" + lit
    nodes = list(ts.LITERALS)
    edges = {v: [] for v in nodes}
    back = {v: [] for v in nodes}
    for l, r in clauses:
        for a, b in ((neg(l), r), (neg(r), l)):
            edges[a].append(b)
            back[b].append(a)
    order, seen = [], set()

    def visit(v):
        seen.add(v)
        for w in edges[v]:
            if w not in seen:
                visit(w)
        order.append(v)
    for v in nodes:
        if v not in seen:
            visit(v)
    component = {}

    def assign(v, c):
        component[v] = c
        for w in back[v]:
            if w not in component:
                assign(w, c)
    for v in reversed(order):
        if v not in component:
            assign(v, v)
    return all(component[v] != component[neg(v)] for v in ts.VARIABLES)


def test_the_solver_agrees_with_brute_force_and_the_implication_graph():
    rng = random.Random(7)
    formulas = [ts._draw(rng) for _ in range(3000)]  # the unbalanced draw: SAT about 60% of the time
    formulas += [[("x0", "x1"), ("x0", "~x1"), ("~x0", "x1"), ("~x0", "~x1")], [("x0", "x1")]]
    labels = [ts.satisfiable(f) for f in formulas]
    assert labels == [brute_force(f) for f in formulas] == [implication_graph(f) for f in formulas]
    assert 0.4 < sum(labels) / len(labels) < 0.8 and labels[-2:] == [False, True]
    tables = ts.truth_tables(formulas[:200])  # [200, 32]: assignment a sets x_i to bit i of a
    value = lambda lit, a: not (a >> int(lit[-1])) & 1 if lit.startswith("~") else bool((a >> int(lit[-1])) & 1)
    assert tables.tolist() == [[all(value(l, a) or value(r, a) for l, r in f) for a in range(32)] for f in formulas[:200]]


def test_the_sampler_is_balanced_and_has_no_duplicate_clauses():
    cm = ts.causal_model()
    settings = cm.sample(2000, seed=3)
    labels = [cm.run(s)["sat"] for s in settings]
    assert 0.46 < sum(labels) / 2000 < 0.54
    formulas = [ts.clauses_of(s) for s in settings]
    assert all(len({frozenset(c) for c in f}) == ts.N_CLAUSES for f in formulas)  # x∨y and y∨x are one clause
    assert all(a.lstrip("~") != b.lstrip("~") for f in formulas for a, b in f)
    written = {c for f in formulas for c in f}
    assert len(written) == len(ts.CLAUSES) == 80  # every clause occurs, in both literal orders
    assert cm.sample(5, seed=3) == settings[:5]


@pytest.fixture(scope="module")
def shipped():
    lm = ts.two_sat_model()
    return lm, ts.two_sat(lm)


def test_prompts_put_each_clause_role_at_its_second_literal(shipped):
    lm, task = shipped
    settings = task.causal_model.sample(20, seed=1)
    batch = task.encode(settings)
    ids = batch.inputs["input_ids"]
    assert ids.shape == (20, ts.SEQ_LEN)
    tokens = [lm.tokenizer.convert_ids_to_tokens(row) for row in ids.tolist()]
    for i in range(ts.N_CLAUSES):
        pos = batch.positions[f"c{i}"]
        assert [tokens[r][int(pos[r])] for r in range(20)] == [ts.clauses_of(s)[i][1] for s in settings]
        assert all(tokens[r][int(batch.positions[f"end{i}"][r])] == ")" for r in range(20))
    assert all(t[-1] == ":" for t in tokens)


def test_the_shipped_network_is_the_one_its_training_recorded(shipped):
    lm, task = shipped
    record = lm.info
    assert record["torch_threads"] == 1 and record["steps"] == 10_000 and record["seed"] == 0
    assert record["test_accuracy"] >= 0.97 and record["train_seconds"] < 30 * 60
    fresh = cv.task_accuracy(lm, task, n=5000, seed=2026)  # formulas of a stream the training never drew
    # the network reached 0.9972 on its 5000 held-out formulas (the module's docstring): the issue asks >= 0.97
    assert fresh >= 0.97 and abs(fresh - record["test_accuracy"]) < 0.01


def errors(rep) -> dict:
    """{(step, axiom): errors}."""
    return {(r["step"], r["axiom"]): r["errors"] for r in rep.rows}


def test_the_papers_interpretation_validated_on_the_shipped_network(shipped):
    lm, task = shipped
    n = 500
    interps = {order: ts.two_sat_interpretation(lm, order=order, n_fit=2000) for order in ts.ORDERS}
    reps = {order: cv.validate(lm, task, interp, n=n, seed=0, progress=False) for order, interp in interps.items()}
    ignored, required = errors(reps["ignored"]), errors(reps["required"])
    assert list(reps["ignored"].table["site"].unique()) == ["L0@[end0, end1, end2, end3, end4, end5, end6, end7, end8, end9]",
                                                            "L1.mlp_hidden@last", "L1@last"]
    # the order only changes how step 1 compares clauses: every other count is the same
    assert {k: v for k, v in ignored.items() if k[0] > 1 or "replaceability" in k[1]} == \
        {k: v for k, v in required.items() if k[0] > 1 or "replaceability" in k[1]}
    # the paper's contrast: the parser holds with the clauses' literal order ignored (1 of 500 formulas
    # misparsed) and fails with it required (422 of 500): the network's clause representation at the
    # closing bracket hardly tells x∨y from y∨x
    info = reps["ignored"].meta["interpretation"]
    assert ignored[(1, "prefix_equivalence")] <= 0.01 * n and required[(1, "prefix_equivalence")] > 0.75 * n
    assert info["parser_fit_accuracy"]["ignored"] > 0.99 and info["parser_fit_accuracy"]["required"] < 0.25
    # writing the clauses' fitted residuals back keeps the answers (none of 500 changed), and the parser
    # reads them back as written
    assert ignored[(1, "prefix_replaceability")] <= 0.01 * n
    parser = interps["ignored"].steps[0]
    formulas = [ts.clauses_of(s) for s in task.causal_model.sample(50, seed=4)]
    assert parser.alpha(parser.gamma(formulas, None)) == formulas
    # the evaluating neurons: each well modelled by a disjunction of assignments, most by one assignment,
    # together covering all 32; writing their abstract states changes few answers, and the OR of the
    # neurons is the network's answer
    assert 32 <= len(info["units"]) <= 128 and min(info["disjunction_fit_accuracy"]) > 0.95
    assert {a for d in info["disjunctions"] for a in d} == set(range(32))
    assert sum(len(d) == 1 for d in info["disjunctions"]) > len(info["units"]) / 2
    assert ignored[(2, "prefix_replaceability")] <= 0.01 * n and ignored[(3, "prefix_equivalence")] <= 0.01 * n
    eps = {(r["step"], r["axiom"]): r["epsilon"] for r in reps["ignored"].rows}
    assert eps[(2, "prefix_replaceability")] == pytest.approx(cv.epsilon_bound(ignored[(2, "prefix_replaceability")], n))
