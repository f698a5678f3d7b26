"""High-level causal models: finite-domain inputs plus deterministic mechanisms.

A :class:`CausalModel` is the hypothesis whose variables we try to localise in a
neural network. Its interventions (``run(..., intervene=...)``) and interchange
interventions (``interchange``) give the counterfactual labels that a network
aligned with the model must reproduce.
"""

from __future__ import annotations

import inspect
import itertools
import math
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Setting = dict[str, Any]

#: the most input combinations enumerated to learn the values a mechanism takes (beyond it,
#: interventions on that mechanism are not checked)
MAX_ENUMERATION = 100_000


class CausalModelError(ValueError):
    """A causal model was defined or used incorrectly."""


class CausalModel:
    """A deterministic causal model over named variables.

    Args:
        inputs: input name -> finite domain of values (any iterable; materialised to a tuple).
        mechanisms: variable name -> callable whose parameter names are its parent variables.
        output: the output variable; by default the unique sink, i.e. the only mechanism
            that no other mechanism depends on.
        sampler: optional ``(rng: random.Random) -> dict`` of input values used by
            :meth:`sample` and :meth:`draw` instead of independent uniform draws.
    """

    def __init__(
        self,
        inputs: Mapping[str, Iterable[Any]],
        mechanisms: Mapping[str, Callable[..., Any]],
        output: str | None = None,
        sampler: Callable[[random.Random], Mapping[str, Any]] | None = None,
    ) -> None:
        self.inputs: dict[str, tuple] = {name: tuple(domain) for name, domain in inputs.items()}
        self._domain_sets: dict[str, frozenset] = {}
        for name, domain in self.inputs.items():
            try:
                self._domain_sets[name] = frozenset(domain)
            except TypeError:  # unhashable values: membership by scanning the tuple
                pass
        for name, domain in self.inputs.items():
            if not domain:
                raise CausalModelError(f"input {name!r} has an empty domain")
        both = [name for name in mechanisms if name in self.inputs]
        if both:
            raise CausalModelError(f"{_names(both)} declared both as input and as mechanism")
        self.mechanisms: dict[str, Callable[..., Any]] = dict(mechanisms)
        self.parents: dict[str, tuple[str, ...]] = {name: () for name in self.inputs}
        for name, mechanism in self.mechanisms.items():
            self.parents[name] = _parameters(name, mechanism)
        known = list(self.parents)
        for name in self.mechanisms:
            for parent in self.parents[name]:
                if parent not in self.parents:
                    raise CausalModelError(
                        f"mechanism {name!r} has parameter {parent!r}, which is not a variable; "
                        f"variables are: {', '.join(known)}"
                    )
        self.variables: tuple[str, ...] = tuple(self.inputs) + self._mechanism_order()
        self.output: str = self._find_output(output)
        self.sampler = sampler
        self._value_sets: dict[str, frozenset | None] = {}  # mechanism -> the values it takes (lazy)

    def _mechanism_order(self) -> tuple[str, ...]:
        """Mechanisms in topological order (declaration order where free); raise on a cycle."""
        order: list[str] = []
        state: dict[str, str] = {}  # "active" while on the DFS path, "done" once ordered

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == "done":
                return
            if state.get(name) == "active":
                cycle = path[path.index(name):] + [name]  # each depends on the next
                raise CausalModelError(f"cycle among mechanisms: {' -> '.join(reversed(cycle))}")
            state[name] = "active"
            path.append(name)
            for parent in self.parents[name]:
                if parent in self.mechanisms:
                    visit(parent, path)
            path.pop()
            state[name] = "done"
            order.append(name)

        for name in self.mechanisms:
            visit(name, [])
        return tuple(order)

    def _find_output(self, output: str | None) -> str:
        if output is not None:
            if output not in self.parents:
                raise CausalModelError(
                    f"output {output!r} is not a variable; variables are: {', '.join(self.variables)}"
                )
            return output
        used = {parent for parents in self.parents.values() for parent in parents}
        candidates = [name for name in self.variables if name in self.mechanisms] or list(self.variables)
        sinks = [name for name in candidates if name not in used]
        if len(sinks) != 1:
            raise CausalModelError(
                f"cannot tell the output: the sinks are {', '.join(sinks)}; pass output=<name>"
            )
        return sinks[0]

    def run(self, setting: Mapping[str, Any], intervene: Mapping[str, Any] | None = None) -> Setting:
        """Evaluate every variable on the input ``setting`` under ``do(intervene)``.

        Keys of ``setting`` that are not inputs are ignored, so a full setting returned by
        an earlier run can be passed back. Intervened variables (inputs included) take the
        given value; an intervened input need not be present in ``setting``. A value a variable
        cannot take is refused: outside an input's domain, or outside the values a mechanism takes
        over its inputs' domains (enumerated once, when there are at most ``MAX_ENUMERATION``
        combinations; larger ones are not checked).

        Returns:
            Dict variable -> value, in topological order.
        """
        intervene = dict(intervene or {})
        self._check_known(intervene, "intervention on")
        values: Setting = {}
        for name in intervene:
            self._check_intervention(name, intervene[name])
        for name in self.variables:
            if name in intervene:
                values[name] = intervene[name]
            elif name in self.inputs:
                if name not in setting:
                    raise CausalModelError(f"input {name!r} is missing")
                values[name] = self._checked(name, setting[name])
            else:
                args = {parent: values[parent] for parent in self.parents[name]}
                try:
                    values[name] = self.mechanisms[name](*args.values())
                except Exception as e:
                    call = ", ".join(f"{k}={v!r}" for k, v in args.items())
                    raise CausalModelError(
                        f"mechanism {name!r} raised {e!r} on {name}({call})"
                    ) from e
        return values

    def interchange(self, base: Mapping[str, Any], sources: Mapping[str, Mapping[str, Any]]) -> Setting:
        """Interchange intervention: each variable in ``sources`` takes the value it has when
        the model runs on its source; everything else is computed from ``base``.

        Returns:
            The full setting of the intervened run on ``base``.
        """
        self._check_known(sources, "interchange of")
        for var, src in sources.items():
            self._check_complete(src, f"the source setting for {var!r}")
        self._check_complete(base, "the base setting", exempt=sources)
        return self.run(base, intervene={var: self.run(src)[var] for var, src in sources.items()})

    def draw(self, rng: random.Random) -> Setting:
        """One input setting drawn with ``rng``: from the sampler if given, else uniformly per input."""
        if self.sampler is None:
            return {name: rng.choice(domain) for name, domain in self.inputs.items()}
        drawn = dict(self.sampler(rng))
        extra = [name for name in drawn if name not in self.inputs]
        if extra:
            raise CausalModelError(
                f"sampler returned {_names(extra)}, which are not inputs; "
                f"inputs are: {', '.join(self.inputs)}"
            )
        for name in self.inputs:
            if name not in drawn:
                raise CausalModelError(f"sampler left input {name!r} missing")
            self._checked(name, drawn[name])
        return {name: drawn[name] for name in self.inputs}

    def sample(self, n: int, seed: int = 0) -> list[Setting]:
        """``n`` input settings drawn with ``random.Random(seed)``; the same seed gives the same list."""
        if n < 0:
            raise CausalModelError(f"cannot sample {n} settings; n must be >= 0")
        rng = random.Random(seed)
        return [self.draw(rng) for _ in range(n)]

    def _checked(self, name: str, value: Any, action: str = "input") -> Any:
        try:  # a set lookup for hashable domains (large domains stay fast); a scan otherwise
            inside = value in self._domain_sets[name] if name in self._domain_sets else value in self.inputs[name]
        except TypeError:
            inside = value in self.inputs[name]
        if not inside:
            raise CausalModelError(f"{action} {name!r} = {value!r} is outside its domain {_shown(self.inputs[name])}")
        return value

    def _check_intervention(self, name: str, value: Any) -> None:
        """Refuse ``do(name = value)`` with a value the variable cannot take: outside an input's
        domain, or outside the values a mechanism takes over its inputs' domains (when enumerable)."""
        if name in self.inputs:
            self._checked(name, value, "intervention on input")
            return
        if name not in self._value_sets:
            self._value_sets[name] = self._enumerate(name)
        allowed = self._value_sets[name]
        if allowed is None:
            return
        try:
            inside = value in allowed
        except TypeError:  # an unhashable value is none of the (hashable) values
            inside = False
        if not inside:
            raise CausalModelError(
                f"intervention on {name!r} = {value!r} is outside the values {name!r} takes over its inputs' "
                f"domains: {_shown(_sorted(allowed))}")

    def _enumerate(self, name: str) -> frozenset | None:
        """The values mechanism ``name`` takes over every combination of its ancestor inputs' values
        (combinations on which a mechanism raises are impossible, so skipped); ``None`` when there are
        more than ``MAX_ENUMERATION`` combinations or the values are unhashable."""
        ancestors, stack = set(), [name]
        while stack:
            for parent in self.parents[stack.pop()]:
                if parent not in ancestors:
                    ancestors.add(parent)
                    stack.append(parent)
        inputs = [v for v in self.inputs if v in ancestors]
        if math.prod(len(self.inputs[v]) for v in inputs) > MAX_ENUMERATION:
            return None
        order = [v for v in self.variables if v in self.mechanisms and (v in ancestors or v == name)]
        seen = set()
        for combo in itertools.product(*(self.inputs[v] for v in inputs)):
            values = dict(zip(inputs, combo))
            try:
                for v in order:
                    values[v] = self.mechanisms[v](*(values[p] for p in self.parents[v]))
            except Exception:
                continue  # a combination the mechanisms reject: not a value to allow
            try:
                seen.add(values[name])
            except TypeError:  # unhashable values: not checked
                return None
        return frozenset(seen)

    def _check_complete(self, setting: Mapping[str, Any], what: str, exempt: Iterable[str] = ()) -> None:
        missing = [v for v in self.inputs if v not in setting and v not in exempt]
        if missing:
            raise CausalModelError(f"{what} is missing input(s) {missing}; every input is needed: "
                                   f"{', '.join(self.inputs)}")

    def _check_known(self, names: Iterable[str], action: str) -> None:
        for name in names:
            if name not in self.parents:
                raise CausalModelError(
                    f"{action} unknown variable {name!r}; variables are: {', '.join(self.variables)}"
                )

    def __repr__(self) -> str:
        graph = ", ".join(f"{v}({', '.join(self.parents[v])})" for v in self.variables if v in self.mechanisms)
        return f"CausalModel(inputs: {', '.join(self.inputs)}; mechanisms: {graph}; output: {self.output})"


def _parameters(name: str, mechanism: Callable[..., Any]) -> tuple[str, ...]:
    """Parent names of a mechanism, from its signature."""
    try:
        params = inspect.signature(mechanism).parameters.values()
    except (TypeError, ValueError) as e:
        raise CausalModelError(f"mechanism {name!r} is not a callable with an inspectable signature") from e
    special = [p.name for p in params if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if special:
        raise CausalModelError(
            f"mechanism {name!r} has *args, **kwargs or keyword-only parameters ({', '.join(special)}); "
            "name each parent as an ordinary parameter"
        )
    return tuple(p.name for p in params)


def _sorted(values: frozenset) -> tuple:
    """``values`` in their natural order where they have one, else by their repr."""
    try:
        return tuple(sorted(values))
    except TypeError:
        return tuple(sorted(values, key=repr))


def _shown(values: tuple) -> str:
    """A domain for a message: whole when short, else its first ten values and its size."""
    return repr(values) if len(values) <= 20 else f"({', '.join(map(repr, values[:10]))}, ... {len(values)} values)"


def _names(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names)
