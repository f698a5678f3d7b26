"""Tasks: how a causal model's inputs and outputs meet a network.

``Task`` is for networks that take a tensor (no sequence axis); ``PromptTask`` for causal language
models, with named token roles resolved per example. Both turn a list of input settings into a
``Batch`` once (no re-tokenisation per cell), map high-level output values to class / token ids
(``targets``) and judge logits against values (``correct``).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import torch

from .causal_model import CausalModel
from .counterfactuals import CounterfactualDataset
from .errors import TaskError
from .metrics import IIA, Metric
from .models.base import Batch, token_index


#: how a prompt task judges an answer: the argmax token (single-token answers), the whole answer by
#: greedy decoding, or greedy decoding compared after normalisation
CHECKERS = ("token", "greedy", "normalized")


def normalize(text: str) -> str:
    """Lower case, without spaces and punctuation (for the ``"normalized"`` checker)."""
    return re.sub(r"[\W_]+", "", text.lower())


class Task:
    """A task for a tensor network.

    Args:
        causal_model: the high-level model.
        encode: one input setting -> the network's input ``[d_in]`` (tensor or list of numbers).
        decode: logits ``[n, n_classes]`` -> the n predicted high-level output values. Default:
            the argmax class compared with ``target`` of the expected value.
        target: high-level output value -> class index (training, logit metrics). Default ``int(v)``.
        metric: the ``cv.metrics.Metric`` a cell reports by default and trains on (default ``IIA()``).
    """

    positions: Mapping = {}
    #: the task's named counterfactual sets (MIB's): name -> source generator ``(base, rng) -> source``
    #: (None: an independent draw), shared by all variables, or variable -> such a mapping
    source_generators: Mapping = {"random": None}
    #: activation patching's symmetric token replacements (``cv.patch(corruption="str")``): variable ->
    #: {name: generator ``(base, rng) -> source``} whose corrupted prompt has the clean one's token length
    #: and its own answer; without one, ``cv.patch`` uses the counterfactual sets
    corruptions: Mapping = {}
    #: the answer a logit difference counts against where no counterfactual gives one (r'): a variable whose
    #: value it is (IOI: the subject); read by Gaussian-noise patching and the dictionary evaluation
    contrast: str | None = None
    #: the token roles Gaussian-noise patching noises by default (``cv.patch(corruption="gn")``)
    noise_positions: Sequence[str] = ()
    #: edits of single attributes for the dictionary evaluation: variable -> generator ``(base, rng) ->
    #: the base's inputs with that variable changed and the others kept``
    edits: Mapping = {}
    #: the variables a sweep localizes by default (None: every variable that is neither input nor output)
    variables: Sequence[str] | None = None
    #: whether answers are judged on greedily generated tokens (``correct_tokens``) instead of logits
    generates: bool = False

    def __init__(self, causal_model: CausalModel, encode: Callable, decode: Callable | None = None,
                 target: Callable | None = None, name: str | None = None, metric: Metric | None = None):
        self.causal_model = causal_model
        self.metric = metric or IIA()  # the score a cell reports by default, and trains on
        self._encode = encode
        self._decode = decode
        self._target = target or int
        self.name = name or "task"

    def counterfactual_sets(self, variable: str, n: int, seed: int = 0,
                            changes_output: bool = False) -> list[CounterfactualDataset]:
        """One dataset of ``n`` pairs per named counterfactual set of ``variable`` (MIB's sets)."""
        gens = self.source_generators
        if gens and all(isinstance(g, Mapping) for g in gens.values()):
            gens = gens.get(variable, {"random": None})
        return [CounterfactualDataset.generate(self.causal_model, variable, n, seed=seed, source=gen, name=name,
                                               changes_output=changes_output)
                for name, gen in gens.items()]

    def encode(self, settings: Sequence[Mapping]) -> Batch:
        """n input settings -> ``Batch(inputs={"x": [n, d_in]})``."""
        rows = []
        for i, s in enumerate(settings):
            try:
                rows.append(torch.as_tensor(self._encode(s), dtype=torch.float32))
            except Exception as e:
                raise TaskError(f"encode failed on example {i} {dict(s)}: {e!r}") from e
        shapes = {tuple(r.shape) for r in rows}
        if len(shapes) > 1:
            raise TaskError(f"encode returned tensors of different shapes {sorted(shapes)}")
        return Batch({"x": torch.stack(rows)})

    def targets(self, values: Sequence) -> torch.Tensor:
        """High-level output values -> class indices ``[n]`` (a clear error naming a bad value)."""
        out = []
        for v in values:
            try:
                out.append(int(self._target(v)))
            except Exception as e:
                raise TaskError(f"output value {v!r} has no class index: {e!r}") from e
        return torch.tensor(out, dtype=torch.long)

    def predict(self, logits: torch.Tensor) -> list:
        """Logits ``[n, C]`` -> predicted high-level values (or class indices without ``decode``)."""
        preds = self._decode(logits) if self._decode else logits.argmax(-1)
        return preds.tolist() if isinstance(preds, torch.Tensor) else list(preds)

    def correct(self, logits: torch.Tensor, values: Sequence) -> torch.Tensor:
        """Bool ``[n]``: does each prediction match the expected high-level value?"""
        if self._decode is None:
            return logits.argmax(-1).cpu() == self.targets(values)
        return torch.tensor([p == v for p, v in zip(self.predict(logits), values)], dtype=torch.bool)

    def resolve(self, batch: Batch, position) -> torch.Tensor | None:
        """The token index ``[n]`` a site's position names (``None`` without a sequence axis); see
        ``Batch.position``."""
        return batch.position(position)


def word(input_name: str, occurrence: int = 1) -> Callable[[Mapping, str], int]:
    """A token role: the ``occurrence``-th whole-word occurrence of variable ``input_name``'s value in
    the prompt (its last token). E.g. ``positions={"io": word("io"), "s2": word("s", 2)}``."""

    def find(setting: Mapping, prompt: str) -> int:
        value = str(setting[input_name])
        hits = [m.end() - 1 for m in re.finditer(rf"(?<!\w){re.escape(value)}(?!\w)", prompt)]
        if len(hits) < occurrence:
            raise TaskError(f"'{value}' (variable '{input_name}') occurs {len(hits)} time(s) in prompt "
                            f"{prompt!r}; occurrence {occurrence} was asked for")
        return hits[occurrence - 1]

    find.__name__ = f"word({input_name!r}, {occurrence})"
    return find


class PromptTask(Task):
    """A task for a causal language model.

    Args:
        lm: the model adapter (``cv.load_model(...)`` / ``cv.HFModel``); its tokenizer and padding side are used.
        causal_model: the high-level model.
        prompt: input setting -> prompt text.
        answer: high-level output value -> the answer text (e.g. ``lambda name: " " + name``); a single
            token with the default checker.
        positions: named token roles: an int (index among the real tokens, negative from the end),
            ``"last"``, or a callable ``(values, prompt) -> character index`` such as ``word("io")``
            (``values``: every variable's value on that example, so roles may name computed variables).
        checker: ``"token"`` (the argmax at the last position is the answer's single token), ``"greedy"``
            (the answer's tokens, generated greedily under the intervention) or ``"normalized"``
            (greedy generation compared after ``normalize``). Training uses the answer's first token.
            ``"last"`` is always available.
    """

    def __init__(self, lm, causal_model: CausalModel, prompt: Callable[[Mapping], str],
                 answer: Callable = str, positions: Mapping | None = None, checker: str = "token",
                 name: str | None = None, metric: Metric | None = None):
        super().__init__(causal_model, encode=prompt, target=None, name=name or "prompt_task", metric=metric)
        if checker not in CHECKERS:
            raise TaskError(f"checker must be one of {CHECKERS}, got {checker!r}")
        self.lm = lm
        self.tokenizer = lm.tokenizer
        self.prompt = prompt
        self.answer = answer
        self.positions = {"last": "last", **(positions or {})}
        self.checker = checker
        self.generates = checker != "token"
        self._answer_ids: dict = {}

    def encode(self, settings: Sequence[Mapping]) -> Batch:
        """Tokenise once: ``input_ids, attention_mask, position_ids: [n, seq]`` (padded on the adapter's
        side), every role's token index ``[n]``, and ``read`` = the last real token ``[n]``."""
        prompts = [self._prompt(i, s) for i, s in enumerate(settings)]
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, return_offsets_mapping=True,
                             padding_side=self.lm.padding_side)
        mask = enc["attention_mask"]
        n, T = mask.shape
        lengths = mask.sum(1)
        first = (T - lengths) if self.lm.padding_side == "left" else torch.zeros_like(lengths)
        last = first + lengths - 1
        positions = {"last": last, "first": first}
        offsets, full = enc["offset_mapping"], None
        for role, spec in self.positions.items():
            if role == "last" or spec == "last":
                positions[role] = last
            elif isinstance(spec, int):
                positions[role] = token_index(first, last, spec, f"position '{role}' = {spec}")
            else:  # a callable sees every variable's value, not only the inputs
                full = full or [self.causal_model.run(s) for s in settings]
                positions[role] = torch.tensor([
                    self._char_to_token(spec(s, p), offsets[i], int(first[i]), int(last[i]), role, i, p)
                    for i, (s, p) in enumerate(zip(full, prompts))])
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        inputs = {"input_ids": enc["input_ids"], "attention_mask": mask, "position_ids": position_ids}
        return Batch(inputs, positions, last)

    def _prompt(self, i: int, setting: Mapping) -> str:
        """The prompt text of example ``i``, refused clearly when the prompt function fails or returns no str."""
        try:
            text = self.prompt(setting)
        except Exception as e:
            raise TaskError(f"the prompt function failed on example {i} {dict(setting)}: {e!r}") from e
        if not isinstance(text, str):
            raise TaskError(f"the prompt function returned {type(text).__name__} ({text!r:.60}) for example {i} "
                            f"{dict(setting)}; it must return the prompt text (a str)")
        return text

    @staticmethod
    def _char_to_token(char: int, offsets, first: int, last: int, role: str, i: int, prompt: str) -> int:
        for t in range(first, last + 1):
            start, end = offsets[t].tolist()
            if start <= char < end:
                return t
        raise TaskError(f"position '{role}' of example {i} points at character {char} of {prompt!r}, "
                        "which no token covers")

    def answer_ids(self, value) -> list[int]:
        """The token ids of ``answer(value)``; with the ``"token"`` checker it must be one token."""
        if value not in self._answer_ids:
            text = self.answer(value)
            if not isinstance(text, str):
                raise TaskError(f"the answer function returned {type(text).__name__} ({text!r:.60}) for output "
                                f"value {value!r}; it must return the answer text (a str)")
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            unk = self.tokenizer.unk_token_id
            if unk is not None and unk in ids:
                pieces = self.tokenizer.convert_ids_to_tokens(ids)
                raise TaskError(f"answer {text!r} (output value {value!r}) tokenizes to {pieces}: the tokenizer "
                                f"does not know it (unknown token {self.tokenizer.unk_token!r}); change the answer "
                                "function or the tokenizer")
            if not ids or (self.checker == "token" and len(ids) != 1):
                pieces = self.tokenizer.convert_ids_to_tokens(ids)
                raise TaskError(f"answer {text!r} (output value {value!r}) is {len(ids)} tokens {pieces}; "
                                "this task needs single-token answers (or checker='greedy')")
            self._answer_ids[value] = list(ids)
        return self._answer_ids[value]

    def targets(self, values: Sequence) -> torch.Tensor:
        """Each answer's first token id ``[n]`` (the training target)."""
        return torch.tensor([self.answer_ids(v)[0] for v in values], dtype=torch.long)

    def n_answer_tokens(self, values: Sequence) -> int:
        """How many tokens to generate to judge these answers."""
        n = max(len(self.answer_ids(v)) for v in values)
        return n + 1 if self.checker == "normalized" else n

    def predict(self, logits: torch.Tensor) -> list:
        return self.tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist())

    def correct(self, logits: torch.Tensor, values: Sequence) -> torch.Tensor:
        """Bool ``[n]``: is the argmax token each answer's (first) token?"""
        return logits.argmax(-1).cpu() == self.targets(values)

    def correct_tokens(self, tokens: torch.Tensor, values: Sequence) -> torch.Tensor:
        """Bool ``[n]`` for greedily generated ``tokens: [n, L]``: ``"greedy"`` — the answer's tokens
        come first, exactly; ``"normalized"`` — the generated text, lower-cased with punctuation and
        spaces dropped, starts with the answer so normalised (RAVEL's checker)."""
        out = []
        for row, v in zip(tokens.tolist(), values):
            ids = self.answer_ids(v)
            if self.checker == "greedy":
                out.append(row[:len(ids)] == ids)
            else:
                out.append(normalize(self.tokenizer.decode(row)).startswith(normalize(self.answer(v))))
        return torch.tensor(out, dtype=torch.bool)

