"""Hugging Face causal language models. The only file that knows HF module and argument names."""
from __future__ import annotations

import inspect
import warnings

import torch
from torch import nn

from ..sites import Site
from .base import EMBED_NOISE, Adapter, Batch, FastPathWarning, ModelError, hook_head, hook_module, unwrap

# where each family keeps its decoder blocks and final norm, relative to ``model.base_model``
_BLOCK_ATTRS = ("layers", "h", "blocks")
_NORM_ATTRS = ("norm", "ln_f", "final_layernorm", "final_layer_norm")
# inside a block: the attention and MLP sublayers, and the attention's output projection
_ATTN_ATTRS = ("self_attn", "attn", "attention", "self_attention")  # the last: Falcon
_MLP_ATTRS = ("mlp", "feed_forward")
_OUT_PROJ_ATTRS = ("o_proj", "c_proj", "out_proj", "dense")
# inside an MLP: its output projection, whose input is the hidden activation (``mlp_hidden``)
_MLP_OUT_ATTRS = ("down_proj", "c_proj", "dense_4h_to_h", "fc2", "fc_out")
# Gemma-2-style blocks normalise each sublayer's output before adding it to the residual stream
_POST_NORMS = {"attn_out": "post_attention_layernorm", "mlp_out": "post_feedforward_layernorm"}
# attention implementations whose masks causalvar can build when HF passed none
_MASK_KINDS = {"sdpa": "bool", "eager": "float"}
# the keyword a decoder block / base model takes its key-value cache under: transformers >= 5.24 says
# ``cache``, earlier releases ``past_key_values``
_CACHE_KWARGS = ("cache", "past_key_values")


def _cache_kwarg(fn) -> str | None:
    """The name under which ``fn`` takes a key/value cache, or ``None``."""
    params = inspect.signature(fn).parameters
    return next((name for name in _CACHE_KWARGS if name in params), None)


class _KVRecorder:
    """Stands in for an HF cache during the base pass: keeps each layer's keys and values."""

    def __init__(self):
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, keys, values, layer_idx, *args, **kwargs):
        self.kv[layer_idx] = (keys, values)
        return keys, values


class _PrefixKV:
    """Stands in for an HF cache during suffix replay: the base's keys and values of the first ``p0``
    positions, joined to the recomputed ones (never stored, so nothing needs trimming afterwards)."""

    def __init__(self, kv: dict, p0: int):
        self.kv, self.p0 = kv, p0

    def update(self, keys, values, layer_idx, *args, **kwargs):
        k, v = self.kv[layer_idx]
        return (torch.cat([k[:, :, :self.p0], keys.to(k.dtype)], dim=-2),
                torch.cat([v[:, :, :self.p0], values.to(v.dtype)], dim=-2))


def _child(module: nn.Module, names: tuple[str, ...], what: str) -> nn.Module:
    """The first child of ``module`` named in ``names``; a clear error naming ``what`` otherwise."""
    found = next((getattr(module, n) for n in names if isinstance(getattr(module, n, None), nn.Module)), None)
    if found is None:
        raise ModelError(f"cannot find {what} in {type(module).__name__}: looked for {names}, it has "
                         f"{[n for n, _ in module.named_children()]}")
    return found


