"""Where an intervention happens: a layer (block index or module path), a component, and a token position."""
from __future__ import annotations

from dataclasses import dataclass

#: the residual stream after a block ("output") or entering it ("input")
COMPONENTS = ("output", "input")


@dataclass(frozen=True)
class Site:
    """A place in the network.

    Args:
        layer: an int indexes the model's blocks (an LM's decoder layers, a network's declared block
            list); a string names any module by its path (``"layers.0"``, ``"encoder.mlp"``).
        position: a token position for sequence models — an int (negative counts from the last real
            token), ``"last"``, or one of the task's named token roles; ``None`` for networks whose
            activations have no sequence axis.
        component: ``"output"`` (the module's output, e.g. the residual after a block) or ``"input"``.
    """

    layer: int | str
    position: int | str | None = None
    component: str = "output"

    def __post_init__(self):
        if self.component not in COMPONENTS:
            raise ValueError(f"site component must be one of {COMPONENTS}, got {self.component!r}")
        if not isinstance(self.layer, (int, str)) or isinstance(self.layer, bool):
            raise ValueError(f"site layer must be an int (block index) or a module path, got {self.layer!r}")

    def __str__(self) -> str:
        pos = "" if self.position is None else f"@{self.position}"
        comp = "" if self.component == "output" else f".{self.component}"
        return f"L{self.layer}{comp}{pos}"
