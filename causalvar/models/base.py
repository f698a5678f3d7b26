"""The adapter interface: the only things the engine asks of a network.

An adapter names the network's blocks, turns a site into a module, runs the network on a task's
encoded batch (returning only the logits the task reads) and, where it can, runs just the blocks
after a given one (suffix execution) from a cached hidden state.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import TaskError
from ..sites import Site


class ModelError(ValueError):
    """A network or a site that the adapter cannot handle, explained in the user's terms."""


class FastPathWarning(UserWarning):
    """A fast path (suffix execution, key/value reuse) cannot be used; results are the same, slower."""


@dataclass
class Batch:
    """A task's encoded examples.

    inputs: model inputs, each ``[n, ...]`` (e.g. ``x: [n, d_in]``, or ``input_ids, attention_mask,
        position_ids: [n, seq]``).
    positions: token index per named role, each ``[n]``, with ``first`` and ``last`` (the real tokens'
        ends); empty for networks without a sequence axis.
    read: the position whose logits the task reads, ``[n]`` (``None`` without a sequence axis).

    A language model's inputs may also hold ``EMBED_NOISE``: ``[n, seq, d]`` added to the token embeddings
    before the first block (Gaussian-noise corruption, ``cv.patch(corruption="gn")``); the adapter adds it.

    The task resolves token roles when it encodes; ``position(spec)`` answers the engine's questions.
    """

    inputs: dict[str, torch.Tensor]
    positions: dict[str, torch.Tensor] = field(default_factory=dict)
    read: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def position(self, spec) -> torch.Tensor | None:
        """Token index ``[n]`` of a site's position: ``None`` (no sequence axis), an int (among each
        row's real tokens: from the first, negative from the last), or a named role such as ``"last"``."""
        if spec is None:
            return None
        if self.read is None:
            raise TaskError(f"position {spec!r} given, but this task's network has no sequence axis; "
                            "use positions=None")
        if isinstance(spec, int) and not isinstance(spec, bool):
            return token_index(self.positions["first"], self.positions["last"], spec, f"position {spec}")
        if spec == "first" or spec not in self.positions:
            raise TaskError(f"unknown position {spec!r}; this task's positions are "
                            f"{sorted(k for k in self.positions if k != 'first')} or an int")
        return self.positions[spec]

    def select(self, idx) -> "Batch":
        """Rows ``idx`` (a slice or a LongTensor of indices)."""
        return Batch({k: v[idx] for k, v in self.inputs.items()},
                     {k: v[idx] for k, v in self.positions.items()},
                     None if self.read is None else self.read[idx])

    def to(self, device) -> "Batch":
        return Batch({k: v.to(device) for k, v in self.inputs.items()},
                     {k: v.to(device) for k, v in self.positions.items()},
                     None if self.read is None else self.read.to(device))


#: the ``Batch.inputs`` key of noise ``[n, seq, d]`` that a language model adds to its token embeddings
EMBED_NOISE = "embed_noise"


def token_index(first: torch.Tensor, last: torch.Tensor, spec: int, what: str) -> torch.Tensor:
    """Token index ``[n]`` of int ``spec`` among each row's real tokens ``first..last`` (``[n]`` each):
    from the first when ``spec >= 0``, from the last when negative; a ``TaskError`` naming ``what`` and
    the first row it does not fit."""
    idx = first + spec if spec >= 0 else last + 1 + spec
    bad = ((idx < first) | (idx > last)).nonzero().flatten().tolist()
    if bad:
        raise TaskError(f"{what} is outside example {bad[0]}, which has {int(last[bad[0]] - first[bad[0]] + 1)} tokens")
    return idx


def hook_module(module: nn.Module, where: str, fn):
    """Call ``fn(h)`` on ``module``'s output (``where="output"``) or input (``"input"``) hidden-state
    tensor in every forward; a tensor ``fn`` returns replaces it (tuples kept around it). Returns the
    torch hook handle."""
    if where == "output":
        def post(m, args, out):
            new = fn(unwrap(out))
            return None if new is None else rewrap(out, new)
        return module.register_forward_hook(post)

    def pre(m, args, kwargs):
        if args:
            new = fn(args[0])
            return None if new is None else ((new,) + tuple(args[1:]), kwargs)
        new = fn(kwargs["hidden_states"])
        return None if new is None else (args, {**kwargs, "hidden_states": new})
    return module.register_forward_pre_hook(pre, with_kwargs=True)


