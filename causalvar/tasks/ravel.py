"""RAVEL-style entity attributes (cities) with MIB's variables ``Country``, ``Continent``, ``Language``.

Prompts query one attribute of a city, e.g. "The city of Paris is in the country of" -> " France"
(two templates per attribute, ``ravel_data.TEMPLATES``).

High-level model (inputs: ``city``, the queried ``attribute``, the ``template`` index):
- ``Country``, ``Continent``, ``Language`` = the city's attribute values (``ravel_data.CITIES``);
- ``answer`` = the value of the queried attribute (the output).
Interchanging X from a source city changes the answer only when the prompt asks for X.

Counterfactual sets, per variable X (RAVEL's Cause and Isolate, ``ravel_sets``): ``cause`` — the
base asks for X, the source is another city with a different X value (the label is the source's X);
``isolate`` — the base asks for another attribute, the source again differs in X (the label is the
base's answer: the intervention must leave it alone). ``localize`` over both gives each cell's Cause
and Isolate IIA; ``disentangle(results)`` adds Disentangle = (Cause + Isolate) / 2.
Token roles: ``entity_last_token`` (the city's last token) and ``last_token``.
"""
from __future__ import annotations

import random

import pandas as pd

from ..causal_model import CausalModel
from ..counterfactuals import CounterfactualDataset
from ..task import PromptTask, word
from .ravel_data import ATTRIBUTES, CITIES, TEMPLATES

N_TEMPLATES = 2


def _draw(rng: random.Random, attributes=ATTRIBUTES) -> dict:
    return {"city": rng.choice(list(CITIES)), "attribute": rng.choice(list(attributes)),
            "template": rng.randrange(N_TEMPLATES)}


def causal_model(attributes=ATTRIBUTES) -> CausalModel:
    """The RAVEL causal model above; ``attributes`` restricts which attributes the sampler queries."""
    attributes = tuple(attributes)
    return CausalModel(
        inputs={"city": tuple(CITIES), "attribute": ATTRIBUTES, "template": range(N_TEMPLATES)},
        mechanisms={
            "Country": lambda city: CITIES[city][0],
            "Continent": lambda city: CITIES[city][1],
            "Language": lambda city: CITIES[city][2],
            "answer": lambda attribute, Country, Continent, Language:
                {"Country": Country, "Continent": Continent, "Language": Language}[attribute],
        },
        output="answer",
        sampler=lambda rng: _draw(rng, attributes),
    )


def prompt(s: dict) -> str:
    """The prompt of an input setting."""
    return TEMPLATES[s["attribute"]][s["template"]].format(city=s["city"])


def other_value(variable: str):
    """A source generator: a random prompt (any attribute, any template) about a city whose
    ``variable`` differs from the base city's."""
    k = ATTRIBUTES.index(variable)

    def source(base: dict, rng: random.Random) -> dict:
        cities = [c for c, values in CITIES.items() if values[k] != CITIES[base["city"]][k]]
        return {**_draw(rng), "city": rng.choice(cities)}

    source.__name__ = f"other_{variable}"
    return source


def ravel_sets(task, variable: str, n: int, seed: int = 0) -> list[CounterfactualDataset]:
    """RAVEL's two counterfactual sets of ``variable`` (n pairs each): ``[cause, isolate]``.
    cause: the base queries ``variable``; isolate: it queries one of the other attributes. In both
    the source is a random prompt about a city with another ``variable`` value."""
    if variable not in ATTRIBUTES:
        raise ValueError(f"RAVEL's variables are {ATTRIBUTES}, got {variable!r}")
    cm = task.causal_model
    out = []
    for name, asked in [("cause", (variable,)), ("isolate", tuple(a for a in ATTRIBUTES if a != variable))]:
        conditioned = CausalModel(cm.inputs, cm.mechanisms, output=cm.output,
                                  sampler=lambda rng, asked=asked: _draw(rng, asked))
        out.append(CounterfactualDataset.generate(conditioned, variable, n, seed=seed,
                                                  source=other_value(variable), name=name))
    return out


class RavelTask(PromptTask):
    """A PromptTask whose counterfactual sets are RAVEL's cause and isolate sets (so ``localize``
    uses them by default)."""

    def counterfactual_sets(self, variable: str, n: int, seed: int = 0,
                            changes_output: bool = False) -> list[CounterfactualDataset]:
        if changes_output:
            raise ValueError("RAVEL's isolate set never changes the output by design; use changes_output=False")
        return ravel_sets(self, variable, n, seed)


def disentangle(results) -> pd.DataFrame:
    """Per cell (variable, featurizer, layer, position) of a localize over ``ravel_sets``: columns
    Cause and Isolate (the IIA on each set) and Disentangle = (Cause + Isolate) / 2. ``results``:
    ``Results`` or its ``.table``."""
    table = results.table if hasattr(results, "table") else results
    missing = {"cause", "isolate"} - set(table["dataset"])
    if missing:
        raise ValueError(f"the table has no rows for the set(s) {sorted(missing)}; localize with data=ravel_sets(...)")
    keys = ["variable", "featurizer", "layer", "position"]
    wide = table.pivot_table(index=keys, columns="dataset", values="iia", aggfunc="mean", sort=False)
    wide = wide.rename(columns={"cause": "Cause", "isolate": "Isolate"})[["Cause", "Isolate"]]
    wide["Disentangle"] = (wide["Cause"] + wide["Isolate"]) / 2
    wide.columns.name = None
    return wide.reset_index()


def ravel(lm) -> RavelTask:
    """RAVEL-style city attributes for a causal LM adapter (``cv.load_model("smollm2-135m")``);
    multi-token answers (" South America"), checker ``"normalized"``.

    Measured: SmolLM2-135M-Instruct answers 1.000 of 256 sampled prompts (seed 0).
    """
    return RavelTask(lm, causal_model(), prompt=prompt, answer=lambda value: " " + value,
                     positions={"entity_last_token": word("city"), "last_token": "last"},
                     checker="normalized", name="ravel")
