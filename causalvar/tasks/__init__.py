"""Built-in tasks."""
from .equality import equality_mlp, hierarchical_equality
from .ioi import ioi

__all__ = ["hierarchical_equality", "equality_mlp", "ioi"]
