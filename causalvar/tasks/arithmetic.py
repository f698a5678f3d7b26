"""Two-digit addition with MIB's variable ``ones_carry``.

Prompt: one worked example, then the question: "12 + 35 = 47\\n{a} + {b} = " -> "{a + b}" (digits
are single tokens for SmolLM2, so the answer is 2–3 tokens, judged by greedy decoding).

High-level model (inputs: the operands ``a, b`` in 10..99; a1, b1 their ones digits, a10, b10
their tens digits):
- ``ones`` = (a1 + b1) mod 10;
- ``ones_carry`` = 1[a1 + b1 > 9];
- ``tens`` = a10 + b10 + ``ones_carry``;
- ``answer`` = 10 · ``tens`` + ``ones`` (= a + b; the output).
Interchanging ``ones_carry`` from a source with the other carry moves the answer by ±10.

Counterfactual sets (MIB's): ``random`` (an independent source) and ``ones_carry`` (the base with
its ones digits changed so the carry flips: b's ones digit where that suffices, else both).
Token roles: ``op2_last`` (the second operand's last digit) and ``last``.
"""
from __future__ import annotations

import random

from ..causal_model import CausalModel
from ..task import PromptTask

OPERANDS = range(10, 100)
EXAMPLE = "12 + 35 = 47\n"


def _sample(rng: random.Random) -> dict:
    return {"a": rng.choice(OPERANDS), "b": rng.choice(OPERANDS)}


def causal_model() -> CausalModel:
    """The addition causal model above (operands drawn uniformly from 10..99)."""
    return CausalModel(
        inputs={"a": OPERANDS, "b": OPERANDS},
        mechanisms={
            "ones": lambda a, b: (a % 10 + b % 10) % 10,
            "ones_carry": lambda a, b: int(a % 10 + b % 10 > 9),
            "tens": lambda a, b, ones_carry: a // 10 + b // 10 + ones_carry,
            "answer": lambda tens, ones: 10 * tens + ones,
        },
        output="answer",
        sampler=_sample,
    )


def prompt(s: dict) -> str:
    """The addition prompt of an input setting (it ends with "= ", the answer's digits follow)."""
    return f"{EXAMPLE}{s['a']} + {s['b']} = "


def _op2_last(values: dict, text: str) -> int:
    """Character index of the second operand's last digit (in the question, the last line)."""
    b = str(values["b"])
    return text.rindex(f" {b} = ") + len(b)


def flip_carry(base: dict, rng: random.Random) -> dict:
    """MIB's ``ones_carry`` set: the base with the ones-digit carry flipped. b's ones digit changes
    (to a random digit giving the other carry); when a's ones digit is 0 no b gives a carry, so
    a's ones digit changes too. The tens digits stay."""
    a, b = base["a"], base["b"]
    a1, b1 = a % 10, b % 10
    want = 1 - int(a1 + b1 > 9)
    options = [d for d in range(10) if int(a1 + d > 9) == want]
    if not options:  # a1 == 0 and a carry is wanted
        a1 = rng.randint(1, 9)
        a = a - a % 10 + a1
        options = [d for d in range(10) if a1 + d > 9]
    return {**base, "a": a, "b": b - b1 + rng.choice(options)}


class ArithmeticTask(PromptTask):
    """A PromptTask that draws ``oversample`` × n pairs per counterfactual set: SmolLM2-135M answers
    under half of the sums, so filtering on correct base and source keeps about a fifth of the pairs
    (``localize`` uses the pairs it needs and reports the rest as spare)."""

    oversample = 10

    def counterfactual_sets(self, variable: str, n: int, seed: int = 0,
                            changes_output: bool = False) -> list:
        return super().counterfactual_sets(variable, self.oversample * n, seed, changes_output)


def arithmetic(lm) -> ArithmeticTask:
    """Two-digit addition for a causal LM adapter (``cv.load_model("smollm2-135m")``); multi-token
    answers, checker ``"greedy"`` (training uses the answer's first digit).

    Measured: SmolLM2-135M-Instruct gets 0.445 of 256 sampled sums right (seed 0), so filtering on
    correct base and source keeps about a fifth of the pairs.
    """
    task = ArithmeticTask(lm, causal_model(), prompt=prompt, answer=str, positions={"op2_last": _op2_last},
                          checker="greedy", name="arithmetic")
    task.source_generators = {"random": None, "ones_carry": flip_carry}
    return task
