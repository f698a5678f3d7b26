"""causalvar: find where a high-level causal variable lives in a network, by interchange interventions."""
from . import tasks
from .causal_model import CausalModel, CausalModelError
from .splits import TooFewPairsError, task_accuracy
from .counterfactuals import CounterfactualDataset, CounterfactualError, DuplicatePairsWarning, NoEffectWarning
from .engine import Engine
from .localize import localize
from .metrics import clopper_pearson, epsilon_bound, iia
from .models import HFModel, ModelError, TorchModel, as_adapter, load_model
from .results import Results
from .sites import Site
from .task import PromptTask, Task, TaskError, word
from .train import TrainingError, fit

__all__ = ["CausalModel", "CausalModelError", "TooFewPairsError", "task_accuracy", "CounterfactualDataset",
           "CounterfactualError", "DuplicatePairsWarning", "NoEffectWarning", "Engine",
           "localize", "clopper_pearson", "epsilon_bound", "iia", "HFModel", "ModelError", "TorchModel",
           "as_adapter", "load_model", "Results", "Site", "PromptTask", "Task", "TaskError", "word",
           "TrainingError", "fit", "tasks"]
