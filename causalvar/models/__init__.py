"""Model adapters: each hides one family's module names from the rest of causalvar."""
from .base import Adapter, Batch, ModelError
from .hf import HFModel
from .load import as_adapter, embedded_path, load_model
from .tlens import BridgeModel, TLModel
from .torch_module import TorchModel

__all__ = ["Adapter", "Batch", "ModelError", "HFModel", "BridgeModel", "TLModel", "TorchModel", "as_adapter", "embedded_path", "load_model"]
