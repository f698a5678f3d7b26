"""causalvar: find where a high-level causal variable lives in a network, by interchange interventions."""
from . import metrics, patching, sweep, tasks
from .causal_model import CausalModel, CausalModelError
from .counterfactuals import CounterfactualDataset, CounterfactualError, DuplicatePairsWarning, NoEffectWarning
from .engine import Engine
from .errors import TaskError
from .localize import localize
from .patching import patch
from .metrics import Metric, MetricError, clopper_pearson, epsilon_bound, iia
from .models import HFModel, ModelError, TLModel, TorchModel, as_adapter, load_model
from .results import Results
from .sae_eval import DictionaryResults, evaluate_dictionaries
from .runstore import RunFolderError
from .sites import Site
from .splits import TooFewPairsError, task_accuracy
from .executors import RayExecutor
from .sweep import Cell, InProcessExecutor, run_cell
from .task import PromptTask, Task, word
from .train import ConvergenceWarning, TrainingError, fit
from .validate import Interpretation, InterpretationError, Step, ValidationResults, validate

__all__ = ["CausalModel", "CausalModelError", "CounterfactualDataset", "CounterfactualError", "DuplicatePairsWarning",
           "NoEffectWarning", "Engine", "TaskError", "localize", "Metric", "MetricError", "clopper_pearson",
           "epsilon_bound", "iia", "HFModel", "ModelError", "TLModel", "TorchModel", "as_adapter", "load_model",
           "Results", "RunFolderError", "Site", "TooFewPairsError", "task_accuracy", "Cell", "InProcessExecutor",
           "run_cell", "RayExecutor", "PromptTask", "Task", "word", "TrainingError", "ConvergenceWarning", "fit", "patch", "Interpretation",
           "InterpretationError", "Step", "ValidationResults", "validate", "metrics", "patching", "sweep", "tasks", "evaluate_dictionaries", "DictionaryResults"]
