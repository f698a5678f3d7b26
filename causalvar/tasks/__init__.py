"""Built-in tasks."""
from .arithmetic import arithmetic
from .equality import equality_mlp, hierarchical_equality
from .ioi import fit_logit_diff, fitted_ioi_logit_diff, ioi, ioi_logit_diff
from .mcqa import mcqa
from .mlp import mlp, train_mlp
from .ravel import disentangle, ravel
from .two_sat import two_sat, two_sat_interpretation, two_sat_model

#: built-in language-model tasks by name: ``name -> factory(lm) -> PromptTask``
REGISTRY = {"ioi": ioi, "ioi_logit_diff": fitted_ioi_logit_diff, "mcqa": mcqa, "arithmetic": arithmetic, "ravel": ravel}

__all__ = ["hierarchical_equality", "equality_mlp", "ioi", "ioi_logit_diff", "fit_logit_diff", "mcqa", "arithmetic", "ravel",
           "disentangle", "mlp", "train_mlp", "two_sat", "two_sat_model", "two_sat_interpretation", "REGISTRY"]
