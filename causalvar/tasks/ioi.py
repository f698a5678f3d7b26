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

The logit-difference variant (``ioi_logit_diff``, MIB's IOI score) predicts a number instead of a
name: ``logit_diff = bias + token_coeff * token_signal + position_coeff * position_signal``, where
the token signal is +1 when ``output_token`` is the base's IO and -1 when it is the base's subject,
and the position signal is +1 when ``output_position`` points at the IO's mention and -1 otherwise.
A cell is scored by the squared error between the network's ``logit(IO) - logit(S)`` (the base's
names) under the intervention and that prediction: lower is better. The coefficients are fitted on
the network's own logit differences (``fit_logit_diff``).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..causal_model import CausalModel
from ..metrics import Metric, Outcome, logit_diff
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


def flip_subject(base: dict, rng: random.Random) -> dict:
    """MIB's ``s2_io_flip``: the same prompt with the other first-clause name as the subject — the IO
    and the subject trade names, so ``output_token`` and ``output_position`` both change."""
    return {**base, "repeat": 1 - base["repeat"]}


def flip_both(base: dict, rng: random.Random) -> dict:
    """MIB's ``s1_ioi_flip_s2_ioi_flip``: the first-clause names swapped and the other one repeated —
    the answer becomes the base's subject, still at the base's IO position."""
    return {**base, "name_a": base["name_b"], "name_b": base["name_a"]}


def new_names(base: dict, rng: random.Random) -> dict:
    """Symmetric token replacement for activation patching: the same prompt with two other names (every
    name is one token, so the corrupted prompt keeps the clean one's length) — the answer is another name."""
    a, b = rng.sample([x for x in NAMES if x not in (base["name_a"], base["name_b"])], 2)
    return {**base, "name_a": a, "name_b": b}


def same(base: dict, rng: random.Random) -> dict:
    """The base itself (MIB's ``same`` set, used to fit the logit-difference model)."""
    return dict(base)


def ioi(lm) -> PromptTask:
    """The IOI task for a causal LM adapter (``cv.load_model("smollm2-135m")``). Token roles:
    ``io`` (the IO's first mention), ``s1``, ``s2`` (the subject's two mentions), ``last``.

    Measured: SmolLM2-135M-Instruct answers 0.992 of 256 sampled prompts (seed 0)."""
    task = PromptTask(lm, causal_model(), prompt=prompt, answer=lambda name: " " + name,
                      positions={"io": word("output_token"), "s1": word("subject", 1), "s2": word("subject", 2)},
                      name="ioi")
    task.variables = ["output_token", "output_position"]
    task.source_generators = {"output_token": {"random": None},
                              "output_position": {"random": None, "s1_io_flip": flip_order}}
    # patching's corrupted prompts: other names, or the other name repeated (the answer moves to it)
    task.corruptions = {"output_token": {"new_names": new_names}, "output_position": {"s2_io_flip": flip_subject}}
    # Gaussian noise on every name (Meng et al.'s subject corruption, extended to both names); r' = the subject
    task.noise_positions, task.contrast = ["io", "s1", "s2"], "subject"
    task.edits = {"output_position": flip_order}  # the order changed alone (the dictionary evaluation's edit)
    return task


# ------------------------------------------------------------------ the logit-difference variant
@dataclass(frozen=True)
class LogitDiff:
    """The logit-difference model's output on one prompt: the base's indirect object and subject,
    and the predicted ``logit(io) - logit(s)``."""

    io: str
    s: str
    value: float


#: MIB's counterfactual sets of the logit-difference task (the ``same`` set only fits the coefficients)
LD_SETS = {"s1_io_flip": flip_order, "s2_io_flip": flip_subject, "s1_ioi_flip_s2_ioi_flip": flip_both}


