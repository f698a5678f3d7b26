"""TransformerLens ``HookedTransformer`` models. The only file that knows TransformerLens's hook names."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..sites import Site
from .base import EMBED_NOISE, Adapter, Batch, FastPathWarning, ModelError, hook_module

#: canonical components -> the hook point inside ``blocks.{L}`` that carries them
HOOK_NAMES = {"resid_pre": "hook_resid_pre", "resid_post": "hook_resid_post", "attn_out": "hook_attn_out",
              "mlp_out": "hook_mlp_out", "head": "attn.hook_z", "mlp_hidden": "mlp.hook_post"}


def is_hooked_transformer(model) -> bool:
    """Whether ``model`` is a TransformerLens ``HookedTransformer`` (checked by class, without importing
    TransformerLens when it is not loaded)."""
    return any(c.__name__ == "HookedTransformer" and c.__module__.startswith("transformer_lens")
               for c in type(model).__mro__)


class TLModel(Adapter):
    """A TransformerLens ``HookedTransformer`` with its tokenizer.

    Int layers index ``model.blocks``; canonical sites map to its hook points
    (``blocks.{L}.hook_resid_pre`` / ``hook_resid_post`` / ``hook_attn_out`` / ``hook_mlp_out``, and
    ``attn.hook_z[..., head, :]`` for a head: ``[n, seq, d_head]``). Suffix execution replays
    ``blocks[L:]`` with ``start_at_layer``; every position is recomputed (no key/value reuse).
    ``forward`` projects only the read position onto the vocabulary.

    Args:
        model: the ``HookedTransformer`` (frozen, eval mode).
        tokenizer: its tokenizer (default ``model.tokenizer``); a pad token is set to EOS if missing.
        padding_side: "left" or "right" (positions follow the attention mask either way).
    """

    supports_suffix = True

    def __init__(self, model: nn.Module, tokenizer=None, padding_side: str = "left"):
        self._wrap(model, tokenizer, padding_side, is_hooked_transformer, "HookedTransformer")
        self.why_not = {"reuse_kv": "the TransformerLens adapter recomputes every position of a suffix run"}
        warnings.warn(f"HookedTransformer: key/value reuse is off, so every suffix run recomputes all positions "
                      f"(slower, same numbers): {self.why_not['reuse_kv']}", FastPathWarning, stacklevel=3)

    def _wrap(self, model: nn.Module, tokenizer, padding_side: str, is_kind, kind: str) -> None:
        """Hold ``model`` (frozen, eval mode) with its tokenizer, after checking it is a ``kind``."""
        if not is_kind(model):
            raise ModelError(f"{type(self).__name__} wraps a TransformerLens {kind}, got {type(model).__name__}")
        if padding_side not in ("left", "right"):
            raise ModelError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.module = model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        if self.tokenizer is None:
            raise ModelError(f"this {kind} has no tokenizer; pass one: cv.models.{type(self).__name__}(model, tokenizer)")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.padding_side = padding_side
        self.cfg = model.cfg
        self.block_paths = [f"blocks.{i}" for i in range(self.cfg.n_layers)]

    @property
    def fast_paths(self) -> dict[str, bool]:
        return {"suffix": True, "reuse_kv": False}

    @property
    def d_model(self) -> int:
        return self.cfg.d_model

    @property
    def n_heads(self) -> int:
        return self.cfg.n_heads

    @property
    def embedding_std(self) -> float:
        return float(self.module.W_E.float().std())

    def hook(self, site: Site, fn):
        """As ``Adapter.hook``; int layers use the block's hook points (see the class docstring)."""
        if not isinstance(site.layer, int):
            return super().hook(site, fn)
        block = self.submodule(self.module_path(site))
        point = block.get_submodule(HOOK_NAMES[site.component])
        if site.component != "head":
            return hook_module(point, "output", fn)
        if not site.head < self.n_heads:
            raise ModelError(f"site {site}: head {site.head} is out of range; the model has {self.n_heads} "
                             f"heads per layer (0..{self.n_heads - 1})")

        def on_z(m, args, z):  # z: [n, seq, n_heads, d_head]
            new = fn(z[..., site.head, :])
            if new is None:
                return None
            parts = list(z.unbind(-2))
            parts[site.head] = new.to(z.dtype)
            return torch.stack(parts, -2)
        return point.register_forward_hook(on_z)

    def _logits(self, residual: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
        """The residual after the last block ``[n, seq, d]`` -> logits at ``read: [n]`` -> ``[n, vocab]``."""
        h = residual[torch.arange(len(read), device=residual.device), read.to(residual.device)][:, None]
        if self.cfg.normalization_type is not None:
            h = self.module.ln_final(h)
        logits = self.module.unembed(h)[:, 0]
        cap = getattr(self.cfg, "output_logits_soft_cap", -1.0)
        return torch.tanh(logits / cap) * cap if cap and cap > 0 else logits

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits ``[n, vocab]`` at ``batch.read``; ``EMBED_NOISE`` in the inputs (``[n, seq, d]``) is added
        at ``hook_embed`` (the token embeddings, before positional embeddings)."""
        noise = batch.inputs.get(EMBED_NOISE)
        handle = None if noise is None else self.module.hook_embed.register_forward_hook(
            lambda m, a, out: out + noise.to(out.device, out.dtype))
        try:
            residual = self.module(batch.inputs["input_ids"], attention_mask=batch.inputs["attention_mask"],
                                   padding_side=self.padding_side, stop_at_layer=self.cfg.n_layers)
        finally:
            if handle is not None:
                handle.remove()
        return self._logits(residual, batch.read)

    def prefix_state(self, batch: Batch, starts: list[int]) -> dict:
        """One forward; the residual entering each block in ``starts`` (``n_layers``: after the last)."""
        hidden, handles = {}, []
        for j in starts:
            name = f"blocks.{j}.hook_resid_pre" if j < self.n_layers else f"blocks.{j - 1}.hook_resid_post"
            point = self.module.get_submodule(name)
            handles.append(point.register_forward_hook(
                lambda m, a, out, j=j: hidden.__setitem__(j, out.detach())))
        try:
            self.forward(batch)
        finally:
            for h in handles:
                h.remove()
        return {"hidden": hidden}

    def run_suffix(self, state: dict, start: int, hidden: torch.Tensor, batch: Batch,
                   positions: torch.Tensor | None = None) -> torch.Tensor:
        """Blocks ``start..`` on ``hidden: [n, seq, d]``, then the final norm and unembedding at the read
        positions -> ``[n, vocab]``."""
        if start < self.n_layers:
            hidden = self.module(hidden, start_at_layer=start, stop_at_layer=self.cfg.n_layers,
                                 attention_mask=batch.inputs["attention_mask"], padding_side=self.padding_side)
        return self._logits(hidden, batch.read)

    @torch.no_grad()
    def generate(self, batch: Batch, n_tokens: int, after_prompt=None) -> torch.Tensor:
        """Greedy decoding: ``n_tokens`` ids ``[n, n_tokens]`` after each row's last real token. The prompt
        runs once (``after_prompt()`` is called after it); each later token re-runs the sequence so far,
        its new tokens placed right after each row's real ones."""
        ids, mask, read = batch.inputs["input_ids"], batch.inputs["attention_mask"], batch.read
        noise = batch.inputs.get(EMBED_NOISE)  # on the prompt's tokens only: zeros for the generated ones
        tokens = [self.forward(batch).argmax(-1)]
        if after_prompt is not None:
            after_prompt()
        rows = torch.arange(len(ids), device=ids.device)
        for _ in range(n_tokens - 1):
            if self.padding_side == "left":  # every row ends at the last column: append there
                ids = torch.cat([ids, tokens[-1][:, None]], 1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                read = torch.full_like(read, ids.shape[1] - 1)
            else:  # rows end at their read position: write the token just after it
                ids = torch.cat([ids, torch.full_like(ids[:, :1], self.tokenizer.pad_token_id)], 1)
                mask = torch.cat([mask, torch.zeros_like(mask[:, :1])], 1)
                read = read + 1
                ids[rows, read], mask[rows, read] = tokens[-1], 1
            step = Batch({"input_ids": ids, "attention_mask": mask}, read=read)
            if noise is not None:
                noise = torch.cat([noise, torch.zeros_like(noise[:, :1])], 1)
                step.inputs[EMBED_NOISE] = noise
            tokens.append(self.forward(step).argmax(-1))
        return torch.stack(tokens, 1)


def is_transformer_bridge(model) -> bool:
    """Whether ``model`` is a TransformerLens ``TransformerBridge`` (TransformerLens 4's wrapper of a HF model)."""
    return any(c.__name__ == "TransformerBridge" and c.__module__.startswith("transformer_lens")
               for c in type(model).__mro__)


class BridgeModel(TLModel):
    """A TransformerLens ``TransformerBridge`` (it wraps the HF model itself) with its tokenizer. Canonical
    sites map to the bridge's hook aliases (``blocks.{L}.hook_resid_pre`` / ``hook_resid_post`` /
    ``hook_attn_out`` / ``hook_mlp_out``, ``attn.hook_z`` for a head). A bridge cannot start a forward at
    a layer (its ``start_at_layer`` is not implemented), so every intervention runs one whole hooked
    forward: no suffix execution (``fast_paths`` says so)."""

    supports_suffix = False

    def __init__(self, model: nn.Module, tokenizer=None, padding_side: str = "left"):
        self._wrap(model, tokenizer, padding_side, is_transformer_bridge, "TransformerBridge")
        self.why_not = {"suffix": "a TransformerBridge cannot start a forward at a layer, so every intervention "
                                  "runs the whole network",
                        "reuse_kv": "no suffix execution on a TransformerBridge"}
        warnings.warn(f"TransformerBridge: suffix execution is off (slower, same numbers): {self.why_not['suffix']}",
                      FastPathWarning, stacklevel=3)

    @property
    def fast_paths(self) -> dict[str, bool]:
        return {"suffix": False, "reuse_kv": False}

    def _point(self, name: str) -> nn.Module:
        points = self.module.hook_dict
        if name not in points:
            raise ModelError(f"this TransformerBridge has no hook point '{name}'")
        return points[name]

    @property
    def embedding_std(self) -> float:
        return float(self.module.W_E.float().std())

    def hook(self, site: Site, fn):
        """As ``Adapter.hook``; int layers use the bridge's hook aliases (see the class docstring)."""
        if not isinstance(site.layer, int):
            return super(TLModel, self).hook(site, fn)
        self.module_path(site)  # a clear error for a layer out of range
        point = self._point(f"blocks.{site.layer % self.n_layers}.{HOOK_NAMES[site.component]}")
        if site.component != "head":
            return hook_module(point, "output", fn)
        if not site.head < self.n_heads:
            raise ModelError(f"site {site}: head {site.head} is out of range; the model has {self.n_heads} "
                             f"heads per layer (0..{self.n_heads - 1})")

        def on_z(m, args, z):  # z: [n, seq, n_heads, d_head] (or the heads flattened: [n, seq, n_heads·d_head])
            heads = z if z.dim() == 4 else z.unflatten(-1, (self.n_heads, -1))
            new = fn(heads[..., site.head, :])
            if new is None:
                return None
            parts = list(heads.unbind(-2))
            parts[site.head] = new.to(z.dtype)
            out = torch.stack(parts, -2)
            return out if z.dim() == 4 else out.flatten(-2)
        return point.register_forward_hook(on_z)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits ``[n, vocab]`` at ``batch.read``; ``EMBED_NOISE`` (``[n, seq, d]``) is added at ``hook_embed``."""
        noise = batch.inputs.get(EMBED_NOISE)
        handle = None if noise is None else self._point("hook_embed").register_forward_hook(
            lambda m, a, out: out + noise.to(out.device, out.dtype))
        try:
            logits = self.module(batch.inputs["input_ids"], attention_mask=batch.inputs["attention_mask"],
                                 return_type="logits")
        finally:
            if handle is not None:
                handle.remove()
        read = batch.read.to(logits.device)
        return logits[torch.arange(len(read), device=logits.device), read]
