"""Featurized interchange interventions.

Cost model (the network is frozen):
- a source's activation at a site does not depend on any intervention: ``Engine.capture`` records
  every requested site of every source in one forward per batch, reused across cells and epochs,
  held by an ``ActivationStore`` (in memory up to a bound, memory-mapped files past it);
- a base's activations below the intervened block don't either: ``Engine.prepare`` runs each base
  batch once and keeps the hidden state entering each needed block, so every evaluation and training
  step runs only the blocks after the site (suffix execution), and only the read position is
  projected onto the vocabulary. Sites that are not on the residual stream between blocks fall back
  to one hooked forward of the whole network.

The engine never sees a task: token positions come resolved in each ``Batch`` (``Batch.position``),
and the adapter alone knows how a site is read and written (``Adapter.hook``).
"""
from __future__ import annotations

import hashlib
import tempfile
import weakref
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from featurizers import Featurizer

from .models.base import Adapter, Batch
from .sites import Site


def _gather(h: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    """``h: [n, seq, d]`` at ``pos: [n]`` -> ``[n, d]``; ``pos=None``: ``h: [n, d]`` as is."""
    if pos is None:
        return h
    return h[torch.arange(len(pos), device=h.device), pos.to(h.device)]


def _patch(h: torch.Tensor, pos: torch.Tensor | None, featurizer: Featurizer, source: torch.Tensor) -> torch.Tensor:
    """The base hidden ``h`` ([n, seq, d] or [n, d]) with the featurized interchange of ``source: [n, d]``
    written at ``pos: [n]`` (out of place, so gradients reach the featurizer)."""
    base = _gather(h, pos)
    dtype = next((t.dtype for t in featurizer.state_dict().values() if t.is_floating_point()), torch.float32)
    new = featurizer.interchange(base.to(dtype), source.to(base.device, dtype)).to(h.dtype)  # in its dtype
    if pos is None:
        return new
    return h.index_put((torch.arange(len(pos), device=h.device), pos.to(h.device)), new)


def fingerprint(batch: Batch) -> str:
    """A digest of a batch's inputs and token positions: equal batches give equal digests."""
    digest = hashlib.blake2b(digest_size=16)
    for group in (batch.inputs, batch.positions, {"read": batch.read} if batch.read is not None else {}):
        for name in sorted(group):
            t = group[name].detach().cpu().contiguous()
            digest.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


class ActivationStore:
    """Where captured activations (float32 ``[n, d]``) and the bases' prefix states (hidden states and
    keys/values, ``hold``) live: in memory while their total stays within ``max_memory_gb``, and past it
    in memory-mapped files under ``folder`` (a temporary folder,
    removed with the store), which the operating system pages in as chunks are read.

    Attributes: memory_bytes: held in memory now (freed tensors are given back); disk_bytes: written
    to files so far.
    """

    def __init__(self, max_memory_gb: float | None = 4.0, folder: str | Path | None = None):
        if max_memory_gb is not None and max_memory_gb < 0:
            raise ValueError(f"max_memory_gb must be >= 0 or None (no bound), got {max_memory_gb}")
        self.max_bytes = None if max_memory_gb is None else int(max_memory_gb * 2**30)
        self._folder, self._tmp = (Path(folder), None) if folder else (None, None)
        self.memory_bytes = self.disk_bytes = 0

    def empty(self, n: int, d: int) -> torch.Tensor:
        """A zero tensor ``[n, d]`` (float32) in memory or, past the bound, backed by a file."""
        size = n * d * 4
        if self._fits(size):
            out = torch.zeros(n, d)
            self._count(out, size)
            return out
        return self._file(n * d, torch.float32).view(n, d)

    def hold(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (any shape and dtype) under the same bound: kept as it is while the total fits, else copied
        into a memory-mapped file. Tensors on an accelerator stay where they are, uncounted."""
        size = t.numel() * t.element_size()
        if t.device.type != "cpu":
            return t
        if self._fits(size):
            self._count(t, size)
            return t
        out = self._file(t.numel(), t.dtype).view(t.shape)
        out.copy_(t)
        return out

    def _fits(self, size: int) -> bool:
        return self.max_bytes is None or self.memory_bytes + size <= self.max_bytes

    def _count(self, t: torch.Tensor, size: int) -> None:
        self.memory_bytes += size
        weakref.finalize(t, self._release, size)

    def _file(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """A flat zero tensor of ``numel`` elements backed by a new file in the store's folder."""
        if self._folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="causalvar-acts-")
            self._folder = Path(self._tmp.name)
        self._folder.mkdir(parents=True, exist_ok=True)
        size = numel * torch.empty(0, dtype=dtype).element_size()
        path = self._folder / f"acts-{self.disk_bytes}-{size}.bin"
        self.disk_bytes += size
        return torch.from_file(str(path), shared=True, size=numel, dtype=dtype)

    def _release(self, size: int) -> None:
        self.memory_bytes -= size

    def take(self, acts: torch.Tensor, idx: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Rows ``idx`` of ``acts: [n, d]`` as a new stored tensor ``[len(idx), d]``, copied in chunks."""
        out = self.empty(len(idx), acts.shape[-1])
        for i in range(0, len(idx), chunk):
            out[i:i + chunk] = acts[idx[i:i + chunk]]
        return out

    def cat(self, parts: Sequence[torch.Tensor], chunk: int = 4096) -> torch.Tensor:
        """``parts`` (each ``[n_i, d]``) one after the other, as a new stored tensor, copied in chunks."""
        out, offset = self.empty(sum(len(p) for p in parts), parts[0].shape[-1]), 0
        for p in parts:
            for i in range(0, len(p), chunk):
                rows = p[i:i + chunk]
                out[offset:offset + len(rows)] = rows
                offset += len(rows)
        return out


@dataclass
class Prepared:
    """Base inputs made ready for interventions at some sites, in fixed chunks of rows: each chunk's
    batch, its rows (a slice of the split) and, for suffix execution, its prefix state (the hidden
    state entering each needed block)."""

    batches: list[Batch]
    slices: list[slice]
    states: list[dict] = field(default_factory=list)
    starts: dict[Site, int | None] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(b) for b in self.batches)

    @staticmethod
    def concat(parts: Sequence["Prepared"]) -> "Prepared":
        """The rows of ``parts`` one after the other (e.g. the training splits of several counterfactual
        sets); their sites must agree."""
        out, offset = Prepared([], [], [], dict(parts[0].starts)), 0
        for p in parts:
            if p.starts != out.starts:
                raise ValueError("cannot join prepared data made for different sites")
            out.batches += p.batches
            out.states += p.states
            out.slices += [slice(c.start + offset, c.stop + offset) for c in p.slices]
            offset += len(p)
        return out


class _Shared:
    """A prefix-state value common to every row (a flag, a cache position, a broadcast mask)."""

    def __init__(self, value):
        self.value = value


def _join_rows(states: list, sizes: list[int]):
    """Per-chunk prefix states (dicts, tuples, tensors) as one: tensors with a row axis (first axis of
    each chunk's size, at least 2-D) joined along it, everything else kept once as ``_Shared``. ``None``
    when the chunks' states differ in form (then rows cannot be gathered across chunks)."""
    first = states[0]
    if isinstance(first, dict):
        if any(not isinstance(x, dict) or x.keys() != first.keys() for x in states):
            return None
        parts = {k: _join_rows([x[k] for x in states], sizes) for k in first}
        return None if any(v is None for v in parts.values()) else parts
    if isinstance(first, (tuple, list)):
        if any(type(x) is not type(first) or len(x) != len(first) for x in states):
            return None
        parts = [_join_rows([x[i] for x in states], sizes) for i in range(len(first))]
        return None if any(v is None for v in parts) else type(first)(parts)
    if isinstance(first, torch.Tensor):
        if any(not isinstance(x, torch.Tensor) or x.shape[1:] != first.shape[1:] for x in states):
            return None
        if first.dim() >= 2 and all(x.shape[0] == n for x, n in zip(states, sizes)):
            return torch.cat(states)
        return _Shared(first) if all(x.shape == first.shape for x in states) else None
    return _Shared(first) if all(x is first or x == first for x in states) else None


def _pick_rows(flat, idx: torch.Tensor):
    """Rows ``idx`` of a joined prefix state (``_join_rows``), as one chunk's state."""
    if isinstance(flat, dict):
        return {k: _pick_rows(v, idx) for k, v in flat.items()}
    if isinstance(flat, (tuple, list)):
        return type(flat)(_pick_rows(v, idx) for v in flat)
    if isinstance(flat, _Shared):
        return flat.value
    return flat[idx.to(flat.device)]


class Engine:
    """Runs a network with featurized interchange interventions.

    Args:
        adapter: the network's adapter (``cv.as_adapter(model)``); it reads and writes the sites.
        batch_size: rows per forward.
        max_memory_gb: how much captured activation data stays in memory; past it the rest goes to
            memory-mapped files (``ActivationStore``); ``None``: no bound.
    """

    def __init__(self, adapter: Adapter, batch_size: int = 64, max_memory_gb: float | None = 4.0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.adapter = adapter
        self.batch_size = batch_size
        self.store = ActivationStore(max_memory_gb)
        self._memo: dict[tuple, object] = {}  # capture and prepare results by what they were asked

    def _chunks(self, n: int, size: int | None = None) -> list[slice]:
        size = size or self.batch_size
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]

    # ------------------------------------------------------------------ plain runs
    @torch.no_grad()
    def capture(self, batch: Batch, sites: Sequence[Site], n_tokens: int | None = None,
                ) -> tuple[torch.Tensor, dict[Site, torch.Tensor]]:
        """One forward per chunk: the network's logits ``[n, C]`` — or, with ``n_tokens``, that many
        greedily decoded token ids ``[n, n_tokens]``, the sites read during the prompt pass — and every
        site's activation ``[n, d]`` (written chunk by chunk into tensors from ``self.store``). The same
        rows at the same sites are captured once per engine (e.g. a counterfactual set that several
        variables draw alike): a second call returns the first one's tensors."""
        key = ("capture", fingerprint(batch), tuple(sites), n_tokens)
        if key not in self._memo:
            self._memo[key] = self._capture(batch, sites, n_tokens)
        return self._memo[key]

    def _capture(self, batch: Batch, sites: Sequence[Site], n_tokens: int | None):
        def run(rows: Batch, remove):
            if n_tokens is None:
                return self.adapter.forward(rows).float().cpu()
            return self.adapter.generate(rows, n_tokens, after_prompt=remove).cpu()
        logits, acts, _ = self._reading(batch, sites, run)
        return logits, acts

    def attribute(self, batch: Batch, sites: Sequence[Site], score: Callable[[torch.Tensor, slice], torch.Tensor],
                  ) -> tuple[torch.Tensor, dict[Site, torch.Tensor], dict[Site, torch.Tensor]]:
        """One forward and one backward per chunk, for every site at once: the logits ``[n, C]``, each
        site's activation ``[n, d]`` and the gradient ``[n, d]`` there of ``score(logits, rows) -> [b]``,
        a per-row score of the chunk's logits (rows: the chunk's slice of ``batch``). Rows do not interact
        in a forward, so the gradient of the chunk's summed score is each row's own. The gradient is taken
        through a zero added at each activation (a leaf), so the path through earlier sites stays intact."""
        pos = {s: batch.position(s.position) for s in sites}
        keys = list(dict.fromkeys((s.layer, s.component, s.head) for s in sites))
        logits, acts, grads = [], {}, {}
        for chunk in self._chunks(len(batch)):
            seen: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

            def add_zero(h, key):  # h: [b, seq, d] -> h + 0, the zero a leaf whose gradient is h's
                zero = torch.zeros_like(h, requires_grad=True)
                seen[key] = (h.detach(), zero)
                return h + zero
            handles = [self.adapter.hook(Site(k[0], None, k[1], k[2]), lambda h, k=k: add_zero(h, k)) for k in keys]
            try:
                with torch.enable_grad():
                    out = self.adapter.forward(batch.select(chunk).to(self.adapter.device))
                    total = score(out, chunk).sum()
                    if not total.requires_grad:
                        raise ValueError("the score does not depend on the hooked activations; attribution "
                                         "needs a metric of the logits that has a gradient")
                    found = torch.autograd.grad(total, [seen[k][1] for k in keys], allow_unused=True)
            finally:
                for h in handles:
                    h.remove()
            logits.append(out.detach().float().cpu())
            for k, g in zip(keys, found):
                seen[k] = (seen[k][0], torch.zeros_like(seen[k][0]) if g is None else g)
            for s in sites:
                p = None if pos[s] is None else pos[s][chunk]
                h, g = (_gather(t, p).float().cpu() for t in seen[(s.layer, s.component, s.head)])
                for store, value in ((acts, h), (grads, g)):
                    if s not in store:
                        store[s] = self.store.empty(len(batch), value.shape[-1])
                    store[s][chunk] = value
        return torch.cat(logits), acts, grads

    def _reading(self, batch: Batch, sites: Sequence[Site], run) -> tuple[torch.Tensor, dict, list]:
        """Chunk by chunk, ``run(rows, remove_hooks)`` with every site's activation read by a hook:
        (its outputs joined ``[n, ...]``, each site's activation ``[n, d]`` in the store, and whatever
        else ``run`` returned per chunk after its output, as a list)."""
        pos = {s: batch.position(s.position) for s in sites}
        reads = {(s.layer, s.component, s.head) for s in sites}  # one hook per activation, shared by its positions
        outputs, extras, acts = [], [], {}
        for chunk in self._chunks(len(batch)):
            seen: dict[tuple, torch.Tensor] = {}
            handles = [self.adapter.hook(Site(key[0], None, key[1], key[2]), lambda h, key=key: seen.__setitem__(key, h))
                       for key in reads]
            rows = batch.select(chunk).to(self.adapter.device)

            def remove():  # the hooks read the prompt pass only
                for h in handles:
                    h.remove()
            try:
                out = run(rows, remove)
            finally:
                remove()
            out, extra = out if isinstance(out, tuple) else (out, None)
            outputs.append(out)
            extras.append(extra)
            for s in sites:
                p = None if pos[s] is None else pos[s][chunk]
                h = _gather(seen[(s.layer, s.component, s.head)], p)
                if s not in acts:
                    acts[s] = self.store.empty(len(batch), h.shape[-1])
                acts[s][chunk] = h.float().cpu()
        return torch.cat(outputs), acts, extras

    @torch.no_grad()
    def capture_prepared(self, batch: Batch, sites: Sequence[Site]) -> tuple[torch.Tensor, dict, Prepared]:
        """``capture`` and ``prepare`` in one forward per chunk: the logits ``[n, C]``, every site's
        activation ``[n, d]``, and every row made ready for interventions — one ``Prepared`` chunk holding
        all rows and their prefix states joined row-wise, from which ``take`` builds any subset's chunks
        without another forward (``batch``'s rows share one padded length, so their states join)."""
        starts = self._starts(sites)
        whole = lambda states: Prepared([batch], [slice(0, len(batch))], states, starts)
        if not self.adapter.supports_suffix:  # no prefix states: the capture is all there is to do
            return (*self.capture(batch, sites), whole([]))
        last = self.adapter.n_layers

        def run(rows: Batch, remove):
            state = self.adapter.prefix_state(rows, sorted(set(starts.values()) - {None} | {last}))
            logits = self.adapter.run_suffix(state, last, state["hidden"][last], rows).float().cpu()
            if last not in starts.values():
                del state["hidden"][last]
            return logits, state
        logits, acts, states = self._reading(batch, sites, run)
        flat = _join_rows(states, [c.stop - c.start for c in self._chunks(len(batch))])
        return logits, acts, whole([] if flat is None else [flat])

    def take(self, whole: Prepared, idx: torch.Tensor, batch_size: int | None = None) -> Prepared:
        """The rows ``idx`` of ``whole`` (from ``capture_prepared``) in chunks of ``batch_size`` rows, their
        prefix states picked row by row (no forward). Where ``capture_prepared`` could not join the
        chunks' states (e.g. an attention mask the model built for some chunks and skipped for others),
        ``prepare`` runs the rows again."""
        batch = whole.batches[0]
        needs_states = any(j is not None for j in whole.starts.values())
        if needs_states and not whole.states:
            return self.prepare(batch.select(idx), list(whole.starts), batch_size)
        slices = self._chunks(len(idx), batch_size)
        states = [self._held(_pick_rows(whole.states[0], idx[c])) for c in slices] if needs_states else []
        return Prepared([batch.select(idx[c]).to(self.adapter.device) for c in slices], slices, states,
                        dict(whole.starts))

    def _starts(self, sites: Sequence[Site]) -> dict[Site, int | None]:
        """For each site, the block a suffix run starts at: the block whose input the site is, or the block
        the site is inside of (run with the site hooked); ``None``: a hooked full forward."""
        if not self.adapter.supports_suffix:
            return {s: None for s in sites}
        starts = {s: self.adapter.block_index(s) for s in sites}
        return {s: self.adapter.inner_block(s) if j is None else j for s, j in starts.items()}

    # ------------------------------------------------------------------ interventions
    @torch.no_grad()
    def prepare(self, batch: Batch, sites: Sequence[Site], batch_size: int | None = None) -> Prepared:
        """Ready the base rows for interventions at ``sites`` (one forward per chunk where the
        adapter supports suffix execution), in chunks of ``batch_size`` rows (default: the engine's).
        Training steps one chunk at a time, so a training split's chunks are its optimiser batches. The
        same rows, sites and chunking are prepared once per engine."""
        key = ("prepare", fingerprint(batch), tuple(sites), batch_size or self.batch_size)
        if key not in self._memo:
            self._memo[key] = self._prepare(batch, sites, batch_size)
        return self._memo[key]

    def _prepare(self, batch: Batch, sites: Sequence[Site], batch_size: int | None) -> Prepared:
        slices = self._chunks(len(batch), batch_size)
        prepared = Prepared([batch.select(c).to(self.adapter.device) for c in slices], slices, [], self._starts(sites))
        starts = sorted({j for j in prepared.starts.values() if j is not None})
        if starts:
            prepared.states = [self._held(self.adapter.prefix_state(b, starts)) for b in prepared.batches]
        return prepared

    def _held(self, state: dict) -> dict:
        """A prefix state with its hidden states and keys/values under the store's memory bound."""
        state["hidden"] = {j: self.store.hold(h) for j, h in state["hidden"].items()}
        if "kv" in state:
            state["kv"] = {j: tuple(self.store.hold(t) for t in kv) for j, kv in state["kv"].items()}
        return state

    def run_chunk(self, prepared: Prepared, k: int, site: Site, featurizer: Featurizer,
                  source: torch.Tensor) -> torch.Tensor:
        """Logits ``[b, C]`` of chunk ``k`` of the bases with ``source: [b, d]`` (the chunk's rows of the
        source activations) interchanged at ``site`` through ``featurizer``. Differentiable in the
        featurizer's parameters."""
        if site not in prepared.starts:
            raise ValueError(f"site {site} was not prepared; pass it to Engine.prepare")
        device = self.adapter.site_device(site)  # a model spread over GPUs: the block's own device
        featurizer.to(device)
        rows = prepared.batches[k]
        pos = rows.position(site.position)
        source = source.to(device)
        start = prepared.starts[site]
        if start is None:
            return self.forward(rows, site, featurizer, source, pos)
        hidden = prepared.states[k]["hidden"][start]
        if self.adapter.block_index(site) == start:  # the block's input: written before the suffix runs
            return self.adapter.run_suffix(prepared.states[k], start, _patch(hidden, pos, featurizer, source), rows, pos)
        # inside block `start`: hooked while the suffix runs, which may recompute only the last positions
        T = hidden.shape[1]
        handle = self.adapter.hook(site, lambda h: _patch(h, pos - (T - h.shape[-2]), featurizer, source))
        try:
            return self.adapter.run_suffix(prepared.states[k], start, hidden, rows, pos)
        finally:
            handle.remove()

    def forward(self, batch: Batch, site: Site, featurizer: Featurizer, source: torch.Tensor,
                pos: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[n, C]`` of one whole forward of ``batch`` (on the adapter's device) with ``source:
        [n, d]`` interchanged at ``site`` by a hook, at token ``pos: [n]`` (default: the site's position
        in ``batch``). The reference that suffix execution must match."""
        pos = batch.position(site.position) if pos is None else pos
        with self._intervening(site, pos, featurizer, source.to(self.adapter.device)):
            return self.adapter.forward(batch)

    @contextmanager
    def _intervening(self, site: Site, pos, featurizer: Featurizer, source):
        """While open, every forward of the network has ``source: [n, d]`` interchanged at ``site``
        (token ``pos: [n]``) by a hook on the site's module; yields a function that removes the hook."""
        handle = self.adapter.hook(site, lambda h: _patch(h, pos, featurizer, source))
        try:
            yield handle.remove
        finally:
            handle.remove()

    @torch.inference_mode()
    def generate(self, prepared: Prepared, n_tokens: int, site: Site | None = None,
                 featurizer: Featurizer | None = None, source: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy decoding: ``n_tokens`` token ids ``[n, n_tokens]`` after each base prompt, with ``source:
        [n, d]`` interchanged at ``site`` on the prompt (no intervention when ``site`` is None). The
        prompt runs once (under the intervention) and fills a key/value cache; every later token is
        one cached step, with the intervention's hook already removed (it touches prompt positions only)."""
        if featurizer is not None:
            featurizer.eval()
            featurizer.to(self.adapter.device)
        out = []
        for k, c in enumerate(prepared.slices):
            rows = prepared.batches[k]
            if site is None:
                out.append(self.adapter.generate(rows, n_tokens).cpu())
                continue
            src = source[c].to(self.adapter.device)
            with self._intervening(site, rows.position(site.position), featurizer, src) as remove_hook:
                out.append(self.adapter.generate(rows, n_tokens, after_prompt=remove_hook).cpu())
        return torch.cat(out)

    @torch.inference_mode()
    def run(self, prepared: Prepared, site: Site, featurizer: Featurizer, source: torch.Tensor) -> torch.Tensor:
        """Logits ``[n, C]`` of all base rows with ``source: [n, d]`` interchanged at ``site``."""
        was_training = featurizer.training
        featurizer.eval()
        try:
            return torch.cat([self.run_chunk(prepared, k, site, featurizer, source[c]).float().cpu()
                              for k, c in enumerate(prepared.slices)])
        finally:
            featurizer.train(was_training)
