"""Sparse-autoencoder latents: any sae-lens SAE (standard, top-k, JumpReLU, gated, ...), given or trained."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from .base import Featurizer, FeaturizerError, Tags, check_count, check_indices


class SAE(Featurizer):
    """Features ``f = sae.encode(h): [..., d_sae]``, ``err = h − sae.decode(f)``, ``decode(f, err) =
    sae.decode(f) + err``.

    The SAE comes from exactly one of: ``sae`` (a sae-lens SAE object; shared by ``clone()``), ``path`` (a
    local folder written by sae-lens, ``SAE.load_from_disk``), ``release``/``sae_id`` (``SAE.from_pretrained``,
    needs the network; loaded at ``build``). With none of them, ``fit_activations(h)`` trains one on ``h``
    with sae-lens's own ``SAETrainer`` (``architecture``: "topk" when ``k`` is given, else "standard"
    with an L1 penalty; any sae-lens training architecture name works). The SAE's weights are frozen
    (``requires_grad=False``). ``save`` writes the reference (config) plus the sae-lens config and weights.

    Args:
        dims: the SAE latents an interchange takes from the source; ``None`` = all.
        d_sae, k, architecture, train_tokens, batch_size, lr, l1_coefficient: training settings
            (``d_sae`` defaults to 4·d); small defaults train on ~2k×64 activations in seconds.
    """

    def __init__(self, sae=None, d_sae: int | None = None, k: int | None = None, release: str | None = None,
                 sae_id: str | None = None, path: str | None = None, dims: Sequence[int] | None = None,
                 architecture: str | None = None, train_tokens: int = 100_000, batch_size: int = 256,
                 lr: float = 3e-3, l1_coefficient: float = 1.0):
        super().__init__()
        if sum(x is not None for x in (sae, release, path)) > 1:
            raise FeaturizerError("give an SAE by one of sae=, path= or release=/sae_id=, not several")
        if (release is None) != (sae_id is None):
            raise FeaturizerError("release= and sae_id= go together")
        self.d_sae = check_count("SAE", "d_sae", d_sae, none="4 × the hidden size")
        self.k = check_count("SAE", "k", k, none="no top-k: a standard SAE with an L1 penalty")
        self.architecture, self.release, self.sae_id = architecture, release, sae_id
        self.path = None if path is None else str(path)
        self.dims = check_indices("SAE", "dims", dims, none="all latents")
        self.train_tokens = check_count("SAE", "train_tokens", train_tokens)
        self.batch_size = check_count("SAE", "batch_size", batch_size)
        self.lr = float(lr)
        self.l1_coefficient = float(l1_coefficient)
        self._given = sae is not None
        self._sae_cfg: dict | None = None  # the sae-lens config of a saved featurizer
        self.sae = None
        if sae is not None:
            self._set_sae(sae)

    def __featurizer_tags__(self) -> Tags:
        # trained here unless an SAE was given (an object, a saved one, or a pretrained release)
        trained_here = not self._given and self.release is None and self.path is None
        return replace(super().__featurizer_tags__(), linear=False, invertible=False,
                       learns_from=("activations",) if trained_here else ())

    @property
    def name(self) -> str:
        src = self.sae_id or (self.path and Path(self.path).name) or (f"k={self.k}" if self.k else None)
        return ("sae" if src is None else f"sae({src})") + ("" if self.dims is None else f"[{len(self.dims)}]")

    def config(self) -> dict:
        """As the base; an SAE given as an object appears as ``sae: None`` (it is saved by its weights)."""
        return {**super().config(), "sae": None}

    def clone(self) -> "SAE":
        return type(self)(**{**self.config(), "sae": self.sae}) if self._given else super().clone()

    def _set_sae(self, sae) -> None:
        if sae.cfg.normalize_activations in ("layer_norm", "constant_norm_rescale"):
            raise FeaturizerError(f"SAEs with per-input normalisation ({sae.cfg.normalize_activations}) are not "
                                  "supported: their decode depends on the last encoded input")
        if self.dims is not None and not all(0 <= i < sae.cfg.d_sae for i in self.dims):
            raise FeaturizerError(f"SAE dims must be in [0, {sae.cfg.d_sae}), got {self.dims}")
        sae.turn_off_forward_pass_hook_z_reshaping()  # the site gives flat vectors
        self.sae = sae.requires_grad_(False)
        mask = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=sae.W_dec.device)
        mask[self.dims or []] = True
        self.register_buffer("_mask", mask, persistent=False)

    def _build(self, d: int) -> None:
        from sae_lens import SAE as LensSAE

        if self.sae is None:
            if self._sae_cfg is not None:
                self._set_sae(LensSAE.from_dict(self._sae_cfg))
            elif self.path is not None:
                self._set_sae(LensSAE.load_from_disk(self.path))
            elif self.release is not None:
                try:
                    self._set_sae(LensSAE.from_pretrained(self.release, self.sae_id))
                except Exception as e:
                    raise FeaturizerError(
                        f"could not load SAE release={self.release!r} sae_id={self.sae_id!r} with sae-lens "
                        f"(SAE.from_pretrained needs the network or a warm Hugging Face cache): {e}") from e
            else:
                return  # trained by fit_activations
        if self.sae.cfg.d_in != d:
            raise FeaturizerError(f"{self.name} reads vectors of size {self.sae.cfg.d_in}, the site has size {d}")

    def fit_activations(self, h: torch.Tensor, values=None) -> "SAE":
        """Train an SAE with sae-lens on ``h: [n, d]`` (a given or pretrained SAE only checks the size)."""
        from sae_lens import SAE as LensSAE, SAETrainer, TrainingSAE
        from sae_lens.config import SAETrainerConfig

        d = h.shape[-1]
        self.build(d)
        if not self.learns_from_activations:
            return self
        x = h.detach().reshape(-1, d).float()
        batch = min(self.batch_size, len(x))
        arch = self.architecture or ("topk" if self.k else "standard")
        train_sae = TrainingSAE.from_dict({
            "architecture": arch, "d_in": d, "d_sae": self.d_sae or 4 * d, **({"k": self.k} if self.k else {}),
            "l1_coefficient": self.l1_coefficient, "normalize_activations": "expected_average_only_in",
            "device": str(x.device)})
        steps = max(self.train_tokens // batch, 1)
        cfg = SAETrainerConfig(
            total_training_samples=steps * batch, train_batch_size_samples=batch, lr=self.lr, lr_end=self.lr,
            lr_decay_steps=steps // 5, dead_feature_window=max(steps // 10, 1), device=str(x.device),
            n_batches_for_norm_estimate=max(len(x) // batch, 1))
        with _quiet():
            SAETrainer(cfg=cfg, sae=train_sae, data_provider=_batches(x, batch)).fit()
        with TemporaryDirectory() as tmp:  # sae-lens's own training → inference conversion
            train_sae.save_inference_model(tmp)
            self._set_sae(LensSAE.load_from_disk(tmp, device=str(x.device)))
        self.fitted = True
        return self

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_input(h)
        f = self.sae.encode(h)
        return f, h - self.sae.decode(f)

    def decode(self, f: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        return self.sae.decode(f) + err

    def mask(self) -> torch.Tensor | None:
        return None if self.dims is None else self._mask

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self.sae is not None:  # sae-lens casts inputs to sae.dtype: keep it in step with the weights
            from sae_lens.util import dtype_to_str

            w = self.sae.W_dec
            self.sae.dtype, self.sae.device = w.dtype, w.device
            self.sae.cfg.dtype, self.sae.cfg.device = dtype_to_str(w.dtype), str(w.device)
        return self

    def _extra_state(self) -> dict:
        cfg = None if self.sae is None else {**self.sae.cfg.to_dict(), "device": "cpu"}
        return {"sae_cfg": cfg, "given": self._given}

    def _load_extra_state(self, extra: dict) -> None:
        self._sae_cfg = extra.get("sae_cfg")
        self._given = bool(extra.get("given", False))


def _batches(x: torch.Tensor, batch: int) -> Iterator[torch.Tensor]:
    """Endless shuffled full batches ``[batch, d]`` of the rows of ``x`` (torch's global RNG)."""
    while True:
        for idx in torch.randperm(len(x), device=x.device).split(batch):
            if len(idx) == batch:
                yield x[idx]


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence sae-lens's tqdm progress bars while training."""
    from functools import partial
    from unittest.mock import patch

    from sae_lens.training import activation_scaler, sae_trainer
    from tqdm.auto import tqdm

    quiet = partial(tqdm, disable=True)
    with patch.object(sae_trainer, "tqdm", quiet), patch.object(activation_scaler, "tqdm", quiet):
        yield
