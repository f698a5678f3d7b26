"""MIB's copy-colours multiple-choice task (4 choices) with variables ``answer_pointer`` and ``answer``.

Prompt (the format SmolLM2-135M answers; see ``mcqa``):

    The hat is gray. What color is the hat?
    Options: orange (K), blue (V), gray (H), green (C).
    Answer: gray (

-> "H", the symbol of the choice that names the object's colour. MIB lists choices as "A. orange"
and ends with "Answer:"; SmolLM2-135M is at chance on that layout (it cannot read the symbol
*before* a matched word), so here each symbol follows its colour and the answer line restates the
colour. The model still has to find which choice holds the colour and copy that choice's symbol.
Symbols are four distinct random capital letters (with A–D the model is markedly worse: it tends
to continue the alphabet).

High-level model (inputs: ``object``, ``color``, ``choice0..3`` — four distinct colours, one of
them ``color`` — and ``symbol0..3``):
- ``answer_pointer`` = the index of the choice equal to ``color``;
- ``answer`` = ``symbol[answer_pointer]`` (the output).
Interchanging ``answer_pointer`` from a source whose answer sits elsewhere makes the base's symbol
at that index the answer; interchanging ``answer`` carries the source's symbol over as such.

Counterfactual sets (MIB's): ``answerPosition`` (the same question, choices reordered so the answer
moves), ``randomLetter`` (four other symbols), ``answerPosition_randomLetter`` (both).
Token roles: ``correct_symbol`` (the correct choice's symbol), ``correct_symbol_period`` (the
token closing it: ")" here, MIB's "." after "B"), ``last_token``.
"""
from __future__ import annotations

import random

from ..causal_model import CausalModel
from ..task import PromptTask

#: single-token colours and objects; capital letters without H and Q (the model misses them most)
COLORS = ("red", "blue", "green", "yellow", "black", "white", "pink", "purple", "orange", "gray")
OBJECTS = ("car", "shirt", "cup", "ball", "hat", "bag", "chair", "pen", "box", "book", "door", "bike",
           "lamp", "shoe", "kite", "toy")
LETTERS = tuple("ABCDEFGIJKLMNOPRSTUVWXYZ")
N_CHOICES = 4

CHOICES = tuple(f"choice{i}" for i in range(N_CHOICES))
SYMBOLS = tuple(f"symbol{i}" for i in range(N_CHOICES))


def _sample(rng: random.Random) -> dict:
    colors = rng.sample(COLORS, N_CHOICES)
    return {"object": rng.choice(OBJECTS), "color": rng.choice(colors), **dict(zip(CHOICES, colors)),
            **dict(zip(SYMBOLS, rng.sample(LETTERS, N_CHOICES)))}


def causal_model() -> CausalModel:
    """The MCQA causal model above (four distinct colours and symbols per question)."""
    return CausalModel(
        inputs={"object": OBJECTS, "color": COLORS, **{c: COLORS for c in CHOICES}, **{s: LETTERS for s in SYMBOLS}},
        mechanisms={
            "answer_pointer": lambda color, choice0, choice1, choice2, choice3:
                (choice0, choice1, choice2, choice3).index(color),
            "answer": lambda answer_pointer, symbol0, symbol1, symbol2, symbol3:
                (symbol0, symbol1, symbol2, symbol3)[answer_pointer],
        },
        output="answer",
        sampler=_sample,
    )


def prompt(s: dict) -> str:
    """The MCQA prompt of an input setting."""
    options = ", ".join(f"{s[c]} ({s[y]})" for c, y in zip(CHOICES, SYMBOLS))
    return (f"The {s['object']} is {s['color']}. What color is the {s['object']}?\n"
            f"Options: {options}.\nAnswer: {s['color']} (")


def _symbol_char(values: dict, text: str) -> int:
    """Character index of the correct choice's symbol in the options line."""
    return text.index(f"({values['answer']})") + 1


def answer_position(base: dict, rng: random.Random) -> dict:
    """MIB's ``answerPosition``: the same question and symbols, the choices reordered so that the
    answer's index changes (its text stays)."""
    choices = [base[c] for c in CHOICES]
    old = choices.index(base["color"])
    while choices.index(base["color"]) == old:
        rng.shuffle(choices)
    return {**base, **dict(zip(CHOICES, choices))}


def random_letter(base: dict, rng: random.Random) -> dict:
    """MIB's ``randomLetter``: the same question with four other symbols (none of the base's)."""
    others = [x for x in LETTERS if x not in {base[s] for s in SYMBOLS}]
    return {**base, **dict(zip(SYMBOLS, rng.sample(others, N_CHOICES)))}


def answer_position_random_letter(base: dict, rng: random.Random) -> dict:
    """MIB's ``answerPosition_randomLetter``: the answer moves and the symbols change."""
    return random_letter(answer_position(base, rng), rng)


SETS = {"answerPosition": answer_position, "randomLetter": random_letter,
        "answerPosition_randomLetter": answer_position_random_letter}


def mcqa(lm) -> PromptTask:
    """The copy-colours MCQA task for a causal LM adapter (``cv.load_model("smollm2-135m")``);
    single-token answers (the symbol, e.g. "H"), checker ``"token"``.

    Measured: SmolLM2-135M-Instruct answers 0.969 of 256 sampled prompts (seed 0).
    """
    task = PromptTask(lm, causal_model(), prompt=prompt, answer=str,
                      positions={"correct_symbol": _symbol_char,
                                 "correct_symbol_period": lambda v, p: _symbol_char(v, p) + 1,
                                 "last_token": "last"},
                      name="mcqa")
    task.source_generators = dict(SETS)
    return task
