"""Built-in tasks."""
from .equality import equality_mlp, hierarchical_equality
from .ioi import ioi
from .mlp import mlp, train_mlp

__all__ = ["hierarchical_equality", "equality_mlp", "ioi", "mlp", "train_mlp"]
