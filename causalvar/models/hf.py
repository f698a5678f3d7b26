"""Hugging Face causal language models. The only file that knows HF module names."""
from __future__ import annotations

import torch
from torch import nn

from .base import Adapter, Batch, ModelError, unwrap

# where each family keeps its decoder blocks and final norm, relative to ``model.base_model``
_BLOCK_ATTRS = ("layers", "h", "blocks")
_NORM_ATTRS = ("norm", "ln_f", "final_layernorm", "final_layer_norm")


class HFModel(Adapter):
    """A transformers ``*ForCausalLM`` with its tokenizer.

    Int layers index the decoder blocks; a site's ``"output"`` is the residual stream after the block,
    ``"input"`` the residual entering it. ``forward`` projects only the read position onto the
    vocabulary. Suffix execution replays blocks with the keyword arguments they were called with.

    Args:
        model: the causal LM (frozen, eval mode).
        tokenizer: its tokenizer; a pad token is set to EOS if it has none.
        padding_side: "left" or "right"; results do not depend on it (position ids follow the mask).
    """

    supports_suffix = True

    def __init__(self, model: nn.Module, tokenizer, padding_side: str = "left"):
        if padding_side not in ("left", "right"):
            raise ModelError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.module = model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.padding_side = padding_side
        base = model.base_model
        self._base = base
        prefix = model.base_model_prefix
        blocks_attr = next((a for a in _BLOCK_ATTRS if isinstance(getattr(base, a, None), nn.ModuleList)), None)
        norm_attr = next((a for a in _NORM_ATTRS if isinstance(getattr(base, a, None), nn.Module)), None)
        if blocks_attr is None or norm_attr is None:
            raise ModelError(f"{type(model).__name__}: cannot find its decoder blocks and final norm; "
                             f"looked for {_BLOCK_ATTRS} and {_NORM_ATTRS} on model.{prefix}")
        self._blocks: nn.ModuleList = getattr(base, blocks_attr)
        self._norm: nn.Module = getattr(base, norm_attr)
        self._head: nn.Module = model.get_output_embeddings()
        self._softcap = getattr(model.config, "final_logit_softcapping", None)
        self.block_paths = [f"{prefix}.{blocks_attr}.{i}" for i in range(len(self._blocks))]

    @property
    def d_model(self) -> int:
        return self.module.config.hidden_size

    def _logits(self, normed: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
        """``normed: [n, seq, d]`` -> vocabulary logits at ``read: [n]`` -> ``[n, vocab]``."""
        h = normed[torch.arange(len(read), device=normed.device), read]
        logits = self._head(h)
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def forward(self, batch: Batch) -> torch.Tensor:
        out = self._base(**batch.inputs, use_cache=False)
        return self._logits(out.last_hidden_state, batch.read)

    def prefix_state(self, batch: Batch, starts: list[int]) -> dict:
        """One forward; keep the hidden state entering each block in ``starts`` (``n_layers`` = after
        the last block) and the call arguments of every block from the first start on."""
        first = min(starts)
        hidden, calls, handles = {}, {}, []

        def pre_hook(j):
            def hook(module, args, kwargs):
                h = args[0] if args else kwargs["hidden_states"]
                if j in starts:
                    hidden[j] = h
                rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                calls[j] = (tuple(args[1:]), rest)
            return hook

        def last_hook(module, args, output):
            hidden[self.n_layers] = unwrap(output)

        try:
            for j in range(first, self.n_layers):
                handles.append(self._blocks[j].register_forward_pre_hook(pre_hook(j), with_kwargs=True))
            if self.n_layers in starts:
                handles.append(self._blocks[-1].register_forward_hook(last_hook))
            self._base(**batch.inputs, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        return {"hidden": hidden, "calls": calls}

    def run_suffix(self, state: dict, start: int, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Blocks ``start..`` on ``hidden: [n, seq, d]``, then the final norm and the head at the
        read positions -> ``[n, vocab]``."""
        for j in range(start, self.n_layers):
            args, kwargs = state["calls"][j]
            hidden = unwrap(self._blocks[j](hidden, *args, **kwargs))
        return self._logits(self._norm(hidden), batch.read)