class HFModel(Adapter):
    """A transformers ``*ForCausalLM`` with its tokenizer.

    Int layers index the decoder blocks; a site's ``"output"`` is the residual stream after the block,
    ``"input"`` the residual entering it. ``forward`` projects only the read position onto the
    vocabulary. Suffix execution replays blocks with the arguments they were called with, and reuses
    the base's keys and values for the positions before the intervened one.

    Args:
        model: the causal LM (frozen, eval mode).
        tokenizer: its tokenizer; a pad token is set to EOS if it has none.
        padding_side: "left" or "right"; results do not depend on it (position ids follow the mask).
        reuse_kv: recompute only the positions from the intervened one on (exact; on by default).
            Where the model cannot do it, the adapter warns once (``FastPathWarning``) and
            ``fast_paths`` / ``why_not`` say why.
    """

    supports_suffix = True

    def __init__(self, model: nn.Module, tokenizer, padding_side: str = "left", reuse_kv: bool = True):
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
        self._signature = inspect.signature(self._blocks[0].forward)
        self._var_kw = next((p.name for p in self._signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)
        attn = getattr(model.config, "_attn_implementation", None)
        self._mask_kind = _MASK_KINDS.get(attn)
        self._cache_kw = _cache_kwarg(self._blocks[0].forward)  # blocks' name for the cache
        self._base_cache_kw = _cache_kwarg(base.forward) or "past_key_values"
        self.block_paths = [f"{prefix}.{blocks_attr}.{i}" for i in range(len(self._blocks))]
        self.why_not = {}
        if not reuse_kv:
            self.why_not["reuse_kv"] = "turned off by the caller (reuse_kv=False)"
        elif self._mask_kind is None:
            self.why_not["reuse_kv"] = (f"the attention implementation {attn!r} is not one whose mask causalvar "
                                        f"can cut to the suffix ({sorted(_MASK_KINDS)})")
        elif self._cache_kw is None:
            self.why_not["reuse_kv"] = (f"{type(self._blocks[0]).__name__}.forward takes no key/value cache "
                                        f"under any of the names {_CACHE_KWARGS}")
        self.reuse_kv = "reuse_kv" not in self.why_not
        if reuse_kv and not self.reuse_kv:
            warnings.warn(f"{type(model).__name__}: key/value reuse is off, so every suffix run recomputes all "
                          f"positions (slower, same numbers): {self.why_not['reuse_kv']}", FastPathWarning,
                          stacklevel=2)

    @property
    def fast_paths(self) -> dict[str, bool]:
        """Which fast paths this adapter uses: ``suffix`` (run only the blocks after a site) and
        ``reuse_kv`` (reuse the base's keys and values before the intervened position); ``why_not``
        gives the reason for each one that is off."""
        return {"suffix": True, "reuse_kv": self.reuse_kv}

    @property
    def d_model(self) -> int:
        return self.module.config.hidden_size

    @property
    def n_heads(self) -> int:
        """Query heads per layer (grouped-query models share each key/value head among several)."""
        return self.module.config.num_attention_heads

    @property
    def embedding_std(self) -> float:
        return float(self.module.get_input_embeddings().weight.float().std())

    def _inputs(self, batch: Batch) -> dict:
        """The base model's keyword inputs: ``batch.inputs``, with ``EMBED_NOISE`` (``[n, seq, d]``) added to
        the token embeddings and passed as ``inputs_embeds`` (families that scale embeddings, e.g. Gemma,
        scale the noised ones)."""
        inputs = dict(batch.inputs)
        noise = inputs.pop(EMBED_NOISE, None)
        if noise is None:
            return inputs
        embed = self.module.get_input_embeddings()
        inputs["inputs_embeds"] = embed(inputs.pop("input_ids")) + noise.to(embed.weight.dtype)
        return inputs

    def hook(self, site: Site, fn):
        """As ``Adapter.hook``, with the components inside a decoder layer (int layers):

        - ``attn_out`` / ``mlp_out``: what the attention / MLP sublayer adds to the residual stream,
          ``[n, seq, d]`` (after the sublayer's own output norm in Gemma-2-style blocks), so that
          ``resid_post = resid_pre + attn_out + mlp_out``;
        - ``head``: query head ``site.head``'s attention output before the output projection,
          ``[n, seq, d_head]``. With grouped-query attention a query head still has its own output
          (its attention pattern over the key/value head it shares); writing it changes only that
          query head's contribution ``z_h W_O[h]``, not the shared keys and values;
        - ``mlp_hidden``: the MLP's neurons, the input of its output projection (``down_proj``, GPT-2's
          ``c_proj``, Falcon's ``dense_4h_to_h``, ...), ``[n, seq, d_mlp]``: the activation after the
          nonlinearity (in a gated MLP, the activated gate times the up projection).
        """
        if site.component in ("resid_post", "resid_pre"):
            return super().hook(site, fn)
        if not isinstance(site.layer, int):
            raise ModelError(f"site {site}: '{site.component}' sites take an int layer (a decoder block), "
                             f"got the module path {site.layer!r}")
        block = self.submodule(self.module_path(site))
        if site.component == "mlp_hidden":
            mlp = _child(block, _MLP_ATTRS, f"the MLP of block {site.layer}")
            return hook_module(_child(mlp, _MLP_OUT_ATTRS, f"the MLP output projection of block {site.layer}"),
                               "input", fn)
        attn = _child(block, _ATTN_ATTRS, f"the attention of block {site.layer}")
        if site.component == "head":
            if not site.head < self.n_heads:
                raise ModelError(f"site {site}: head {site.head} is out of range; the model has "
                                 f"{self.n_heads} query heads per layer (0..{self.n_heads - 1})")
            proj = _child(attn, _OUT_PROJ_ATTRS, f"the attention output projection of block {site.layer}")
            return hook_head(proj, site.head, self.n_heads, fn)
        sandwich = hasattr(block, "pre_feedforward_layernorm")  # Gemma 2: the post norms end each sublayer
        if sandwich:
            return hook_module(getattr(block, _POST_NORMS[site.component]), "output", fn)
        sub = attn if site.component == "attn_out" else _child(block, _MLP_ATTRS, f"the MLP of block {site.layer}")
        return hook_module(sub, "output", fn)

    def inner_block(self, site: Site) -> int | None:
        """A sublayer's output, a head or the MLP's neurons (int layer) are computed inside its decoder
        block: a suffix run starts at that block's cached input with the site hooked."""
        if site.component in ("attn_out", "mlp_out", "head", "mlp_hidden") and isinstance(site.layer, int):
            return site.layer % self.n_layers
        return None

    def _logits(self, normed: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
        """``normed: [n, seq, d]`` -> vocabulary logits at ``read: [n]`` -> ``[n, vocab]``."""
        return self._project(normed[torch.arange(len(read), device=normed.device), read.to(normed.device)])

    def _project(self, normed: torch.Tensor) -> torch.Tensor:
        """The unembedding (and Gemma 2's logit soft-capping) of normed states ``[..., d]`` -> ``[..., vocab]``."""
        logits = self._head(normed)
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def unembed(self, h: torch.Tensor) -> torch.Tensor:
        """The final norm, the unembedding (and Gemma 2's logit soft-capping) of residual-stream states
        ``h: [..., d]`` after the last block -> vocabulary logits ``[..., vocab]``."""
        return self._project(self._norm(h.to(self._head.weight)))

    def forward(self, batch: Batch) -> torch.Tensor:
        out = self._base(**self._inputs(batch), use_cache=False)
        return self._logits(out.last_hidden_state, batch.read)

    def generate(self, batch: Batch, n_tokens: int, after_prompt=None) -> torch.Tensor:
        """Greedy decoding with a key/value cache: ``n_tokens`` ids ``[n, n_tokens]`` following each
        row's last real token (either padding side: new tokens take the next position id and attend to
        the real tokens only). ``after_prompt()`` is called once the prompt has run (e.g. to remove an
        intervention's hook)."""
        mask, pids = batch.inputs["attention_mask"], batch.inputs["position_ids"]
        out = self._base(**self._inputs(batch), use_cache=True)
        if after_prompt is not None:
            after_prompt()
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        rows = torch.arange(len(mask), device=mask.device)
        tokens = [self._logits(out.last_hidden_state, batch.read).argmax(-1)]
        next_pid = pids[rows, batch.read.to(mask.device)] + 1
        for _ in range(n_tokens - 1):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            out = self._base(input_ids=tokens[-1][:, None], attention_mask=mask, position_ids=next_pid[:, None],
                             use_cache=True, **{self._base_cache_kw: cache})
            tokens.append(self._logits(out.last_hidden_state, torch.zeros_like(rows)).argmax(-1))
            next_pid = next_pid + 1
        return torch.stack(tokens, 1)

    def prefix_state(self, batch: Batch, starts: list[int]) -> dict:
        """One forward; keep the hidden state entering each block in ``starts`` (``n_layers`` = after
        the last block), the named call arguments of every block from the first start on and, for
        key/value reuse, each of those blocks' keys and values."""
        first = min(starts)
        hidden, calls, handles = {}, {}, []
        recorder = _KVRecorder()

        def pre_hook(j):
            def hook(module, args, kwargs):
                named = dict(self._signature.bind(*args, **kwargs).arguments)
                call = {**named.pop(self._var_kw, {}), **named}  # every argument by its name
                h = call.pop("hidden_states")
                if j in starts:
                    hidden[j] = h
                calls[j] = call
                if self.reuse_kv:
                    return (h,), {**call, self._cache_kw: recorder}
            return hook

        def last_hook(module, args, output):
            hidden[self.n_layers] = unwrap(output)

        try:
            for j in range(first, self.n_layers):
                handles.append(self._blocks[j].register_forward_pre_hook(pre_hook(j), with_kwargs=True))
            if self.n_layers in starts:
                handles.append(self._blocks[-1].register_forward_hook(last_hook))
            self._base(**self._inputs(batch), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        return {"hidden": hidden, "calls": calls, "kv": recorder.kv}

    def run_suffix(self, state: dict, start: int, hidden: torch.Tensor, batch: Batch,
                   positions: torch.Tensor | None = None) -> torch.Tensor:
        """Blocks ``start..`` on ``hidden: [n, seq, d]``, then the final norm and the head at the
        read positions -> ``[n, vocab]``. With ``positions: [n]`` (the intervened token of each row)
        only positions from ``min(positions)`` on are recomputed."""
        p0 = 0
        if positions is not None and self.reuse_kv and start < self.n_layers:
            p0 = int(positions.min())
            if p0 > int(batch.read.min()):
                p0 = 0  # a read position before the intervention: recompute everything
        if p0 == 0:
            for j in range(start, self.n_layers):
                hidden = unwrap(self._blocks[j](hidden, **state["calls"][j]))
            return self._logits(self._norm(hidden), batch.read)
        cache = _PrefixKV(state["kv"], p0)
        hidden = hidden[:, p0:]
        for j in range(start, self.n_layers):
            call = self._suffix_call(state["calls"][j], p0, batch, j)
            hidden = unwrap(self._blocks[j](hidden, **call, **{self._cache_kw: cache}))
        return self._logits(self._norm(hidden), batch.read - p0)

    def _suffix_call(self, call: dict, p0: int, batch: Batch, j: int) -> dict:
        """A block's call arguments cut to the query positions ``p0..`` (keys still span all)."""
        out = dict(call)
        mask = call.get("attention_mask")
        out["attention_mask"] = (mask if mask is not None else self._full_mask(batch, j))[..., p0:, :]
        if call.get("position_embeddings") is not None:
            out["position_embeddings"] = tuple(t[:, p0:] for t in call["position_embeddings"])
        if call.get("position_ids") is not None:
            out["position_ids"] = call["position_ids"][:, p0:]
        if call.get("cache_position") is not None:
            out["cache_position"] = call["cache_position"][p0:]
        for name in _CACHE_KWARGS:
            out.pop(name, None)
        return out

    def _full_mask(self, batch: Batch, j: int) -> torch.Tensor:
        """The causal + padding (+ sliding window) mask ``[n, 1, seq, seq]`` HF skipped building,
        in the format of the model's attention implementation."""
        pad = batch.inputs["attention_mask"].bool()
        T = pad.shape[1]
        q = torch.arange(T, device=pad.device)
        allowed = (q[None, :] <= q[:, None])[None, None] & pad[:, None, None, :]
        window = getattr(getattr(self._blocks[j], "self_attn", None), "sliding_window", None)
        if window:
            allowed = allowed & (q[:, None] - q[None, :] < window)[None, None]
        if self._mask_kind == "bool":
            return allowed
        dtype = next(self.module.parameters()).dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=pad.device).masked_fill(~allowed, torch.finfo(dtype).min)
