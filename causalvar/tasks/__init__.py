"""Built-in tasks."""
from .equality import equality_mlp, hierarchical_equality
from .ioi import ioi
from .mlp import mlp, train_mlp

#: built-in language-model tasks by name: ``name -> factory(lm) -> PromptTask``
REGISTRY = {"ioi": ioi}

__all__ = ["hierarchical_equality", "equality_mlp", "ioi", "mlp", "train_mlp", "REGISTRY"]