def hook_head(proj: nn.Module, head: int, n_heads: int, fn):
    """Call ``fn(z)`` on one head's slice ``z: [n, seq, d_head]`` of the input ``[n, seq, n_heads·d_head]``
    of an attention output projection ``proj``; a tensor ``fn`` returns replaces that head's slice
    (out of place, so gradients reach it)."""
    def pre(m, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        heads = x.unflatten(-1, (n_heads, -1))  # [n, seq, n_heads, d_head]
        new = fn(heads[..., head, :])
        if new is None:
            return None
        parts = list(heads.unbind(-2))
        parts[head] = new.to(x.dtype)
        x = torch.stack(parts, -2).flatten(-2)
        return ((x,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})
    return proj.register_forward_pre_hook(pre, with_kwargs=True)


def unwrap(output):
    """The hidden-state tensor of a module's output (HF blocks may return tuples)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def rewrap(output, hidden):
    """``output`` with its hidden-state tensor replaced by ``hidden``."""
    if isinstance(output, tuple):
        return (hidden,) + tuple(output[1:])
    if isinstance(output, list):
        return [hidden] + list(output[1:])
    return hidden


class Adapter:
    """Base adapter. Subclasses set ``module`` and ``block_paths`` and implement ``forward``.

    Suffix execution (``supports_suffix``): ``prefix_state`` runs the network once and keeps, for each
    requested block index j, the hidden state entering block j plus whatever blocks j.. need to be
    replayed; ``run_suffix`` replays them from an edited hidden state.
    """

    module: nn.Module
    block_paths: list[str]
    supports_suffix: bool = False
    #: language models: the tokenizer ``PromptTask`` encodes with, and the side it pads on
    tokenizer = None
    padding_side: str = "left"
    #: for each fast path that is off, why (``fast_paths`` lists them all)
    why_not: dict[str, str] = {}

    @property
    def fast_paths(self) -> dict[str, bool]:
        """Which fast paths the adapter uses (``suffix``: run only the blocks after a site)."""
        return {"suffix": self.supports_suffix}

    @property
    def n_layers(self) -> int:
        return len(self.block_paths)

    @property
    def device(self) -> torch.device:
        p = next(self.module.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def site_device(self, site: Site) -> torch.device:
        """The device of the block a site belongs to (where a featurizer acting there lives): the block's
        parameters' device, which differs from ``device`` when a model is spread over GPUs."""
        try:
            p = next(self.submodule(self.module_path(site)).parameters(), None)
        except Exception:  # a site not on a module with parameters: the model's device
            p = None
        return p.device if p is not None else self.device

    @property
    def embedding_std(self) -> float:
        """The standard deviation of the token embedding matrix (what Gaussian-noise corruption is scaled by);
        language models only."""
        raise ModelError(f"a {type(self).__name__} has no token embeddings; Gaussian-noise corruption "
                         "(corruption='gn') needs a language model (cv.HFModel, cv.TLModel)")

    def module_path(self, site: Site) -> str:
        """The module path a site names; a clear error for an unknown layer."""
        if isinstance(site.layer, int):
            n = self.n_layers
            if not -n <= site.layer < n:
                raise ModelError(f"layer {site.layer} is out of range: the model has {n} blocks (0..{n - 1})")
            return self.block_paths[site.layer]
        names = dict(self.module.named_modules())
        if site.layer not in names:
            close = [n for n in names if n and site.layer.split(".")[-1] in n][:8]
            raise ModelError(f"the model has no module '{site.layer}'" + (f"; similar: {close}" if close else ""))
        return site.layer

    def submodule(self, path: str) -> nn.Module:
        return self.module.get_submodule(path)

    def hook(self, site: Site, fn):
        """Call ``fn(h)`` on the site's activation in every forward until the returned handle's
        ``remove()``; a tensor ``fn`` returns replaces the activation. ``h: [n, seq, d]`` (``[n, d]``
        without a sequence axis, ``[n, seq, d_head]`` for a head). This base class knows a module's
        output (``resid_post``) and input (``resid_pre``); adapters of layered models add the
        components inside a layer."""
        if site.component not in ("resid_post", "resid_pre"):
            raise ModelError(f"site {site}: a {type(self).__name__} has no '{site.component}' component; its sites "
                             "are a module's output ('resid_post') or input ('resid_pre')")
        return hook_module(self.submodule(self.module_path(site)),
                           "output" if site.component == "resid_post" else "input", fn)

    def block_index(self, site: Site) -> int | None:
        """The index j of the block whose INPUT equals this site's activation, when the site is on the
        residual stream between blocks (so suffix execution can start there); else ``None``."""
        path = self.module_path(site)
        if path not in self.block_paths or site.component not in ("resid_post", "resid_pre"):
            return None
        i = self.block_paths.index(path)
        return i + 1 if site.component == "resid_post" else i

    def inner_block(self, site: Site) -> int | None:
        """The index j of the block that computes this site's activation inside itself (a sublayer's output,
        a head), when suffix execution can start at block j's cached input with the site hooked; else
        ``None``. The hook then sees only the positions ``run_suffix`` recomputes (the last ones)."""
        return None

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits the task reads: ``[n, n_classes]`` (at ``batch.read`` for sequence models)."""
        raise NotImplementedError

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        """What a language model does to the residual stream after its last block (its final norm, then
        the unembedding): ``h: [..., d]`` -> vocabulary logits ``[..., vocab]``, so that ``unembed`` of the
        last block's output at the read position gives ``forward``'s logits."""
        raise ModelError(f"a {type(self).__name__} has no unembedding; unembed needs a language model (cv.HFModel)")

    def generate(self, batch: Batch, n_tokens: int, after_prompt=None) -> torch.Tensor:
        """Greedy decoding (language models): ``n_tokens`` ids ``[n, n_tokens]`` after each row's last real
        token; ``after_prompt()`` is called once the prompt has run (e.g. to remove an intervention)."""
        raise ModelError(f"a {type(self).__name__} does not generate text; tasks that judge generated answers "
                         "need a language model")

    def prefix_state(self, batch: Batch, starts: list[int]) -> dict:
        """One forward of ``batch``; for each block index j in ``starts``, what ``run_suffix`` needs to
        replay blocks j.. (at least ``{"hidden": {j: [n, seq, d]}}``)."""
        raise NotImplementedError

    def run_suffix(self, state: dict, start: int, hidden: torch.Tensor, batch: Batch,
                   positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[n, C]`` from ``hidden`` entering block ``start``; ``positions: [n]`` are the
        intervened token indices (adapters may skip work on the positions before them)."""
        raise NotImplementedError