def signals(name_a: str, name_b: str, repeat: int, output_token: str, output_position: int) -> tuple[int, int]:
    """(token signal, position signal) of MIB's linear model, each +1 or -1 (see the module doc)."""
    io, s = (name_a, name_b)[1 - repeat], (name_a, name_b)[repeat]
    if output_token not in (io, s):
        raise ValueError(f"output_token {output_token!r} is neither the prompt's IO ({io!r}) nor its subject "
                         f"({s!r}); the logit-difference model is defined for sources that reuse the base's two "
                         f"names (MIB's sets {sorted(LD_SETS)})")
    return (1 if output_token == io else -1), (1 if output_position == 1 - repeat else -1)


def logit_diff_model(bias: float = 0.0, token_coeff: float = 0.0, position_coeff: float = 0.0) -> CausalModel:
    """The IOI causal model with MIB's output ``logit_diff`` (a ``LogitDiff``) in place of the name."""
    def logit_diff(name_a, name_b, repeat, output_token, output_position):
        tok, pos = signals(name_a, name_b, repeat, output_token, output_position)
        return LogitDiff((name_a, name_b)[1 - repeat], (name_a, name_b)[repeat],
                         bias + token_coeff * tok + position_coeff * pos)

    base = causal_model()
    mechanisms = {k: m for k, m in base.mechanisms.items() if k != "out"}
    return CausalModel(base.inputs, {**mechanisms, "logit_diff": logit_diff}, output="logit_diff", sampler=_sample)


class LogitDiffError(Metric):
    """MIB's IOI score: the squared error ``[n]`` of the network's ``logit(IO) - logit(S)`` (the base's
    names) against the logit-difference model's prediction (each label is a ``LogitDiff``); lower is
    better, and training minimises it."""

    name = "mse"
    lower_is_better = True

    def __init__(self):
        self._ids: dict[str, int] = {}

    def _name_id(self, tokenizer, name: str) -> int:
        """The token id of `` name`` (cached: read at every training step)."""
        if name not in self._ids:
            self._ids[name] = tokenizer(" " + name, add_special_tokens=False)["input_ids"][0]
        return self._ids[name]

    def diff(self, logits: torch.Tensor, labels, tokenizer) -> torch.Tensor:
        """``logit(io) - logit(s)`` per row: ``logits: [n, vocab]`` -> ``[n]``."""
        io = torch.tensor([self._name_id(tokenizer, v.io) for v in labels], device=logits.device)
        s = torch.tensor([self._name_id(tokenizer, v.s) for v in labels], device=logits.device)
        return logit_diff(logits.float(), io, s)

    def _squared_error(self, out: Outcome) -> torch.Tensor:
        logits = out.need("logits", self)
        want = torch.tensor([v.value for v in out.labels], dtype=torch.float32, device=logits.device)
        return (self.diff(logits, out.labels, out.task.tokenizer) - want) ** 2

    def score(self, out: Outcome) -> torch.Tensor:
        return self._squared_error(out).cpu()

    def loss(self, out: Outcome) -> torch.Tensor:
        return self._squared_error(out).mean()


def _ld_task(lm, coefficients) -> PromptTask:
    task = PromptTask(lm, logit_diff_model(*coefficients), prompt=prompt, answer=lambda v: " " + v.io,
                      positions={"io": word("output_token"), "s1": word("subject", 1), "s2": word("subject", 2)},
                      name="ioi_logit_diff", metric=LogitDiffError())
    task.variables = ["output_token", "output_position"]
    task.source_generators = dict(LD_SETS)
    task.coefficients = tuple(float(c) for c in coefficients)
    return task


