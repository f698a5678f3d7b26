"""pyvene interop: run a causalvar featurizer as a pyvene intervention, and the plain pyvene loop
(a fresh ``IntervenableModel`` per cell, sources passed as inputs) used as the reference engine by
the tests and the benchmarks.

Only HF causal LMs in pyvene's model table work here (pyvene maps ``block_output`` per family).
"""
from __future__ import annotations

import torch

from featurizers import Featurizer

from .models.base import Batch
from .models.hf import HFModel
from .sites import Site


def intervention(featurizer: Featurizer):
    """A pyvene intervention whose forward is ``featurizer.interchange(base, source)``."""
    import pyvene as pv

    class FeaturizerIntervention(pv.TrainableIntervention, pv.DistributedRepresentationIntervention):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.featurizer = featurizer

        def forward(self, base, source, subspaces=None, **kwargs):
            return self.featurizer.interchange(base, source.to(base.dtype))

    return FeaturizerIntervention()


def intervenable(adapter: HFModel, site: Site, featurizer: Featurizer):
    """A pyvene ``IntervenableModel`` with ``featurizer`` at the residual stream of ``site``."""
    import pyvene as pv

    if not isinstance(site.layer, int) or site.component not in ("resid_post", "resid_pre"):
        raise ValueError("the pyvene bridge addresses the residual stream of blocks by int layer")
    layer, component = site.layer, "block_output" if site.component == "resid_post" else "block_input"
    config = pv.IntervenableConfig(representations=[{
        "layer": layer, "component": component, "unit": "pos", "max_number_of_units": 1,
        "intervention": intervention(featurizer)}])
    model = pv.IntervenableModel(config, adapter.module)
    model.disable_model_gradients()
    return model


@torch.inference_mode()
def pyvene_logits(adapter: HFModel, bases: Batch, sources: Batch, site: Site,
                  featurizer: Featurizer, batch_size: int = 64) -> torch.Tensor:
    """The plain pyvene loop: per batch, a full source forward and a full base forward through
    pyvene, then the logits at each base's read position. Returns ``[n, vocab]``."""
    model = intervenable(adapter, site, featurizer)
    featurizer.eval()
    out = []
    for i in range(0, len(bases), batch_size):
        b, s = bases.select(slice(i, i + batch_size)), sources.select(slice(i, i + batch_size))
        pb, ps = b.position(site.position), s.position(site.position)
        locations = {"sources->base": ([[[int(p)] for p in ps]], [[[int(p)] for p in pb]])}
        _, cf = model(b.inputs, [s.inputs], unit_locations=locations)
        logits = cf.logits
        out.append(logits[torch.arange(len(b)), b.read].float())
    return torch.cat(out)
