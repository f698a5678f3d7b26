"""Indirect object identification (IOI) with MIB's variables ``output_token`` and ``output_position``.

Prompt: "When {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to" -> the indirect object (IO),
the first-clause name that is not repeated as the subject S.

High-level model (inputs: the two first-clause names ``name_a, name_b``, which of them is repeated
``repeat``, the template, place and object):
- ``output_position`` = the IO's index among the first-clause mentions (0 or 1);
- ``output_token`` = the IO's name;
- ``out`` = the first-clause name at ``output_position`` when ``output_token`` is one of the prompt's
  names, else ``output_token`` itself (a name carried in from a source prompt is copied as such).
Interchanging ``output_position`` from a source whose order differs makes the base's subject the
answer; interchanging ``output_token`` from a source with other names makes the source's IO the answer.
"""
from __future__ import annotations

import random

from ..causal_model import CausalModel
from ..task import PromptTask, word
from .ioi_data import NAMES, OBJECTS, PLACES, TEMPLATES


def _sample(rng: random.Random) -> dict:
    a, b = rng.sample(NAMES, 2)
    return {"name_a": a, "name_b": b, "repeat": rng.randrange(2), "template": rng.randrange(len(TEMPLATES)),
            "place": rng.choice(PLACES), "object": rng.choice(OBJECTS)}


def causal_model() -> CausalModel:
    """The IOI causal model above, sampling two distinct names."""
    return CausalModel(
        inputs={"name_a": NAMES, "name_b": NAMES, "repeat": (0, 1), "template": range(len(TEMPLATES)),
                "place": PLACES, "object": OBJECTS},
        mechanisms={
            "output_position": lambda repeat: 1 - repeat,
            "output_token": lambda name_a, name_b, repeat: (name_a, name_b)[1 - repeat],
            "subject": lambda name_a, name_b, repeat: (name_a, name_b)[repeat],
            "out": lambda output_token, output_position, name_a, name_b:
                (name_a, name_b)[output_position] if output_token in (name_a, name_b) else output_token,
        },
        output="out",
        sampler=_sample,
    )


def prompt(s: dict) -> str:
    """The IOI prompt of an input setting."""
    return TEMPLATES[s["template"]].format(A=s["name_a"], B=s["name_b"], S=(s["name_a"], s["name_b"])[s["repeat"]],
                                           PLACE=s["place"], OBJECT=s["object"])


def flip_order(base: dict, rng: random.Random) -> dict:
    """MIB's ``s1_io_flip``: the same prompt with the first-clause names swapped (IO and S change
    places, the subject stays) — only ``output_position`` changes."""
    return {**base, "name_a": base["name_b"], "name_b": base["name_a"], "repeat": 1 - base["repeat"]}


def ioi(lm) -> PromptTask:
    """The IOI task for a causal LM adapter (``cv.load_model("smollm2-135m")``). Token roles:
    ``io`` (the IO's first mention), ``s1``, ``s2`` (the subject's two mentions), ``last``."""
    task = PromptTask(lm, causal_model(), prompt=prompt, answer=lambda name: " " + name,
                      positions={"io": word("output_token"), "s1": word("subject", 1), "s2": word("subject", 2)},
                      name="ioi")
    task.variables = ["output_token", "output_position"]
    task.source_generators = {"output_token": {"random": None},
                              "output_position": {"random": None, "s1_io_flip": flip_order}}
    return task
