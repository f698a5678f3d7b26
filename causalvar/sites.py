"""Where an intervention happens: a layer (block index or module path), a component, and a token position."""
from __future__ import annotations

from dataclasses import dataclass

#: where in a layer a site reads and writes. On a module path, ``resid_post`` / ``resid_pre`` are the
#: module's output / input. ``attn_out`` and ``mlp_out`` are what the attention and MLP sublayers add to
#: the residual stream, ``head`` one attention head's output before the output projection
#: (``[.., d_head]``, with ``Site.head``), ``mlp_hidden`` the MLP's hidden activation after its nonlinearity
#: (the input of its output projection, ``[.., d_mlp]``; in a gated MLP the activated gate times the up
#: projection). ``"output"`` and ``"input"`` are the older names of ``resid_post`` and ``resid_pre``.
COMPONENTS = ("resid_post", "resid_pre", "attn_out", "mlp_out", "head", "mlp_hidden")
ALIASES = {"output": "resid_post", "input": "resid_pre"}


@dataclass(frozen=True)
class Site:
    """A place in the network.

    Args:
        layer: an int indexes the model's blocks (an LM's decoder layers, a network's declared block
            list); a string names any module by its path (``"layers.0"``, ``"encoder.mlp"``).
        position: a token position for sequence models — an int (negative counts from the last real
            token), ``"last"``, or one of the task's named token roles; ``None`` for networks whose
            activations have no sequence axis.
        component: one of ``COMPONENTS``: ``"output"``/``"resid_post"`` (the module's output, e.g. the
            residual after a block), ``"input"``/``"resid_pre"``, ``"attn_out"``, ``"mlp_out"``, ``"head"``,
            ``"mlp_hidden"`` (the MLP's neurons).
        head: the attention head of a ``"head"`` site (a query head, ``0..n_heads-1``).
    """

    layer: int | str
    position: int | str | None = None
    component: str = "resid_post"
    head: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "component", ALIASES.get(self.component, self.component))  # one name each
        if self.component not in COMPONENTS:
            raise ValueError(f"site component must be one of {COMPONENTS} (or 'output' / 'input', the older names "
                             f"of resid_post / resid_pre), got {self.component!r}")
        if not isinstance(self.layer, (int, str)) or isinstance(self.layer, bool):
            raise ValueError(f"site layer must be an int (block index) or a module path, got {self.layer!r}")
        if (self.component == "head") != (self.head is not None):
            raise ValueError(f"a 'head' site needs head=<int> and only a 'head' site takes one; got "
                             f"component={self.component!r}, head={self.head!r}")
        if self.head is not None and (not isinstance(self.head, int) or isinstance(self.head, bool) or self.head < 0):
            raise ValueError(f"site head must be a non-negative int, got {self.head!r}")

    def __str__(self) -> str:
        pos = "" if self.position is None else f"@{self.position}"
        comp = "" if self.component == "resid_post" else f".{self.component}" + ("" if self.head is None else str(self.head))
        return f"L{self.layer}{comp}{pos}"