def fit_logit_diff(lm, site=None, n: int = 256, seed: int = 0, batch_size: int = 64, filter_correct: bool = True) -> dict:
    """Fit MIB's linear model of the logit difference on the network's own behaviour: for ``n`` pairs
    of each of the sets ``same``, ``s1_io_flip``, ``s2_io_flip`` and ``s1_ioi_flip_s2_ioi_flip`` (pairs
    the network answers correctly on base and source), interchange the whole hidden vector at
    ``site`` (a ``cv.Site``) from the source, measure ``logit(IO) - logit(S)`` in the base's names, and
    regress it on the (token, position) signals that both variables take from the source, by least
    squares with an intercept (MIB fits it on patched S-inhibition heads). ``site`` defaults to the
    repeated subject (``s2``) at 60% of the depth. ``filter_correct=False`` keeps every pair (for
    networks that do not solve IOI).

    Returns {"bias", "token_coeff", "position_coeff", "r2", "site", "n": pairs per set, "mean_diff":
    per set}.
    """
    from featurizers import Neurons

    from ..splits import build_splits
    from ..counterfactuals import CounterfactualDataset
    from ..engine import Engine
    from ..sites import Site

    site = site or Site(round(0.6 * lm.n_layers), "s2")
    task = _ld_task(lm, (0.0, 0.0, 0.0))
    cm = task.causal_model
    engine = Engine(lm, batch_size=batch_size)
    X, y, counts, means = [], [], {}, {}
    for name, gen in {"same": same, **LD_SETS}.items():
        data = CounterfactualDataset.generate(cm, "output_token", n, seed=seed, source=gen, name=name)
        (split,), kept = build_splits(engine, task, data, [site], [None], seed=seed, filter_correct=filter_correct)
        logits = engine.run(split.prepared, site, Neurons().build(split.sources[site].shape[-1]), split.sources[site])
        diff = task.metric.diff(logits, split.labels, task.tokenizer)
        for r, d in zip(split.rows, diff.tolist()):
            b, src = kept.bases[r], cm.run(kept.sources[r])
            X.append(signals(b["name_a"], b["name_b"], b["repeat"], src["output_token"], src["output_position"]))
            y.append(d)
        counts[name], means[name] = len(split), float(diff.mean())
    A = torch.cat([torch.ones(len(X), 1), torch.tensor(X, dtype=torch.float64)], 1)
    target = torch.tensor(y, dtype=torch.float64)
    coef = torch.linalg.lstsq(A, target[:, None]).solution.flatten()
    residual = target - A @ coef
    r2 = 1 - float(residual.pow(2).sum() / (target - target.mean()).pow(2).sum())
    return {"bias": float(coef[0]), "token_coeff": float(coef[1]), "position_coeff": float(coef[2]), "r2": r2,
            "site": str(site), "n": counts, "mean_diff": means}


def ioi_logit_diff(lm, coefficients) -> PromptTask:
    """MIB's IOI logit-difference task for a causal LM adapter: variables ``output_token`` and
    ``output_position``, sets ``s1_io_flip``, ``s2_io_flip``, ``s1_ioi_flip_s2_ioi_flip``, metric
    ``LogitDiffError`` (``"mse"``, lower is better), token roles as ``ioi``.

    Args:
        coefficients: (bias, token_coeff, position_coeff) of the linear model, or the dict
            ``fit_logit_diff`` returns (fitted on the network's own logit differences). On SmolLM2-135M
            (64 pairs per set) the default fitting site, the repeated subject at layer 18, carries both
            signals (token 2.1, position 3.5, R² 0.82); the last token carries only the position at
            layers 20-22 (3.1, R² 0.76) and only the token from layer 24 on (5.0, R² 0.86).
    """
    if isinstance(coefficients, dict):
        coefficients = (coefficients["bias"], coefficients["token_coeff"], coefficients["position_coeff"])
    if len(coefficients) != 3:
        raise ValueError(f"coefficients are (bias, token_coeff, position_coeff) or fit_logit_diff's dict, "
                         f"got {coefficients!r}")
    return _ld_task(lm, coefficients)


def fitted_ioi_logit_diff(lm) -> PromptTask:
    """``ioi_logit_diff`` with coefficients fitted by ``fit_logit_diff`` at its default site (the command
    line's ``--task ioi_logit_diff``)."""
    return ioi_logit_diff(lm, fit_logit_diff(lm))
